"""Kubernetes injection: golden manifests, idempotency, every annotation,
native sidecars, the JSONPatch diff, AdmissionReview answers and the CLI.

Golden files under golden/inject/, for case NAME:
  NAME.in.yaml     the manifest as a user wrote it
  NAME.out.yaml    `fastproxy inject` output (image fastproxy:test)
  NAME.notes.txt   what it printed to stderr, when it printed anything
Regenerate with FASTPROXY_UPDATE_GOLDEN=1, then read every diff by eye.
"""
import argparse
import base64
import io
import os
import shlex
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.config.schema import SETTINGS, SETTINGS_BY_NAME
from fastproxy.inject import admission, annotations, cli, jsonpatch, manifest
from fastproxy.inject.jsonpatch import JsonPatchError, apply_patch, diff
from fastproxy.inject.manifest import InjectError, InjectOptions, inject_object, inject_pod, inject_yaml
from fastproxy.interception import flags

GOLDEN = Path(__file__).parent / "golden" / "inject"
UPDATE = os.environ.get("FASTPROXY_UPDATE_GOLDEN") == "1"
IMAGE = "fastproxy:test"

# case -> InjectOptions fields besides the image
CASES = {
    "pod": {},
    "deployment": {},
    "statefulset": {},
    "daemonset": {},
    "replicaset": {},
    "replicationcontroller": {},
    "job": {},
    "cronjob": {},
    "list": {},
    "multi-doc": {},
    "inject-false-annotation": {},
    "inject-false-label": {},
    "host-network": {},
    "inbound-include": {},
    "inbound-exclude": {},
    "inbound-disabled": {},
    "outbound": {},
    "tproxy": {},
    "interfaces": {},
    "resources": {},
    "resources-requests-only": {},
    "settings": {},
    "proxy-image": {},
    "default-container-preset": {},
    "native-sidecar": {"native_sidecar": True},
    "native-sidecar-annotation": {},
    "native-sidecar-annotation-false": {"native_sidecar": True},
    "native-job": {},
    "reinject-stale": {"native_sidecar": True},
}


def options(name: str) -> InjectOptions:
    return InjectOptions(image=IMAGE, **CASES[name])


def injected(name: str) -> tuple[str, list[str]]:
    return inject_yaml((GOLDEN / f"{name}.in.yaml").read_text(), options(name))


def documents(text: str) -> list:
    return [manifest.load_yaml(chunk) for chunk in manifest.split_documents(text)]


def pods(obj):
    """Every pod (Pod object or pod template) inside obj."""
    if isinstance(obj, dict):
        if isinstance(obj.get("spec"), dict) and "containers" in obj["spec"]:
            yield obj
            return
        for value in obj.values():
            yield from pods(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from pods(value)


def names(containers) -> list[str]:
    return [c["name"] for c in containers or ()]


def init_config(pod: dict) -> flags.InitConfig:
    """Parses the injected fastproxy-init args exactly as `fastproxy init` would."""
    from fastproxy.interception.cli import add_parser

    (init,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "fastproxy-init"]
    assert init["args"][0] == "init"
    top = argparse.ArgumentParser()
    add_parser(top.add_subparsers(dest="command"))
    args = top.parse_args(init["args"])
    return flags.from_sources({f.field: getattr(args, f.field) for f in flags.FLAGS}, {})


def proxy_of(pod: dict) -> dict:
    spec = pod["spec"]
    (proxy,) = [c for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
                if c["name"] == "fastproxy"]
    return proxy


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in proxy_of(pod).get("env", [])}


def pod_with(annotations_: dict, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "annotations": dict(annotations_)},
            "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}], **spec}}


def injected_pod(annotations_: dict, opts: InjectOptions = InjectOptions(image=IMAGE), **spec) -> dict:
    result = inject_pod(pod_with(annotations_, **spec), opts)
    assert result.skipped is None, result.skipped
    return result.pod


# ---------------------------------------------------------------- golden files

def test_every_golden_input_is_a_case():
    on_disk = {p.name[:-len(".in.yaml")] for p in GOLDEN.glob("*.in.yaml")}
    assert on_disk == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    out, notes = injected(name)
    out_path, notes_path = GOLDEN / f"{name}.out.yaml", GOLDEN / f"{name}.notes.txt"
    notes_text = "".join(n + "\n" for n in notes)
    if UPDATE:
        out_path.write_text(out)
        if notes:
            notes_path.write_text(notes_text)
        elif notes_path.exists():
            notes_path.unlink()
    assert out == out_path.read_text(), f"{name}: output differs from {out_path.name}"
    assert notes_text == (notes_path.read_text() if notes_path.exists() else "")


@pytest.mark.parametrize("name", sorted(CASES))
def test_injecting_twice_equals_injecting_once(name):
    once, notes = injected(name)
    twice, notes_again = inject_yaml(once, options(name))
    assert twice == once
    assert notes_again == notes
    for doc in documents(once):  # and object by object
        again, _ = inject_object(doc, options(name))
        assert jsonpatch.equal(again, doc)


# case -> (init containers, containers) of every injected pod, in order
LAYOUT = {
    "pod": (["fastproxy-init"], ["hello", "fastproxy"]),
    "deployment": (["migrate", "fastproxy-init"], ["web", "log-shipper", "fastproxy"]),
    "statefulset": (["fastproxy-init"], ["postgres", "fastproxy"]),
    "daemonset": (["fastproxy-init"], ["agent", "fastproxy"]),
    "replicaset": (["fastproxy-init"], ["php", "fastproxy"]),
    "replicationcontroller": (["fastproxy-init"], ["legacy", "fastproxy"]),
    "job": (["fastproxy-init"], ["report", "fastproxy"]),
    "cronjob": (["fastproxy-init"], ["backup", "fastproxy"]),
    "list": (["fastproxy-init"], ["a", "fastproxy"]),
    "native-sidecar": (["fastproxy-init", "fastproxy", "fetch-config"], ["web"]),
    "native-sidecar-annotation": (["fastproxy-init", "fastproxy"], ["app"]),
    "native-sidecar-annotation-false": (["fastproxy-init"], ["app", "fastproxy"]),
    "native-job": (["fastproxy-init", "fastproxy"], ["report"]),
    "reinject-stale": (["fastproxy-init", "fastproxy", "setup"], ["app"]),
}


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_container_layout(name):
    out, _ = injected(name)
    found = [p for doc in documents(out) for p in pods(doc)]
    assert found, "no pod found"
    for pod in found:
        spec = pod["spec"]
        assert (names(spec.get("initContainers")), names(spec["containers"])) == LAYOUT[name]
        status = orjson.loads(pod["metadata"]["annotations"]["fastproxy.io/status"])
        native = "fastproxy" in names(spec.get("initContainers"))
        assert status == ({"initContainers": ["fastproxy-init", "fastproxy"], "containers": []} if native
                          else {"initContainers": ["fastproxy-init"], "containers": ["fastproxy"]})


@pytest.mark.parametrize("name", ["inject-false-annotation", "inject-false-label", "host-network"])
def test_skipped_documents_are_copied_byte_for_byte(name):
    text = (GOLDEN / f"{name}.in.yaml").read_text()
    out, notes = inject_yaml(text, options(name))
    assert out == text
    assert len(notes) == 1 and "not injected" in notes[0]


def test_multi_doc_keeps_other_documents_verbatim():
    text = (GOLDEN / "multi-doc.in.yaml").read_text()
    out, _ = inject_yaml(text, options("multi-doc"))
    chunks = manifest.split_documents(out)
    assert len(chunks) == 6
    for original in manifest.split_documents(text):
        kind = (manifest.load_yaml(original) or {}).get("kind")
        name = ((manifest.load_yaml(original) or {}).get("metadata") or {}).get("name")
        if (kind, name) != ("Deployment", "web"):
            assert original in chunks, f"{kind} {name} was rewritten"
    web = documents(out)[3]
    assert names(web["spec"]["template"]["spec"]["containers"]) == ["web", "fastproxy"]
    assert documents(out)[2]["data"]["created"] == "2024-01-02T03:04:05Z"  # a string, not a datetime


def test_input_is_not_modified():
    pod = pod_with({"fastproxy.io/exclude-inbound-ports": "22"})
    before = orjson.dumps(pod)
    inject_pod(pod, InjectOptions(image=IMAGE))
    inject_object(pod, InjectOptions(image=IMAGE, native_sidecar=True))
    assert orjson.dumps(pod) == before


def test_non_workloads_pass_through():
    for obj in ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}, None, "text", [1, 2],
                {"apiVersion": "example.com/v1", "kind": "Deployment", "spec": {"template": {}}}):
        assert inject_object(obj, InjectOptions(image=IMAGE)) == (obj, [])


# ---------------------------------------------------------------- annotations

# annotation, value, InitConfig field, expected parsed value
INIT_ANNOTATIONS = [
    ("fastproxy.io/interception-mode", "TPROXY", "inbound_interception_mode", "TPROXY"),
    ("fastproxy.io/interception-mode", "redirect", "inbound_interception_mode", "REDIRECT"),
    ("fastproxy.io/include-inbound-ports", "8080,9090", "inbound_ports_include", (8080, 9090)),
    ("fastproxy.io/include-inbound-ports", "*", "inbound_ports_include", "*"),
    ("fastproxy.io/include-inbound-ports", "", "inbound_ports_include", ()),
    ("fastproxy.io/exclude-inbound-ports", " 22 , 8081", "inbound_ports_exclude", (22, 8081)),
    ("fastproxy.io/include-outbound-ip-ranges", "10.0.0.0/8,fd00::/8", "outbound_ip_ranges_include",
     (flags.ipaddress.ip_network("10.0.0.0/8"), flags.ipaddress.ip_network("fd00::/8"))),
    ("fastproxy.io/include-outbound-ip-ranges", "", "outbound_ip_ranges_include", ()),
    ("fastproxy.io/exclude-outbound-ip-ranges", "169.254.169.254", "outbound_ip_ranges_exclude",
     (flags.ipaddress.ip_network("169.254.169.254/32"),)),
    ("fastproxy.io/include-outbound-ports", "3306,5432", "outbound_ports_include", (3306, 5432)),
    ("fastproxy.io/exclude-outbound-ports", "25", "outbound_ports_exclude", (25,)),
    ("fastproxy.io/kube-virt-interfaces", "k6t-eth0,tap+", "kube_virt_interfaces", ("k6t-eth0", "tap+")),
    ("fastproxy.io/exclude-interfaces", "net1", "exclude_interfaces", ("net1",)),
]


def test_every_interception_annotation_is_tested():
    assert {a for a, *_ in INIT_ANNOTATIONS} == {a.key for a in annotations.INTERCEPTION}


@pytest.mark.parametrize("key,value,field,expected", INIT_ANNOTATIONS)
def test_interception_annotation_reaches_fastproxy_init(key, value, field, expected):
    for native in (False, True):
        pod = injected_pod({key: value}, InjectOptions(image=IMAGE, native_sidecar=native))
        cfg = init_config(pod)
        assert getattr(cfg, field) == expected
        # everything else keeps its `fastproxy init` default
        default = flags.InitConfig()
        for other in flags.InitConfig.__dataclass_fields__:
            if other != field:
                assert getattr(cfg, other) == getattr(default, other), other


def test_default_init_args_match_istio():
    pod = injected_pod({})
    init = pod["spec"]["initContainers"][-1]
    assert init["args"] == ["init", "-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337",
                            "-m", "REDIRECT", "-b", "*", "-i", "*"]
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert init["securityContext"]["runAsUser"] == 0
    assert init["securityContext"]["runAsNonRoot"] is False


def test_container_ports_do_not_narrow_inbound_capture():
    # Istio captures every inbound port ('*') since 1.3, whatever the pod declares.
    pod = injected_pod({}, containers=[{"name": "app", "image": "x", "ports": [{"containerPort": 8080}]}])
    assert init_config(pod).inbound_ports_include == flags.ALL


def test_proxy_container_defaults():
    pod = injected_pod({})
    proxy = proxy_of(pod)
    assert proxy["args"] == ["run"]
    assert proxy["image"] == IMAGE
    assert proxy["ports"] == [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}]
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    sc = proxy["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (1337, 1337, True)
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert proxy["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                  "limits": {"cpu": "2", "memory": "1Gi"}}
    assert env_of(pod) == {"FASTPROXY_WORKERS": "2"}
    assert "restartPolicy" not in proxy and "startupProbe" not in proxy


def test_native_sidecar_has_startup_probe_and_restart_policy():
    pod = injected_pod({}, InjectOptions(image=IMAGE, native_sidecar=True),
                       initContainers=[{"name": "user-init", "image": "x"}])
    spec = pod["spec"]
    assert names(spec["initContainers"]) == ["fastproxy-init", "fastproxy", "user-init"]
    assert names(spec["containers"]) == ["app"]
    proxy = proxy_of(pod)
    assert proxy["restartPolicy"] == "Always"
    assert proxy["startupProbe"] == {"httpGet": {"path": "/healthz/ready", "port": 15021},
                                     "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 600}


def test_tproxy_proxy_runs_as_root_with_net_admin():
    pod = injected_pod({"fastproxy.io/interception-mode": "TPROXY"})
    sc = proxy_of(pod)["securityContext"]
    assert sc["capabilities"] == {"add": ["NET_ADMIN"], "drop": ["ALL"]}
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (0, 1337, False)
    assert env_of(pod)["FASTPROXY_INBOUND_INTERCEPTION_MODE"] == "TPROXY"
    assert init_config(pod).proxy_gids == (1337,)  # root's traffic is excluded by GID


@pytest.mark.parametrize("annos,resources,workers", [
    ({"fastproxy.io/proxy-cpu-limit": "1500m"}, {"limits": {"cpu": "1500m"}}, "2"),
    ({"fastproxy.io/proxy-cpu-limit": "0.5"}, {"limits": {"cpu": "0.5"}}, "1"),
    ({"fastproxy.io/proxy-cpu-limit": "8"}, {"limits": {"cpu": "8"}}, "8"),
    ({"fastproxy.io/proxy-cpu-limit": "4", "fastproxy.io/workers": "3"}, {"limits": {"cpu": "4"}}, "3"),
    ({"fastproxy.io/proxy-memory": "64Mi"}, {"requests": {"memory": "64Mi"}}, "2"),
    ({"fastproxy.io/proxy-cpu": "250m", "fastproxy.io/proxy-memory-limit": "512Mi"},
     {"requests": {"cpu": "250m"}, "limits": {"memory": "512Mi"}}, "2"),
])
def test_resource_annotations(annos, resources, workers):
    pod = injected_pod(annos)
    assert proxy_of(pod)["resources"] == resources
    assert pod["spec"]["initContainers"][-1]["resources"] == resources
    assert env_of(pod)["FASTPROXY_WORKERS"] == workers


def test_every_settings_annotation_becomes_its_variable():
    samples = {"workers": "3", "log_level": "debug", "drain_seconds": "7.5", "connect_timeout_ms": "500",
               "app_pid_file": "/run/app/pid", "idle_timeout_s": "0", "buffer_bytes": "131072", "outbound_traffic_policy": "REGISTRY_ONLY",
               "backlog": "128", "table_bytes": "1048576", "counter_slots": "2048", "config_poll_ms": "0", "detect_timeout_ms": "100", "opaque_ports": "3306,5432", "http_max_head_bytes": "8192", "http_max_headers": "50", "http_max_request_line_bytes": "4096", "http_idle_timeout_s": "60", "http_request_timeout_ms": "15000", "http_request_headers_timeout_ms": "5000", "max_endpoints": "8192", "max_rate_limits": "64", "generate_request_id": "false", "upstream_pool_max_idle": "16", "upstream_idle_timeout_ms": "30000", "workload_name": "reviews-v1", "workload_namespace": "bookinfo", "service_name": "reviews", "max_series_per_worker": "512", "access_log": "/dev/stdout", "access_log_format": "json", "access_log_fields": "method,path", "access_log_filter": "errors", "access_log_sampling": "50", "access_log_buffer_bytes": "65536", "tracing": "true", "trace_sampling": "10", "trace_collector": "127.0.0.1:9411", "trace_format": "otlp", "app_metrics_port": "9100", "app_metrics_path": "/stats"}
    assert set(samples) == {a.setting for a in annotations.SETTINGS_GROUP}, "a new setting needs a sample"
    pod = injected_pod({f"fastproxy.io/{k.replace('_', '-')}": v for k, v in samples.items()})
    assert env_of(pod) == {f"FASTPROXY_{k.upper()}": v for k, v in samples.items()}


def test_sidecar_environment_is_made_of_known_variables():
    pod = injected_pod({"fastproxy.io/log-level": "warning", "fastproxy.io/interception-mode": "TPROXY"})
    known = {f"FASTPROXY_{s.name.upper()}" for s in SETTINGS} | {flags.FASTPROXY_INBOUND_INTERCEPTION_MODE}
    assert set(env_of(pod)) <= known


def test_pinned_settings():
    assert set(annotations.PINNED_SETTINGS) <= set(SETTINGS_BY_NAME)
    for s in SETTINGS:  # anything the pod spec or the init rules depend on stays pinned
        # (app_* name the app's own ports, which the pod's annotations may set)
        if s.name.endswith(("_port", "_address")) and not s.name.startswith("app_"):
            assert s.name in annotations.PINNED_SETTINGS, s.name
    keys = [a.key for a in annotations.ALL]
    assert len(keys) == len(set(keys)), "two annotations share a key"


def test_native_annotation_overrides_the_option():
    classic = InjectOptions(image=IMAGE, native_sidecar=False)
    native = InjectOptions(image=IMAGE, native_sidecar=True)
    assert "restartPolicy" in proxy_of(injected_pod({"fastproxy.io/native-sidecar": "true"}, classic))
    assert "restartPolicy" not in proxy_of(injected_pod({"fastproxy.io/native-sidecar": "false"}, native))


def test_yaml_booleans_in_annotations_are_understood():
    pod = pod_with({"fastproxy.io/inject": False})
    assert inject_pod(pod, InjectOptions(image=IMAGE)).skipped
    pod = pod_with({"fastproxy.io/native-sidecar": True, "fastproxy.io/exclude-inbound-ports": 22})
    out = inject_pod(pod, InjectOptions(image=IMAGE)).pod
    assert "restartPolicy" in proxy_of(out)
    assert init_config(out).inbound_ports_exclude == (22,)


def test_inject_true_injects():
    assert inject_pod(pod_with({"fastproxy.io/inject": "true"}), InjectOptions(image=IMAGE)).skipped is None


def test_job_note_only_for_classic_sidecars():
    job = manifest.load_yaml((GOLDEN / "job.in.yaml").read_text())
    _, notes = inject_object(job, InjectOptions(image=IMAGE))
    assert len(notes) == 1 and notes[0].startswith("Job report: restartPolicy is Never")
    _, notes = inject_object(job, InjectOptions(image=IMAGE, native_sidecar=True))
    assert notes == []


# annotations (or spec changes), the source the error must name, a phrase of the problem
ERRORS = [
    ({"fastproxy.io/exclude-inbound-ports": "http"}, "fastproxy.io/exclude-inbound-ports", "port number"),
    ({"fastproxy.io/exclude-inbound-ports": "70000"}, "fastproxy.io/exclude-inbound-ports", "out of range"),
    ({"fastproxy.io/exclude-inbound-ports": "*"}, "fastproxy.io/exclude-inbound-ports", "'*' is not allowed"),
    ({"fastproxy.io/include-inbound-ports": "80,*"}, "fastproxy.io/include-inbound-ports", "whole value"),
    ({"fastproxy.io/exclude-outbound-ip-ranges": "10.0.0.0/33"}, "fastproxy.io/exclude-outbound-ip-ranges",
     "not an IP"),
    ({"fastproxy.io/interception-mode": "NONE"}, "fastproxy.io/interception-mode", "REDIRECT or TPROXY"),
    ({"fastproxy.io/kube-virt-interfaces": "eth1", "fastproxy.io/exclude-interfaces": "eth1"},
     "fastproxy.io/exclude-interfaces", "not both"),
    ({"fastproxy.io/exclude-inbound-port": "22"}, "fastproxy.io/exclude-inbound-port",
     "did you mean fastproxy.io/exclude-inbound-ports?"),
    ({"fastproxy.io/statuss": "x"}, "fastproxy.io/statuss", "unknown annotation"),
    ({"fastproxy.io/inject": "no"}, "fastproxy.io/inject", '"true" or "false"'),
    ({"fastproxy.io/native-sidecar": "yes"}, "fastproxy.io/native-sidecar", '"true" or "false"'),
    ({"fastproxy.io/proxy-memory": "lots"}, "fastproxy.io/proxy-memory", "quantity"),
    ({"fastproxy.io/proxy-cpu-limit": "2k"}, "fastproxy.io/proxy-cpu-limit", "millicores"),
    ({"fastproxy.io/workers": "0"}, "fastproxy.io/workers", ">= 1"),
    ({"fastproxy.io/log-level": "loud"}, "fastproxy.io/log-level", "one of"),
    ({"fastproxy.io/drain-seconds": "soon"}, "fastproxy.io/drain-seconds", "number"),
    ({"fastproxy.io/proxy-image": "bad image"}, "fastproxy.io/proxy-image", "image reference"),
    ({"fastproxy.io/admin-port": "16000"}, "fastproxy.io/admin-port", "unknown annotation"),
]


@pytest.mark.parametrize("annos,source,phrase", ERRORS)
def test_bad_annotations_are_errors_naming_the_annotation(annos, source, phrase):
    with pytest.raises(InjectError) as err:
        inject_pod(pod_with(annos), InjectOptions(image=IMAGE))
    assert err.value.source == source
    assert phrase in err.value.problem, err.value.problem


def test_app_declaring_a_proxy_port_is_an_error():
    pod = pod_with({})
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 15021}]
    with pytest.raises(InjectError, match="15021"):
        inject_pod(pod, InjectOptions(image=IMAGE))


def test_errors_name_the_object_and_document():
    text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n" \
           "  template:\n    metadata: {annotations: {fastproxy.io/exclude-inbound-ports: x}}\n" \
           "    spec: {containers: [{name: a, image: b}]}\n"
    with pytest.raises(InjectError) as err:
        inject_yaml(text, InjectOptions(image=IMAGE))
    assert str(err.value).startswith("Deployment shop/web: fastproxy.io/exclude-inbound-ports:")
    with pytest.raises(InjectError, match="document 2: not valid YAML"):
        inject_yaml("a: 1\n---\nb: [\n", InjectOptions(image=IMAGE))
    with pytest.raises(InjectError, match="pod template is missing"):
        inject_yaml("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n")


def test_help_lists_every_annotation():
    text = annotations.render_help()
    for a in annotations.ALL:
        assert a.key in text


# ---------------------------------------------------------------- JSON Patch

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=32),
                         st.sampled_from(["", "a", "b", "~", "/", "a/b~c"]))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.sampled_from(["a", "b", "c", "x/y", "m~n", ""]), inner, max_size=4)),
    max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(json_values, json_values)
def test_diff_then_apply_gives_the_target(a, b):
    before = orjson.dumps(a, option=orjson.OPT_NON_STR_KEYS)
    patch = diff(a, b)
    assert jsonpatch.equal(apply_patch(a, patch), b)
    assert orjson.dumps(a, option=orjson.OPT_NON_STR_KEYS) == before
    assert diff(b, b) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, max_size=8), st.data())
def test_list_edits_round_trip(items, data):
    edited = list(items)
    for _ in range(data.draw(st.integers(0, 4))):
        if edited and data.draw(st.booleans()):
            del edited[data.draw(st.integers(0, len(edited) - 1))]
        else:
            edited.insert(data.draw(st.integers(0, len(edited))), data.draw(json_values))
    doc_a, doc_b = {"spec": {"containers": items}}, {"spec": {"containers": edited}}
    assert jsonpatch.equal(apply_patch(doc_a, diff(doc_a, doc_b)), doc_b)


def test_inserted_and_appended_containers_are_single_adds():
    front = diff({"l": [1, 2]}, {"l": [0, 9, 1, 2]})
    assert front == [{"op": "add", "path": "/l/0", "value": 0}, {"op": "add", "path": "/l/1", "value": 9}]
    back = diff({"l": [1, 2]}, {"l": [1, 2, 3]})
    assert back == [{"op": "add", "path": "/l/-", "value": 3}]


def test_keys_are_escaped():
    patch = diff({"annotations": {}}, {"annotations": {"fastproxy.io/status": "x", "a~b": 1}})
    assert [op["path"] for op in patch] == ["/annotations/fastproxy.io~1status", "/annotations/a~0b"]


def test_json_equality_is_typed():
    assert not jsonpatch.equal(1, True) and not jsonpatch.equal(0, False) and not jsonpatch.equal("1", 1)
    assert jsonpatch.equal(1, 1.0)
    assert diff({"a": 1}, {"a": True}) == [{"op": "replace", "path": "/a", "value": True}]


# RFC 6902 appendix A, a selection: (document, patch, result or None for an error)
RFC_EXAMPLES = [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"baz": "qux", "foo": "bar"}),
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo", "foo": "bar"}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ({"baz": "qux", "foo": ["a", 2, "c"]},
     [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
    ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}], None),
    ({"foo": "bar"}, [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
     {"foo": "bar", "child": {"grandchild": {}}}),
    ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}], None),
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
     {"foo": ["bar", ["abc", "def"]]}),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/01", "value": 1}], None),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/2", "value": 1}], None),
    ({"foo": 1}, [{"op": "copy", "from": "/foo", "path": "/bar"}], {"foo": 1, "bar": 1}),
    ({"foo": 1}, [{"op": "frobnicate", "path": "/foo"}], None),
    ({"foo": {"a": 1}}, [{"op": "move", "from": "/foo", "path": "/foo/a/b"}], None),
    ({"foo": 1}, [{"op": "replace", "path": "", "value": [1]}], [1]),
]


@pytest.mark.parametrize("doc,patch,result", RFC_EXAMPLES)
def test_apply_patch_rfc6902_examples(doc, patch, result):
    if result is None:
        with pytest.raises(JsonPatchError):
            apply_patch(doc, patch)
    else:
        assert apply_patch(doc, patch) == result


# ---------------------------------------------------------------- AdmissionReview

def admission_review(pod: dict, uid: str = "0b1c-42", **request) -> dict:
    req = {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
           "resource": {"group": "", "version": "v1", "resource": "pods"},
           "namespace": "shop", "operation": "CREATE", "object": pod, **request}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def golden_pod() -> dict:
    return manifest.load_yaml((GOLDEN / "pod.in.yaml").read_text())


@pytest.mark.parametrize("native", [False, True])
def test_admission_patch_gives_the_injected_pod(native):
    opts = InjectOptions(image=IMAGE, native_sidecar=native)
    pod = golden_pod()
    out = admission.review(admission_review(pod), opts).review
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    response = out["response"]
    assert response["uid"] == "0b1c-42" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = orjson.loads(base64.b64decode(response["patch"]))
    assert apply_patch(pod, patch) == inject_pod(pod, opts).pod


@pytest.mark.parametrize("change,why", [
    (lambda r: r["request"]["object"]["metadata"].setdefault("annotations", {}).update(
        {"fastproxy.io/inject": "false"}), "not injected"),
    (lambda r: r["request"].update(namespace="kube-system"), "never injected"),
    (lambda r: r["request"].update(operation="UPDATE"), "UPDATE"),
    (lambda r: r["request"].update(kind={"group": "apps", "version": "v1", "kind": "Deployment"}), "not a Pod"),
    (lambda r: r["request"].update(subResource="status"), "not a Pod"),
    (lambda r: r["request"].update(object=inject_pod(golden_pod(), InjectOptions(image=IMAGE)).pod),
     "already injected"),
])
def test_admission_allows_without_patch(change, why):
    review = admission_review(golden_pod())
    change(review)
    out = admission.review(review, InjectOptions(image=IMAGE))
    assert out.review["response"] == {"uid": "0b1c-42", "allowed": True}
    assert why in out.summary


def test_admission_denies_bad_annotations_with_a_message():
    pod = golden_pod()
    pod["metadata"]["annotations"] = {"fastproxy.io/exclude-inbound-port": "22"}
    response = admission.review(admission_review(pod), InjectOptions(image=IMAGE)).review["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "did you mean fastproxy.io/exclude-inbound-ports" in response["status"]["message"]


def test_admission_echoes_v1beta1_and_warns_for_classic_jobs():
    pod = golden_pod()
    pod["spec"]["restartPolicy"] = "Never"
    review = admission_review(pod)
    review["apiVersion"] = "admission.k8s.io/v1beta1"
    out = admission.review(review, InjectOptions(image=IMAGE)).review
    assert out["apiVersion"] == "admission.k8s.io/v1beta1"
    assert any("native sidecar" in w for w in out["response"]["warnings"])


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"kind": "Pod"}',
                                  b'{"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview"}',
                                  b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}'])
def test_admission_rejects_malformed_requests(body):
    with pytest.raises(admission.AdmissionError):
        admission.handle(body, InjectOptions(image=IMAGE))


# ---------------------------------------------------------------- CLI (in process)

def run_inject(argv: str, monkeypatch, capsys, stdin: str = "", env: dict | None = None) -> tuple[int, str, str]:
    for k in (cli.FASTPROXY_INJECT_IMAGE, cli.FASTPROXY_INJECT_NATIVE_SIDECAR):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    top = argparse.ArgumentParser(prog="fastproxy")
    cli.add_parsers(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(["inject", *shlex.split(argv)])
    rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_inject_file_to_file(tmp_path, monkeypatch, capsys):
    src, dst = GOLDEN / "job.in.yaml", tmp_path / "out.yaml"
    rc, out, err = run_inject(f"-f {src} -o {dst} --image {IMAGE}", monkeypatch, capsys)
    assert rc == 0 and out == ""
    assert dst.read_text() == (GOLDEN / "job.out.yaml").read_text()
    assert "restartPolicy is Never" in err


def test_cli_inject_in_place(tmp_path, monkeypatch, capsys):
    path = tmp_path / "m.yaml"
    path.write_text((GOLDEN / "pod.in.yaml").read_text())
    assert run_inject(f"-f {path} -o {path} --image {IMAGE}", monkeypatch, capsys)[0] == 0
    assert path.read_text() == (GOLDEN / "pod.out.yaml").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["m.yaml"]


def test_cli_inject_stdin_and_environment(monkeypatch, capsys):
    text = (GOLDEN / "native-sidecar.in.yaml").read_text()
    rc, out, _ = run_inject("-f -", monkeypatch, capsys, stdin=text,
                            env={cli.FASTPROXY_INJECT_IMAGE: IMAGE, cli.FASTPROXY_INJECT_NATIVE_SIDECAR: "true"})
    assert rc == 0 and out == (GOLDEN / "native-sidecar.out.yaml").read_text()
    rc, out, _ = run_inject("-f - --native-sidecar false", monkeypatch, capsys, stdin=text,
                            env={cli.FASTPROXY_INJECT_IMAGE: IMAGE, cli.FASTPROXY_INJECT_NATIVE_SIDECAR: "true"})
    assert rc == 0 and "restartPolicy: Always" not in out


def test_cli_inject_errors(tmp_path, monkeypatch, capsys):
    rc, out, err = run_inject(f"-f {tmp_path / 'missing.yaml'}", monkeypatch, capsys)
    assert rc == 1 and "cannot read" in err
    bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {fastproxy.io/inject: maybe}}\n" \
          "spec: {containers: [{name: a, image: b}]}\n"
    rc, out, err = run_inject("-f -", monkeypatch, capsys, stdin=bad)
    assert rc == 2 and out == "" and "Pod p: fastproxy.io/inject:" in err
    rc, _, err = run_inject("-f - --native-sidecar maybe", monkeypatch, capsys, stdin=bad)
    assert rc == 2 and "--native-sidecar" in err


def test_cli_webhook_usage_errors(tmp_path, monkeypatch, capsys, caplog):
    for k in (cli.FASTPROXY_WEBHOOK_CERT, cli.FASTPROXY_WEBHOOK_KEY, cli.FASTPROXY_WEBHOOK_PORT,
              cli.FASTPROXY_WEBHOOK_ADDRESS, cli.FASTPROXY_INJECT_IMAGE, cli.FASTPROXY_INJECT_NATIVE_SIDECAR):
        monkeypatch.delenv(k, raising=False)
    top = argparse.ArgumentParser(prog="fastproxy")
    cli.add_parsers(top.add_subparsers(dest="command", required=True))

    def run(argv: str) -> tuple[int, str]:
        args = top.parse_args(["webhook", *shlex.split(argv)])
        rc = args.func(args)
        return rc, capsys.readouterr().err

    rc, err = run("")
    assert rc == 2 and "--cert" in err and "FASTPROXY_WEBHOOK_CERT" in err
    rc, err = run("--cert c --key k --port https")
    assert rc == 2 and "--port" in err
    monkeypatch.setenv(cli.FASTPROXY_WEBHOOK_PORT, "70000")
    rc, err = run("--cert c --key k")
    assert rc == 2 and "FASTPROXY_WEBHOOK_PORT" in err
    monkeypatch.delenv(cli.FASTPROXY_WEBHOOK_PORT)
    rc, err = run(f"--cert {tmp_path / 'missing.crt'} --key {tmp_path / 'missing.key'} --address 127.0.0.1 --port 0")
    assert rc == 1 and "cannot load the certificate" in caplog.text


# ---------------------------------------------------------------- YAML streams

@pytest.mark.parametrize("text,chunks", [
    ("a: 1\n", ["a: 1\n"]),
    ("---\na: 1\n---\nb: 2", ["a: 1\n", "b: 2\n"]),
    ("# header\n---\na: 1\n", ["# header\n", "a: 1\n"]),
    ("a: 1\n--- # next\nb: 2\n", ["a: 1\n", "# next\nb: 2\n"]),
    ("a: 1\r\n---\r\nb: 2\r\n", ["a: 1\r\n", "b: 2\r\n"]),
    ("%YAML 1.1\n---\na: 1\n---\nb: 2\n", ["%YAML 1.1\n---\na: 1\n", "b: 2\n"]),
    ("a: |\n  ---\n  text\n", ["a: |\n  ---\n  text\n"]),
    ("a: 1\n----\n", ["a: 1\n----\n"]),
    ("\n---\n\n---\n", []),
])
def test_split_documents(text, chunks):
    assert manifest.split_documents(text) == chunks
