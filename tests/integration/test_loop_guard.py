"""Acceptance 10: a capture listener refuses a connection whose original
destination is one of the proxy's own listeners, so traffic cannot loop.

Without NAT the original destination of a connection is the address it was
sent to: connecting straight to the OUTBOUND capture listener makes the
proxy's own listener the original destination."""
import socket

import pytest

from tests.support.polling import poll_until
from tests.support.ports import free_port
from tests.support.proxy_config import (
    capture_listener, hermetic_settings, proxy_config)
from tests.support.tcp_client import bytes_before_close


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _refused(host: str, port: int) -> None:
    """The proxy closes the connection without relaying anything."""
    data = bytes_before_close(host, port, b"hello, is this a loop?")
    assert data == b"", f"capture listener relayed {data!r}"


def _capture_proxy(start_proxy, port, policy="ALLOW_ANY", v6=False):
    listener = capture_listener("virtualOutbound", f"127.0.0.1:{port}", "OUTBOUND",
                                additional=[f"[::1]:{port}"] if v6 else None)
    doc = proxy_config(hermetic_settings(workers=2, outbound_traffic_policy=policy), [listener], [])
    return start_proxy(doc)


@pytest.mark.parametrize("policy", ["ALLOW_ANY", "REGISTRY_ONLY"])
def test_direct_connection_to_capture_listener_is_refused_as_loop(start_proxy, policy):
    port = free_port()
    proxy = _capture_proxy(start_proxy, port, policy)
    before = proxy.admin.metrics()
    passthrough_before = before.value_or_zero("fastproxy_cluster_upstream_cx_total", cluster_name="PassthroughCluster")

    for _ in range(3):
        _refused("127.0.0.1", port)

    m = poll_until(lambda: (m := proxy.admin.metrics()).value_or_zero(
        "fastproxy_listener_downstream_cx_refused_total", listener_name="virtualOutbound", reason="loop") == 3 and m,
        timeout=5, message="refused_total{reason=loop} == 3")
    assert m.value_or_zero("fastproxy_listener_downstream_cx_refused_total",
                           listener_name="virtualOutbound", reason="no_route") == 0
    assert m.value_or_zero("fastproxy_cluster_upstream_cx_total", cluster_name="PassthroughCluster") == passthrough_before
    assert m.value("fastproxy_listener_downstream_cx_active", listener_name="virtualOutbound") == 0
    assert all(w["alive"] and w["restarts"] == 0 for w in proxy.admin.workers())


def test_direct_ipv6_connection_to_capture_listener_is_refused_as_loop(start_proxy):
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) in this environment")
    port = free_port()
    proxy = _capture_proxy(start_proxy, port, v6=True)
    _refused("::1", port)
    _refused("127.0.0.1", port)
    poll_until(lambda: proxy.admin.metrics().value_or_zero(
        "fastproxy_listener_downstream_cx_refused_total", listener_name="virtualOutbound", reason="loop") == 2,
        timeout=5, message="refused_total{reason=loop} == 2 (one per family)")


def test_wildcard_capture_listener_recognises_itself(start_proxy):
    """Istio binds the capture listener to 0.0.0.0:15001; a connection sent
    to 127.0.0.1:15001 has that port's wildcard listener as its original
    destination and must be refused too (we only connect via loopback)."""
    port = free_port()
    doc = proxy_config(hermetic_settings(workers=1),
                       [capture_listener("virtualOutbound", f"0.0.0.0:{port}")], [])
    proxy = start_proxy(doc)
    _refused("127.0.0.1", port)
    poll_until(lambda: proxy.admin.metrics().value_or_zero(
        "fastproxy_listener_downstream_cx_refused_total", listener_name="virtualOutbound", reason="loop") == 1,
        timeout=5, message="refused_total{reason=loop} == 1")
