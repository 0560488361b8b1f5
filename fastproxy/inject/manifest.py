"""Sidecar injection into Kubernetes objects: dict in, dict out. No I/O.

What injecting one pod (a Pod, or a workload's pod template) does, in order:

1. Leaves it unchanged when fastproxy.io/inject is "false" (label or
   annotation; the label wins) or when it uses hostNetwork (the init rules
   would land in the node's network namespace). Istio skips both too.
2. Removes what an earlier injection added: any container named `fastproxy`
   or `fastproxy-init`, and the fastproxy.io/status annotation. Everything
   is then derived again from the annotations, so injecting twice equals
   injecting once, and re-injecting picks up changed annotations.
3. Validates every fastproxy.io/* annotation (annotations.py). Errors are
   InjectError, naming the annotation and what is wrong.
4. Adds two containers:
   - `fastproxy-init` runs `fastproxy init` with istio-iptables flags built
     from the annotations, as root with NET_ADMIN and NET_RAW only.
   - `fastproxy` runs `fastproxy run` as UID/GID 1337 with the readiness
     probe on 15021 and FASTPROXY_* settings from the annotations.
   Classic mode (Istio's default order): fastproxy-init is the last init
   container, so the pod's own init containers still have an unintercepted
   network; fastproxy is the last container, so `kubectl exec/logs` default
   to the app.
   Native mode (Istio's order for native sidecars): fastproxy-init first,
   then fastproxy as an init container with restartPolicy: Always and a
   startupProbe. Kubernetes starts the later init containers and the app
   only once that probe passes, and stops the proxy after the app exits,
   so Jobs complete.
5. Writes fastproxy.io/status (what was added) and, if absent,
   kubectl.kubernetes.io/default-container (the first app container).

Workloads: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
ReplicationController, Job (spec.template), CronJob
(spec.jobTemplate.spec.template) and List (each item). Other objects pass
through unchanged. inject_yaml() does the same for multi-document YAML text,
copying every document it does not change byte for byte.
"""
from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from .. import __version__
from ..config.env import coerce, env_name
from ..config.schema import SETTINGS_BY_NAME, ConfigError
from ..interception import flags
from . import annotations as ann
from .jsonpatch import equal

CONTAINER_NAME = "fastproxy"
INIT_CONTAINER_NAME = "fastproxy-init"
DEFAULT_IMAGE = f"fastproxy:{__version__}"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"

# Istio's proxy resource defaults (values.global.proxy.resources).
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
# Istio's default --concurrency when the proxy has no CPU limit.
DEFAULT_WORKERS = 2

_PORT = {name: SETTINGS_BY_NAME[name].default for name in (
    "admin_port", "outbound_port", "inbound_port", "merged_metrics_port", "health_port", "stats_port")}
# Ports the sidecar binds in the pod's network namespace: an app container
# declaring one of them could not run next to it.
PROXY_PORTS = frozenset(_PORT.values())
PROXY_UID = flags.InitConfig().proxy_uids[0]
PROXY_GID = flags.InitConfig().proxy_gids[0]

# Kubernetes quantity syntax (resource.Quantity): a decimal, then an
# exponent, a decimal SI suffix or a binary suffix.
_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")
_CPU = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)(m?)$")

# (API group, kind) -> path from the object to its pod template.
_POD_TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): (),
    ("", "ReplicationController"): ("spec", "template"),
    ("apps", "Deployment"): ("spec", "template"),
    ("apps", "StatefulSet"): ("spec", "template"),
    ("apps", "DaemonSet"): ("spec", "template"),
    ("apps", "ReplicaSet"): ("spec", "template"),
    ("extensions", "Deployment"): ("spec", "template"),
    ("extensions", "DaemonSet"): ("spec", "template"),
    ("extensions", "ReplicaSet"): ("spec", "template"),
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
}

# Init flags always passed, even at their defaults, so `kubectl describe`
# shows what the rules do; the others only when an annotation sets them.
_ALWAYS_PASSED = ("inbound_interception_mode", "outbound_ip_ranges_include", "inbound_ports_include")


class InjectError(ValueError):
    """An object that cannot be injected. `source` names the annotation or
    field; `where` the object (e.g. "Deployment default/web"), once known."""

    def __init__(self, source: str, problem: str, where: str = ""):
        self.source = source
        self.problem = problem
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{source}: {problem}")

    def at(self, where: str) -> "InjectError":
        return InjectError(self.source, self.problem, where)


@dataclass(frozen=True)
class InjectOptions:
    """Cluster-wide injection choices; pod annotations may override them."""

    image: str = DEFAULT_IMAGE
    native_sidecar: bool = False


@dataclass(frozen=True)
class PodInjection:
    """The outcome for one pod: the pod (injected, or a copy of the input
    when skipped), why it was skipped, and notes worth telling the user."""

    pod: dict
    skipped: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Plan:
    """Everything the annotations decide, validated."""

    native: bool
    image: str
    init_args: tuple[str, ...]
    tproxy: bool
    env: tuple[tuple[str, str], ...]
    resources: dict


# ---------------------------------------------------------------- one pod

def inject_pod(pod: Mapping[str, Any], options: InjectOptions = InjectOptions()) -> PodInjection:
    """Injects one pod: a Pod object or a pod template (metadata + spec).
    The input is not modified."""
    out = copy.deepcopy(dict(pod))
    spec = out.get("spec")
    if not isinstance(spec, dict):
        raise InjectError("spec", "the pod has no spec")
    meta = out.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise InjectError("metadata", "must be a mapping")
    annotations = _string_map(meta.get("annotations"), "metadata.annotations")
    labels = _string_map(meta.get("labels"), "metadata.labels")

    skipped = _skip_reason(annotations, labels, spec)
    if skipped:
        return PodInjection(copy.deepcopy(dict(pod)), skipped=skipped)

    plan = _plan(annotations, options)
    init_containers = _without_ours(_container_list(spec, "initContainers"))
    containers = _without_ours(_container_list(spec, "containers"))
    _check_ports(init_containers, "initContainers")
    _check_ports(containers, "containers")

    init = _init_container(plan)
    proxy = _proxy_container(plan)
    if plan.native:
        spec["initContainers"] = [init, proxy, *init_containers]
        spec["containers"] = containers
        status = {"initContainers": [INIT_CONTAINER_NAME, CONTAINER_NAME], "containers": []}
    else:
        spec["initContainers"] = [*init_containers, init]
        spec["containers"] = [*containers, proxy]
        status = {"initContainers": [INIT_CONTAINER_NAME], "containers": [CONTAINER_NAME]}

    out["metadata"] = meta
    written = meta.get("annotations")
    written = dict(written) if isinstance(written, dict) else {}
    written.pop(ann.STATUS, None)
    if containers and DEFAULT_CONTAINER_ANNOTATION not in written and isinstance(containers[0].get("name"), str):
        written[DEFAULT_CONTAINER_ANNOTATION] = containers[0]["name"]
    written[ann.STATUS] = orjson.dumps(status).decode()
    meta["annotations"] = written

    notes = []
    if not plan.native and spec.get("restartPolicy") in ("Never", "OnFailure"):
        notes.append(f"restartPolicy is {spec['restartPolicy']} but the proxy is a plain container: it keeps "
                     f"the pod running after the app exits; a native sidecar ({ann.NATIVE_SIDECAR}: \"true\") "
                     "stops by itself")
    return PodInjection(out, notes=tuple(notes))


def _string_map(value: Any, where: str) -> dict[str, str]:
    """Labels or annotations as strings (YAML may have turned "false" into false)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InjectError(where, "must be a mapping")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        out[str(k)] = "" if v is None else str(v)
    return out


def _skip_reason(annotations: Mapping[str, str], labels: Mapping[str, str], spec: dict) -> str | None:
    if ann.INJECT in labels:
        source, value = f"label {ann.INJECT}", labels[ann.INJECT]
    else:
        source, value = ann.INJECT, annotations.get(ann.INJECT)
    if value is not None and not _bool(value, source):
        return f"{source} is \"false\""
    if spec.get("hostNetwork") is True:
        return "it uses hostNetwork (interception rules would change the node's network)"
    return None


def _bool(raw: str, source: str) -> bool:
    low = raw.strip().lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise InjectError(source, f'expected "true" or "false", got {raw!r}')


def _container_list(spec: dict, key: str) -> list:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise InjectError(f"spec.{key}", "must be a list of containers")
    return value


def _without_ours(containers: list[dict]) -> list[dict]:
    return [c for c in containers if c.get("name") not in (CONTAINER_NAME, INIT_CONTAINER_NAME)]


def _check_ports(containers: list[dict], key: str) -> None:
    for i, c in enumerate(containers):
        for p in c.get("ports") or ():
            port = p.get("containerPort") if isinstance(p, dict) else None
            if port in PROXY_PORTS:
                raise InjectError(f"spec.{key}[{i}].ports", f"container {c.get('name')!r} declares port {port}, "
                                  "which the fastproxy sidecar binds (15000, 15001, 15006, 15020, 15021, 15090)")


# ---------------------------------------------------------------- annotations

def _plan(annotations: Mapping[str, str], options: InjectOptions) -> _Plan:
    for key in annotations:
        if key.startswith(ann.PREFIX) and key not in ann.BY_KEY:
            raise InjectError(key, f"unknown annotation{ann.suggestion(key)}")

    native = options.native_sidecar
    if ann.NATIVE_SIDECAR in annotations:
        native = _bool(annotations[ann.NATIVE_SIDECAR], ann.NATIVE_SIDECAR)
    image = annotations.get(ann.PROXY_IMAGE, options.image).strip()
    if not image or any(ch.isspace() for ch in image):
        raise InjectError(ann.PROXY_IMAGE if ann.PROXY_IMAGE in annotations else "image",
                          f"{image!r} is not an image reference")

    init_args, mode = _init_args(annotations)
    resources = _resources(annotations)
    return _Plan(native=native, image=image, init_args=init_args, tproxy=mode == flags.TPROXY,
                 env=_env(annotations, resources, mode), resources=resources)


def _init_args(annotations: Mapping[str, str]) -> tuple[tuple[str, ...], str]:
    """The `fastproxy init` arguments, and the interception mode."""
    given: dict[str, str] = {}  # InitConfig field -> normalised flag value
    source_of: dict[str, str] = {}  # flag label -> annotation, for cross-check errors
    for a in ann.INTERCEPTION:
        if a.key not in annotations:
            continue
        flag = flags.FLAG_BY_FIELD[a.init_field]
        try:
            value = flags.parse_value(flag, annotations[a.key], a.key)
        except flags.InitConfigError as e:
            raise InjectError(a.key, e.problem) from None
        given[flag.field] = _render_flag_value(value)
        source_of[flag.label] = a.key

    fixed = {"outbound_port": str(_PORT["outbound_port"]), "inbound_port": str(_PORT["inbound_port"]),
             "proxy_uids": str(PROXY_UID), "proxy_gids": str(PROXY_GID)}
    try:  # the checks that span several values, exactly as `fastproxy init` runs them
        cfg = flags.from_sources({**fixed, **given}, {})
    except flags.InitConfigError as e:
        raise InjectError(source_of.get(e.source, e.source), e.problem) from None

    values = {**fixed, **{f: _render_flag_value(getattr(cfg, f)) for f in _ALWAYS_PASSED}, **given}
    args = ["init"]
    for flag in flags.FLAGS:
        value = values.get(flag.field)
        if value is None or (value == "" and flag.field not in _ALWAYS_PASSED):
            continue
        args += [flag.short or flag.long, value]
    return tuple(args), cfg.inbound_interception_mode


def _render_flag_value(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _resources(annotations: Mapping[str, str]) -> dict:
    wanted = (("requests", "cpu", ann.PROXY_CPU), ("requests", "memory", ann.PROXY_MEMORY),
              ("limits", "cpu", ann.PROXY_CPU_LIMIT), ("limits", "memory", ann.PROXY_MEMORY_LIMIT))
    if not any(key in annotations for _, _, key in wanted):
        return copy.deepcopy(DEFAULT_RESOURCES)
    out: dict[str, dict[str, str]] = {}
    for section, resource, key in wanted:
        if key in annotations:
            value = annotations[key].strip()
            if not _QUANTITY.match(value):
                raise InjectError(key, f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 128Mi, 1Gi)")
            out.setdefault(section, {})[resource] = value
    return {section: out[section] for section in ("requests", "limits") if section in out}


def _workers_for(cpu_limit: str | None) -> int:
    """Istio sizes --concurrency from the CPU limit; so do we (rounded up)."""
    if cpu_limit is None:
        return DEFAULT_WORKERS
    m = _CPU.match(cpu_limit)
    if not m:
        raise InjectError(ann.PROXY_CPU_LIMIT, f"{cpu_limit!r}: use cores (2, 0.5) or millicores (1500m) so "
                          f"the worker count can follow it, or set {ann.PREFIX}workers")
    cores = float(m.group(1)) / (1000 if m.group(2) else 1)
    top = SETTINGS_BY_NAME["workers"].maximum
    return max(1, min(top, math.ceil(cores)))


def _env(annotations: Mapping[str, str], resources: dict, mode: str) -> tuple[tuple[str, str], ...]:
    values: dict[str, str] = {}
    for a in ann.SETTINGS_GROUP:
        if a.key in annotations:
            raw = annotations[a.key]
            setting = SETTINGS_BY_NAME[a.setting]
            try:
                coerce(setting, raw, a.key)
            except ConfigError as e:
                raise InjectError(a.key, e.message) from None
            values[a.setting] = raw.strip()
    if "workers" not in values:
        values["workers"] = str(_workers_for(resources.get("limits", {}).get("cpu")))
    env = [(env_name(a_setting), values[a_setting.name])
           for a_setting in (SETTINGS_BY_NAME[a.setting] for a in ann.SETTINGS_GROUP) if a_setting.name in values]
    if mode == flags.TPROXY:
        # The worker needs to know to open IP_TRANSPARENT listeners; the
        # same variable `fastproxy init` reads for -m.
        env.append((flags.FASTPROXY_INBOUND_INTERCEPTION_MODE, mode))
    return tuple(env)


# ---------------------------------------------------------------- containers

def _init_container(plan: _Plan) -> dict:
    return {
        "name": INIT_CONTAINER_NAME,
        "image": plan.image,
        "args": list(plan.init_args),
        "resources": copy.deepcopy(plan.resources),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            # iptables takes /run/xtables.lock
            "readOnlyRootFilesystem": False,
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
        },
    }


def _probe(**timing: int) -> dict:
    return {"httpGet": {"path": "/healthz/ready", "port": _PORT["health_port"]}, **timing}


def _proxy_container(plan: _Plan) -> dict:
    if plan.tproxy:
        # IP_TRANSPARENT needs CAP_NET_ADMIN in the effective set, which
        # Kubernetes grants only to root; GID 1337 keeps the proxy's own
        # traffic out of the rules (-g). Istio does the same.
        security = {"capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                    "runAsUser": 0, "runAsGroup": PROXY_GID, "runAsNonRoot": False}
    else:
        security = {"capabilities": {"drop": ["ALL"]},
                    "runAsUser": PROXY_UID, "runAsGroup": PROXY_GID, "runAsNonRoot": True}
    container = {
        "name": CONTAINER_NAME,
        "image": plan.image,
        "args": ["run"],
        "env": [{"name": k, "value": v} for k, v in plan.env],
        "ports": [{"name": "http-envoy-prom", "containerPort": _PORT["stats_port"], "protocol": "TCP"}],
        "resources": copy.deepcopy(plan.resources),
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "readOnlyRootFilesystem": True, **security},
    }
    if plan.native:
        # Istio's native-sidecar probes: the startup probe gates the app
        # (1 s period, up to 10 min); readiness is then checked less often.
        container["readinessProbe"] = _probe(periodSeconds=15, timeoutSeconds=3, failureThreshold=4)
        container["startupProbe"] = _probe(periodSeconds=1, timeoutSeconds=3, failureThreshold=600)
        container["restartPolicy"] = "Always"
    else:
        container["readinessProbe"] = _probe(initialDelaySeconds=1, periodSeconds=2, timeoutSeconds=3,
                                             failureThreshold=30)
    return container


# ---------------------------------------------------------------- objects

def _group(api_version: Any) -> str:
    if not isinstance(api_version, str):
        return ""
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def describe(obj: Mapping[str, Any]) -> str:
    """'Deployment default/web' (for messages)."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "(unnamed)")
    ns = meta.get("namespace")
    return f"{obj.get('kind')} {ns + '/' if ns else ''}{name}"


def inject_object(obj: Any, options: InjectOptions = InjectOptions()) -> tuple[Any, list[str]]:
    """Injects one Kubernetes object (see the module doc for the kinds).
    Returns the new object (a copy; other objects come back as they are)
    and notes for the user, each naming its object."""
    if not isinstance(obj, dict):
        return obj, []
    key = (_group(obj.get("apiVersion")), obj.get("kind"))
    if key == ("", "List"):
        items = obj.get("items")
        if not isinstance(items, list):
            return obj, []
        out = dict(obj)
        out["items"] = []
        notes: list[str] = []
        for item in items:
            new, item_notes = inject_object(item, options)
            out["items"].append(new)
            notes += item_notes
        return out, notes
    path = _POD_TEMPLATES.get(key)
    if path is None:
        return obj, []
    where = describe(obj)
    template: Any = obj
    for step in path:
        template = template.get(step) if isinstance(template, dict) else None
    if not isinstance(template, dict):
        raise InjectError(".".join(path), "the pod template is missing", where)
    try:
        result = inject_pod(template, options)
    except InjectError as e:
        raise e.at(where) from None
    if result.skipped:
        return obj, [f"{where}: not injected: {result.skipped}"]
    out = copy.deepcopy(obj)
    if path:
        parent = out
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = result.pod
    else:
        out = result.pod
    return out, [f"{where}: {note}" for note in result.notes]


# ---------------------------------------------------------------- YAML text

class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as the strings Kubernetes sends
    (creationTimestamp: 2024-01-01T00:00:00Z), so they dump back unchanged."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_SEPARATOR = re.compile(r"^---(?=\s|$)")


def load_yaml(text: str) -> Any:
    """One YAML document, the way inject_yaml reads it."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def dump_yaml(doc: Any) -> str:
    """One document: keys in their order, block style, long lines unwrapped."""
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1 << 16)


def split_documents(text: str) -> list[str]:
    """The documents of a YAML stream as text, split at '---' lines. A
    document may carry what followed its '---' (e.g. '--- # comment')."""
    docs: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if _SEPARATOR.match(line) and not _only_directives(docs[-1]):
            rest = line[3:].strip()
            docs.append([rest + "\n"] if rest else [])
        else:
            docs[-1].append(line)
    out = []
    for lines in docs:
        chunk = "".join(lines)
        if chunk.strip():
            out.append(chunk if chunk.endswith("\n") else chunk + "\n")
    return out


def _only_directives(lines: list[str]) -> bool:
    """True for '%YAML 1.1' and the like (with comments) before a '---':
    they belong to the document that '---' starts."""
    content = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return bool(content) and all(ln.startswith("%") for ln in content)


def inject_yaml(text: str, options: InjectOptions = InjectOptions()) -> tuple[str, list[str]]:
    """Injects every workload of a YAML (or JSON) stream. Documents that
    are not changed (other kinds, skipped pods, comments) are copied as they
    were; changed ones are written again. Documents are joined by '---'."""
    out: list[str] = []
    notes: list[str] = []
    for n, chunk in enumerate(split_documents(text), 1):
        try:
            doc = load_yaml(chunk)
        except yaml.YAMLError as e:
            raise InjectError(f"document {n}", f"not valid YAML: {e}") from None
        new, doc_notes = inject_object(doc, options)
        notes += doc_notes
        out.append(chunk if new is doc or equal(new, doc) else dump_yaml(new))
    return "---\n".join(out), notes
