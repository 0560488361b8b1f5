"""Transparent capture with real NAT in network namespaces: nat OUTPUT
REDIRECT to the OUTBOUND capture listener (original destination recovered
with SO_ORIGINAL_DST for IPv4 and IP6T_SO_ORIGINAL_DST for IPv6), and nat
PREROUTING REDIRECT to the INBOUND capture listener.

Needs root, `ip`, `iptables`, `ip6tables`, `setpriv` and `curl`; otherwise
every test here is skipped with the reason."""
import pytest

from tests.privileged.lab import INBOUND_PORT, OUTBOUND_PORT, lab_settings
from tests.support.netns import A_V4, A_V6, B_V4, B_V6
from tests.support.polling import poll_until
from tests.support.proxy_config import capture_listener, cluster, proxy_config, virtual_listener

pytestmark = pytest.mark.privileged

APP_PORT = 8080
TAGGED_PORT = 8081

FAMILIES = {
    4: {"dst": B_V4, "target": f"{B_V4}:{APP_PORT}", "proxy_src": A_V4},
    6: {"dst": B_V6, "target": f"[{B_V6}]:{APP_PORT}", "proxy_src": A_V6},
}


def _outbound_capture():
    return capture_listener("virtualOutbound", f"0.0.0.0:{OUTBOUND_PORT}", "OUTBOUND",
                            additional=[f"[::]:{OUTBOUND_PORT}"])


def _redirect_both_families(lab, port=APP_PORT):
    lab.pair.redirect(4, B_V4, port, OUTBOUND_PORT)
    lab.pair.redirect(6, B_V6, port, OUTBOUND_PORT)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_captured_connection_passes_through_to_original_destination(lab, family):
    fam = FAMILIES[family]
    upstream = lab.start_upstream(APP_PORT)
    proxy = lab.start_proxy(proxy_config(lab_settings(), [_outbound_capture()], []))
    _redirect_both_families(lab)
    before = proxy.admin.metrics()
    base = {k: before.value_or_zero(f"fastproxy_cluster_upstream_cx_{k}", cluster_name="PassthroughCluster")
            for k in ("total", "tx_bytes_total", "rx_bytes_total")}
    nbytes = 300_000

    result = lab.client(fam["target"], nbytes=nbytes, seed=family)

    assert result.get("echo_ok"), result
    peers = upstream.peers()
    assert len(peers) == 1, peers
    peer_host, peer_port = peers[0]["peer"]
    assert peer_host == fam["proxy_src"]
    # REDIRECT rewrites only the destination: had the client reached the
    # upstream directly, the upstream would see the client's own port.
    assert peer_port != result["local"][1], (peers, result)

    def counted():
        m = proxy.admin.metrics()
        got = {k: m.value_or_zero(f"fastproxy_cluster_upstream_cx_{k}", cluster_name="PassthroughCluster") - base[k]
               for k in base}
        return m if got == {"total": 1, "tx_bytes_total": nbytes, "rx_bytes_total": nbytes} else None

    m = poll_until(counted, timeout=5, message="PassthroughCluster: 1 connection, the bytes both ways")
    assert m.value("fastproxy_listener_downstream_cx_total", listener_name="virtualOutbound") == 1
    assert m.value("fastproxy_listener_downstream_cx_rx_bytes_total", listener_name="virtualOutbound") == nbytes
    assert m.value_or_zero("fastproxy_listener_downstream_cx_refused_total", listener_name="virtualOutbound") == 0


def test_registry_only_blackholes_unknown_destinations(lab):
    upstream = lab.start_upstream(APP_PORT)
    proxy = lab.start_proxy(proxy_config(lab_settings(outbound_traffic_policy="REGISTRY_ONLY"),
                                         [_outbound_capture()], []))
    _redirect_both_families(lab)

    for fam in FAMILIES.values():
        result = lab.client(fam["target"], nbytes=1000)
        assert not result["echo_ok"], result
        assert result.get("received", 0) == 0, result

    m = poll_until(lambda: (m := proxy.admin.metrics()).value_or_zero(
        "fastproxy_listener_downstream_cx_refused_total", listener_name="virtualOutbound", reason="no_route") == 2
        and m, timeout=5, message="refused_total{reason=no_route} == 2")
    assert upstream.peers() == [], "REGISTRY_ONLY still connected to the unknown destination"
    assert m.value_or_zero("fastproxy_cluster_upstream_cx_total", cluster_name="PassthroughCluster") == 0


@pytest.mark.parametrize("match", [f"{B_V4}:{APP_PORT}", f"0.0.0.0:{APP_PORT}"], ids=["exact_ip", "any_ip"])
def test_virtual_listener_routes_captured_traffic_to_its_cluster(lab, match):
    lab.start_upstream(APP_PORT, tag="DIRECT|")
    tagged = lab.start_upstream(TAGGED_PORT, tag="SVC|")
    doc = proxy_config(lab_settings(),
                       [_outbound_capture(), virtual_listener("svc", match, "svc")],
                       [cluster("svc", f"{B_V4}:{TAGGED_PORT}")])
    proxy = lab.start_proxy(doc)
    _redirect_both_families(lab)

    result = lab.client(FAMILIES[4]["target"], nbytes=50_000, expect_prefix="SVC|")
    assert result["echo_ok"], result
    assert len(tagged.peers()) == 1
    m = poll_until(lambda: (m := proxy.admin.metrics()).value_or_zero(
        "fastproxy_cluster_upstream_cx_total", cluster_name="svc") == 1 and m,
        timeout=5, message="cluster svc used once")
    assert m.value_or_zero("fastproxy_cluster_upstream_cx_total", cluster_name="PassthroughCluster") == 0


def test_inbound_capture_relays_to_the_app_from_127_0_0_6(lab):
    """Traffic arriving from the other namespace for 192.0.2.1:APP_PORT is
    redirected (PREROUTING) to the INBOUND capture listener, which relays it
    to the original destination - the local app - from 127.0.0.6, so the
    sidecar's own connection is not captured again."""
    app = lab.start_upstream(APP_PORT, ns=lab.pair.a)
    inbound = capture_listener("virtualInbound", f"0.0.0.0:{INBOUND_PORT}", "INBOUND")
    proxy = lab.start_proxy(proxy_config(lab_settings(), [inbound], []))
    lab.pair.redirect_inbound(A_V4, APP_PORT, INBOUND_PORT)

    result = lab.client(f"{A_V4}:{APP_PORT}", nbytes=120_000, ns=lab.pair.b)

    assert result["echo_ok"], result
    peers = app.peers()
    assert len(peers) == 1, peers
    assert peers[0]["peer"][0] == "127.0.0.6", peers
    assert peers[0]["local"] == [A_V4, APP_PORT], peers
    m = poll_until(lambda: (m := proxy.admin.metrics()).value_or_zero(
        "fastproxy_cluster_upstream_cx_total", cluster_name="InboundPassthroughCluster") == 1 and m,
        timeout=5, message="InboundPassthroughCluster used once")
    assert m.value("fastproxy_cluster_upstream_cx_tx_bytes_total", cluster_name="InboundPassthroughCluster") == 120_000
    assert m.value("fastproxy_listener_downstream_cx_total", listener_name="virtualInbound") == 1
