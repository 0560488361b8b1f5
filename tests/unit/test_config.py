"""Config loading and validation: every error names its field path."""
import pytest

from fastproxy.config.load import load_default, load_text
from fastproxy.config.schema import ConfigError
from fastproxy.config.env import render_env_help
from fastproxy.config.schema import SETTINGS

GOOD = """
settings: {workers: 2, admin_port: 18000}
listeners:
  - {name: echo, address: "127.0.0.1:18080", tcp_proxy: {cluster: echo}}
  - {name: out, address: "0.0.0.0:15001", additional_addresses: ["[::]:15001"], use_original_dst: true, traffic_direction: OUTBOUND}
  - {name: svc, address: "10.0.0.1:80", bind_to_port: false, tcp_proxy: {cluster: echo}}
clusters:
  - {name: echo, endpoints: [{address: "127.0.0.1:9000", weight: 3}, {address: "[::1]:9001"}]}
"""


def test_good_config_loads():
    c = load_text(GOOD, {})
    assert c.settings["workers"] == 2
    assert [l.name for l in c.listeners] == ["echo", "out", "svc"]
    assert str(c.clusters[0].endpoints[1].address) == "[::1]:9001"
    assert c.clusters[0].endpoints[0].weight == 3


def test_default_config_has_capture_listeners():
    c = load_default({"FASTPROXY_OUTBOUND_PORT": "16001"})
    by_name = {l.name: l for l in c.listeners}
    assert by_name["virtualOutbound"].address.port == 16001
    assert by_name["virtualOutbound"].traffic_direction == "OUTBOUND"
    assert by_name["virtualInbound"].address.port == 15006
    assert by_name["virtualInbound"].additional_addresses[0].ip == "::"


def test_env_overrides_file():
    c = load_text(GOOD, {"FASTPROXY_WORKERS": "5", "FASTPROXY_OUTBOUND_TRAFFIC_POLICY": "registry_only"})
    assert c.settings["workers"] == 5
    assert c.settings["outbound_traffic_policy"] == "REGISTRY_ONLY"


@pytest.mark.parametrize("text, path, fragment", [
    ("clusters: [{name: a, endpoints: [{address: '1.2.3.4:80'}, {address: nope}]}]",
     "clusters[0].endpoints[1].address", "expected host:port"),
    ("clusters: [{name: a, endpoints: []}]", "clusters[0].endpoints", "at least one endpoint"),
    ("clusters: [{name: a, endpoints: [{address: '::1:80'}]}]", "clusters[0].endpoints[0].address", "brackets"),
    ("clusters: [{name: a, endpoints: [{address: 'example.com:80'}]}]", "clusters[0].endpoints[0].address", "IP address"),
    ("clusters: [{name: a, endpoints: [{address: '1.2.3.4:80', weight: 0}]}]", "clusters[0].endpoints[0].weight", "between 1"),
    ("clusters: [{name: a, endpoints: [{address: '1.2.3.4:80'}], colour: red}]", "clusters[0].colour", "unknown field"),
    ("clusters: [{name: PassthroughCluster, endpoints: [{address: '1.2.3.4:80'}]}]", "clusters[0].name", "reserved"),
    ("settings: {workers: 0}", "settings.workers", ">= 1"),
    ("settings: {workers: many}", "settings.workers", "integer"),
    ("settings: {outbound_traffic_policy: SOMETIMES}", "settings.outbound_traffic_policy", "one of"),
    ("settings: {nope: 1}", "settings.nope", "unknown field"),
    ("listeners: [{name: l, address: '127.0.0.1:1', tcp_proxy: {cluster: missing}}]", "listeners[0].tcp_proxy.cluster", "no cluster"),
    ("listeners: [{name: l, address: '127.0.0.1:1'}]", "listeners[0].tcp_proxy", "required"),
    ("listeners: [{name: l, address: '0.0.0.0:1', use_original_dst: true}]", "listeners[0].traffic_direction", "INBOUND or OUTBOUND"),
    ("listeners: [{name: l, address: '127.0.0.1:1', tcp_proxy: {cluster: BlackHoleCluster}},"
     " {name: l, address: '127.0.0.1:2', tcp_proxy: {cluster: BlackHoleCluster}}]", "listeners[1].name", "duplicate"),
    ("listeners: [{name: a, address: '127.0.0.1:1', tcp_proxy: {cluster: BlackHoleCluster}},"
     " {name: b, address: '127.0.0.1:1', tcp_proxy: {cluster: BlackHoleCluster}}]", "listeners[1].address", "already used"),
    ("listeners: {name: a}", "listeners", "expected a list"),
    ("[1, 2]", "", "must be a mapping"),
    ("a: [", "", "not valid YAML"),
])
def test_errors_name_the_field(text, path, fragment):
    with pytest.raises(ConfigError) as e:
        load_text(text, {})
    assert e.value.path == path
    assert fragment in str(e.value)


def test_bad_env_names_the_variable():
    with pytest.raises(ConfigError) as e:
        load_default({"FASTPROXY_DRAIN_SECONDS": "soon"})
    assert e.value.path == "FASTPROXY_DRAIN_SECONDS"


def test_env_help_lists_every_setting():
    text = render_env_help()
    for s in SETTINGS:
        assert f"FASTPROXY_{s.name.upper()}\n" in text
    assert "FASTPROXY_CONFIG" in text


# -- HTTP: listeners, virtual services, settings ---------------------------------

HTTP = """
listeners:
  - {name: web, address: "127.0.0.1:18080", http: {cluster: fallback}}
  - {name: api, address: "127.0.0.1:18081", http: {}}
  - {name: bare, address: "127.0.0.1:18082", http: }
  - {name: out, address: "0.0.0.0:15001", use_original_dst: true, traffic_direction: OUTBOUND}
clusters:
  - {name: reviews-v1, endpoints: [{address: "127.0.0.1:9080"}]}
  - {name: reviews-v2, endpoints: [{address: "127.0.0.1:9081"}, {address: "127.0.0.2:9081"}]}
  - {name: fallback, endpoints: [{address: "127.0.0.1:9000"}]}
virtual_services:
  - name: reviews
    hosts: [reviews.example.com]
    http:
      - match: [{uri: {prefix: /v2}}]
        route: [{destination: {host: reviews-v2, port: {number: 9081}}}]
      - route:
          - {destination: {host: reviews-v1}, weight: 90}
          - {destination: {host: reviews-v2}, weight: 10}
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: ratings, creationTimestamp: 2024-05-01T10:00:00Z}
    spec:
      hosts: ["*.ratings.example.com"]
      http: [{directResponse: {status: 204}}]
"""


def test_http_listeners_and_virtual_services_load():
    c = load_text(HTTP, {})
    by_name = {l.name: l for l in c.listeners}
    assert by_name["web"].http.cluster == "fallback" and by_name["web"].tcp_proxy is None
    assert by_name["api"].http.cluster is None
    assert by_name["bare"].http.cluster is None
    assert by_name["out"].http is None
    assert [vs.get("name") or vs["metadata"]["name"] for vs in c.virtual_services] == ["reviews", "ratings"]
    assert c.virtual_services[0]["http"][1]["route"][1]["weight"] == 10
    # kept as JSON data: YAML's timestamp became its text
    assert isinstance(c.virtual_services[1]["metadata"]["creationTimestamp"], str)


def test_no_virtual_services_is_an_empty_tuple():
    assert load_text(GOOD, {}).virtual_services == ()
    assert load_text("virtual_services: ", {}).virtual_services == ()
    assert load_default({}).virtual_services == ()


_CLUSTERS = "clusters: [{name: web, endpoints: [{address: '127.0.0.1:9000'}]}, {name: Caps, endpoints: [{address: '127.0.0.1:9001'}]}]\n"


def _vs(http: str) -> str:
    return _CLUSTERS + "virtual_services: [{hosts: [a.example], http: " + http + "}]\n"


@pytest.mark.parametrize("text, path, fragment", [
    # listeners
    (_CLUSTERS + "listeners: [{name: l, address: '127.0.0.1:1', tcp_proxy: {cluster: web}, http: {}}]",
     "listeners[0].http", "not both"),
    (_CLUSTERS + "listeners: [{name: l, address: '127.0.0.1:1'}]", "listeners[0].tcp_proxy", "or http"),
    (_CLUSTERS + "listeners: [{name: l, address: '0.0.0.0:1', use_original_dst: true, traffic_direction: OUTBOUND, http: {}}]",
     "listeners[0].http", "detects each connection's protocol"),
    (_CLUSTERS + "listeners: [{name: l, address: '10.0.0.1:80', bind_to_port: false, http: {cluster: web}}]",
     "listeners[0].http", "bind_to_port: false"),
    (_CLUSTERS + "listeners: [{name: l, address: '127.0.0.1:1', http: {cluster: web, route: x}}]",
     "listeners[0].http.route", "unknown field"),
    (_CLUSTERS + "listeners: [{name: l, address: '127.0.0.1:1', http: [web]}]", "listeners[0].http", "expected a mapping"),
    (_CLUSTERS + "listeners: [{name: l, address: '127.0.0.1:1', http: {cluster: ''}}]", "listeners[0].http.cluster", "non-empty"),
    (_CLUSTERS + "listeners: [{name: l, address: '127.0.0.1:1', http: {cluster: nope}}]",
     "listeners[0].http.cluster", "no cluster named 'nope'"),
    (_CLUSTERS + "listeners: [{name: l, address: '127.0.0.1:1', http: {cluster: PassthroughCluster}}]",
     "listeners[0].http.cluster", "leave cluster out"),
    # virtual services
    (_vs("[{route: [{destination: {host: web}}]}, {route: [{destination: {host: x}}]}]"),
     "virtual_services[0].http[1].route[0].destination.host", "no cluster named 'x'"),
    (_vs("[{route: [{destination: {host: web}, weight: 50}, {destination: {host: gone}, weight: 50}]}]"),
     "virtual_services[0].http[0].route[1].destination.host", "no cluster named 'gone'"),
    (_vs("[{route: [{destination: {host: caps}}]}]"),
     "virtual_services[0].http[0].route[0].destination.host", "rename 'Caps'"),
    (_vs("[{route: [{destination: {host: web, subset: v1}}]}]"),
     "virtual_services[0].http[0].route[0].destination.subset", "not supported"),
    (_vs("[{route: [{destination: {host: web, port: {number: 8080}}}]}]"),
     "virtual_services[0].http[0].route[0].destination.port.number", "port 9000, not 8080"),
    (_vs("[{match: [{uri: {regex: '('}}], route: [{destination: {host: web}}]}]"),
     "virtual_services[0].http[0].match[0].uri.regex", "invalid regex"),
    (_vs("[{route: [{destination: {host: web}}], timeout: 5x}]"), "virtual_services[0].http[0].timeout", "expected a duration"),
    (_vs("[{route: [{destination: {host: web}}], mirror: {host: web}}]"), "virtual_services[0].http[0].mirror", "not supported"),
    (_CLUSTERS + "virtual_services: [{kind: VirtualService, metadata: {name: a}, spec: {hosts: [a.example],"
     " http: [{route: [{destination: {host: nope}}]}]}}]",
     "virtual_services[0].spec.http[0].route[0].destination.host", "no cluster named 'nope'"),
    (_CLUSTERS + "virtual_services: {hosts: [a]}", "virtual_services", "expected a list"),
    # settings
    ("settings: {opaque_ports: '25,x'}", "settings.opaque_ports", "1..65535"),
    ("settings: {opaque_ports: '0'}", "settings.opaque_ports", "1..65535"),
    ("settings: {opaque_ports: '65536'}", "settings.opaque_ports", "1..65535"),
    ("settings: {opaque_ports: '25,,587'}", "settings.opaque_ports", "empty item"),
    ("settings: {opaque_ports: 25}", "settings.opaque_ports", "expected a string"),
    ("settings: {detect_timeout_ms: 0}", "settings.detect_timeout_ms", ">= 1"),
    ("settings: {http_max_head_bytes: 1023}", "settings.http_max_head_bytes", ">= 1024"),
    ("settings: {http_max_head_bytes: 1048577}", "settings.http_max_head_bytes", "<= 1048576"),
    ("settings: {http_max_headers: 0}", "settings.http_max_headers", ">= 1"),
    ("settings: {http_max_headers: 1001}", "settings.http_max_headers", "<= 1000"),
    ("settings: {http_max_request_line_bytes: 255}", "settings.http_max_request_line_bytes", ">= 256"),
    ("settings: {upstream_pool_max_idle: -1}", "settings.upstream_pool_max_idle", ">= 0"),
    ("settings: {upstream_idle_timeout_ms: 0}", "settings.upstream_idle_timeout_ms", ">= 1"),
    ("settings: {http_idle_timeout_s: -1}", "settings.http_idle_timeout_s", ">= 0"),
    ("settings: {http_request_timeout_ms: -5}", "settings.http_request_timeout_ms", ">= 0"),
    ("settings: {generate_request_id: sometimes}", "settings.generate_request_id", "boolean"),
])
def test_http_errors_name_the_field(text, path, fragment):
    with pytest.raises(ConfigError) as e:
        load_text(text, {})
    assert e.value.path == path
    assert fragment in str(e.value)


def test_http_settings_defaults():
    from fastproxy.config.schema import parse_port_list
    from fastproxy.proto.detect import DEFAULT_OPAQUE_PORTS

    s = load_default({}).settings
    assert (s["detect_timeout_ms"], s["http_max_head_bytes"], s["http_max_headers"],
            s["http_max_request_line_bytes"]) == (50, 61440, 100, 61440)
    assert (s["upstream_pool_max_idle"], s["upstream_idle_timeout_ms"], s["http_idle_timeout_s"],
            s["http_request_timeout_ms"], s["generate_request_id"]) == (64, 60000, 3600, 0, True)
    assert parse_port_list(s["opaque_ports"]) == DEFAULT_OPAQUE_PORTS


def test_http_settings_from_env():
    env = {"FASTPROXY_DETECT_TIMEOUT_MS": "7", "FASTPROXY_OPAQUE_PORTS": " 3306, 5432 ",
           "FASTPROXY_HTTP_MAX_HEAD_BYTES": "8192", "FASTPROXY_HTTP_MAX_HEADERS": "50",
           "FASTPROXY_HTTP_MAX_REQUEST_LINE_BYTES": "4096", "FASTPROXY_UPSTREAM_POOL_MAX_IDLE": "0",
           "FASTPROXY_UPSTREAM_IDLE_TIMEOUT_MS": "1500", "FASTPROXY_HTTP_IDLE_TIMEOUT_S": "0",
           "FASTPROXY_HTTP_REQUEST_TIMEOUT_MS": "2500", "FASTPROXY_GENERATE_REQUEST_ID": "false"}
    s = load_text("settings: {detect_timeout_ms: 100, generate_request_id: true}", env).settings
    assert s["detect_timeout_ms"] == 7
    assert s["opaque_ports"] == "3306, 5432"
    assert (s["http_max_head_bytes"], s["http_max_headers"], s["http_max_request_line_bytes"]) == (8192, 50, 4096)
    assert (s["upstream_pool_max_idle"], s["upstream_idle_timeout_ms"]) == (0, 1500)
    assert (s["http_idle_timeout_s"], s["http_request_timeout_ms"]) == (0, 2500)
    assert s["generate_request_id"] is False
    assert load_default({"FASTPROXY_OPAQUE_PORTS": ""}).settings["opaque_ports"] == ""
    assert load_default({"FASTPROXY_GENERATE_REQUEST_ID": "1"}).settings["generate_request_id"] is True


@pytest.mark.parametrize("var, value, fragment", [
    ("FASTPROXY_OPAQUE_PORTS", "3306;5432", "1..65535"),
    ("FASTPROXY_GENERATE_REQUEST_ID", "perhaps", "boolean"),
    ("FASTPROXY_HTTP_MAX_HEADERS", "2000", "<= 1000"),
])
def test_bad_http_env_names_the_variable(var, value, fragment):
    with pytest.raises(ConfigError) as e:
        load_default({var: value})
    assert e.value.path == var
    assert fragment in str(e.value)


def test_env_help_shows_booleans_as_typed():
    text = render_env_help()
    block = text.split("FASTPROXY_GENERATE_REQUEST_ID\n", 1)[1].split("\n\n", 1)[0]
    assert "default: true" in block
    assert "x-request-id" in block


# -- traffic governance: listeners and settings (clusters: test_policy_config.py) ----

def test_governance_settings_and_listener_headers_timeout():
    s = load_default({}).settings
    assert (s["max_endpoints"], s["max_rate_limits"], s["http_request_headers_timeout_ms"]) == (4096, 1024, 10000)
    s = load_text("settings: {max_endpoints: 10, http_request_headers_timeout_ms: 0}",
                  {"FASTPROXY_MAX_RATE_LIMITS": "3"}).settings
    assert (s["max_endpoints"], s["max_rate_limits"], s["http_request_headers_timeout_ms"]) == (10, 3, 0)
    c = load_text(HTTP.replace("http: {cluster: fallback}}", "http: {cluster: fallback}, request_headers_timeout_ms: 0}")
                  .replace("traffic_direction: OUTBOUND}", "traffic_direction: OUTBOUND, request_headers_timeout_ms: 500}"),
                  {})
    by_name = {l.name: l.request_headers_timeout_ms for l in c.listeners}
    assert by_name == {"web": 0, "api": None, "bare": None, "out": 500}
    text = render_env_help()
    for name in ("MAX_ENDPOINTS", "MAX_RATE_LIMITS", "HTTP_REQUEST_HEADERS_TIMEOUT_MS"):
        block = text.split(f"FASTPROXY_{name}\n", 1)[1].split("\n\n", 1)[0]
        assert "default: " in block and len(block) > 60


@pytest.mark.parametrize("text, path, message", [
    ("settings: {max_endpoints: 0}", "settings.max_endpoints", "must be >= 1, got 0"),
    ("settings: {max_rate_limits: 0}", "settings.max_rate_limits", "must be >= 1, got 0"),
    ("settings: {max_endpoints: 16777217}", "settings.max_endpoints", "must be <= 16777216, got 16777217"),
    ("settings: {http_request_headers_timeout_ms: -1}", "settings.http_request_headers_timeout_ms",
     "must be >= 0, got -1"),
    (_CLUSTERS + "listeners: [{name: l, address: '127.0.0.1:1', http: {}, request_headers_timeout_ms: -1}]",
     "listeners[0].request_headers_timeout_ms", "must be between 0 and 3600000, got -1"),
    (_CLUSTERS + "listeners: [{name: l, address: '127.0.0.1:1', http: {}, request_headers_timeout_ms: 1s}]",
     "listeners[0].request_headers_timeout_ms", "expected an integer, got '1s'"),
    (_CLUSTERS + "listeners: [{name: l, address: '127.0.0.1:1', tcp_proxy: {cluster: web}, "
     "request_headers_timeout_ms: 5}]", "listeners[0].request_headers_timeout_ms",
     "a tcp_proxy listener reads no HTTP requests"),
])
def test_governance_errors_name_the_field(text, path, message):
    with pytest.raises(ConfigError) as e:
        load_text(text, {})
    assert (e.value.path, e.value.message) == (path, message)
