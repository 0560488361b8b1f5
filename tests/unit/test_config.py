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
