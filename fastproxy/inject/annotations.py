"""The pod annotations the injector reads, each declared once. Pure.

Every key is fastproxy.io/<name>, on the pod (for a workload: on its pod
template). Four groups:

- control: inject, native-sidecar, proxy-image; and status, which the
  injector writes (what it added, as Istio's sidecar.istio.io/status);
- interception: each feeds one `fastproxy init` flag, parsed by the same
  code as the flag itself (interception/flags.py), so a value the injector
  accepts is a value `fastproxy init` accepts;
- resources: proxy-cpu, proxy-memory, proxy-cpu-limit, proxy-memory-limit;
- settings: every sidecar setting of config/schema.py becomes
  fastproxy.io/<setting-name> (underscores as dashes) and is passed to the
  sidecar as FASTPROXY_<NAME>, except the PINNED ones, which the injected
  pod spec itself depends on (probe port, declared ports, init rules).

A fastproxy.io/ key that is none of these is an error, with a suggestion:
a misspelt exclusion that silently does nothing is the mistake this stops.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..config.schema import SETTINGS
from ..interception.flags import field_doc

PREFIX = "fastproxy.io/"


@dataclass(frozen=True)
class Annotation:
    key: str
    doc: str
    init_field: str | None = None  # the InitConfig field it feeds (interception group)
    setting: str | None = None  # the schema setting it feeds (settings group)


def _key(name: str) -> str:
    return PREFIX + name


INJECT = _key("inject")
NATIVE_SIDECAR = _key("native-sidecar")
PROXY_IMAGE = _key("proxy-image")
STATUS = _key("status")
PROXY_CPU = _key("proxy-cpu")
PROXY_MEMORY = _key("proxy-memory")
PROXY_CPU_LIMIT = _key("proxy-cpu-limit")
PROXY_MEMORY_LIMIT = _key("proxy-memory-limit")

# Settings the injected pod spec depends on, so a per-pod override would
# break it: the readiness probe targets health_port, the container declares
# stats_port, the init rules redirect to inbound/outbound_port and always
# exclude 15000/15020/15021/15090 and traffic from 127.0.0.6. The interception
# mode comes from fastproxy.io/interception-mode, for the init rules and the proxy alike.
PINNED_SETTINGS = (
    "admin_address", "admin_port", "stats_port", "merged_metrics_port", "health_port",
    "outbound_port", "inbound_port", "inbound_passthrough_source", "inbound_interception_mode",
)


def _flag_doc(field: str) -> str:
    # Field docs start with their flag ("-b: ..."); keep the flag, it helps.
    head, sep, rest = field_doc(field).partition(": ")
    return f"{rest} (`fastproxy init {head}`)" if sep and head.startswith("-") else field_doc(field)


CONTROL = (
    Annotation(INJECT, '"false" leaves the pod as it is (a label of the same name wins over the '
                       'annotation, as in Istio). Pods with hostNetwork are never injected.'),
    Annotation(NATIVE_SIDECAR, '"true": the proxy is a native sidecar (an init container with '
                               'restartPolicy: Always, Kubernetes >= 1.29), so init containers and the '
                               'app start only once it is ready, and Jobs complete. "false": a plain '
                               'container. Overrides --native-sidecar.'),
    Annotation(PROXY_IMAGE, "Image of both injected containers. Overrides --image."),
    Annotation(STATUS, "Written by the injector: JSON listing the containers it added. Do not set."),
)

INTERCEPTION = tuple(
    Annotation(_key(name), _flag_doc(field), init_field=field)
    for name, field in (
        ("interception-mode", "inbound_interception_mode"),
        ("include-inbound-ports", "inbound_ports_include"),
        ("exclude-inbound-ports", "inbound_ports_exclude"),
        ("include-outbound-ip-ranges", "outbound_ip_ranges_include"),
        ("exclude-outbound-ip-ranges", "outbound_ip_ranges_exclude"),
        ("include-outbound-ports", "outbound_ports_include"),
        ("exclude-outbound-ports", "outbound_ports_exclude"),
        ("kube-virt-interfaces", "kube_virt_interfaces"),
        ("exclude-interfaces", "exclude_interfaces"),
    )
)

RESOURCES = (
    Annotation(PROXY_CPU, "CPU request of the proxy (and of fastproxy-init)."),
    Annotation(PROXY_MEMORY, "Memory request of the proxy."),
    Annotation(PROXY_CPU_LIMIT, "CPU limit of the proxy; also sets FASTPROXY_WORKERS (rounded up) unless "
                                "fastproxy.io/workers is given."),
    Annotation(PROXY_MEMORY_LIMIT, "Memory limit of the proxy."),
)
RESOURCES_NOTE = ("When any of the four is set, the proxy gets exactly the ones set and no defaults "
                  "(Istio's rule); otherwise requests cpu 100m, memory 128Mi and limits cpu 2, memory 1Gi.")

# What the injector does differently from the proxy's own default.
_INJECTED_DEFAULTS = {
    "workers": "Injected default: the proxy's CPU limit rounded up, or 2 without a limit (as Istio sizes "
               "--concurrency), not the node's CPU count.",
}


def _setting_doc(name: str, doc: str) -> str:
    return " ".join(filter(None, (doc, _INJECTED_DEFAULTS.get(name), f"Passed as FASTPROXY_{name.upper()}.")))


SETTINGS_GROUP = tuple(
    Annotation(_key(s.name.replace("_", "-")), _setting_doc(s.name, s.doc), setting=s.name)
    for s in SETTINGS if s.name not in PINNED_SETTINGS
)

ALL = CONTROL + INTERCEPTION + RESOURCES + SETTINGS_GROUP
BY_KEY = {a.key: a for a in ALL}


def suggestion(key: str) -> str:
    """' (did you mean fastproxy.io/x?)' for an unknown key, or ''."""
    close = difflib.get_close_matches(key, BY_KEY, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def render_help() -> str:
    """Every annotation with its meaning (the epilog of `fastproxy inject --help`)."""
    lines = ["pod annotations:"]
    for group, title in ((CONTROL, "control"), (INTERCEPTION, "interception (fastproxy-init flags)"),
                         (RESOURCES, "resources"), (SETTINGS_GROUP, "sidecar settings (FASTPROXY_*)")):
        lines.append(f"  {title}:")
        for a in group:
            lines.append(f"    {a.key}\n        {a.doc}")
        if group is RESOURCES:
            lines.append(f"    {RESOURCES_NOTE}")
    return "\n".join(lines)
