"""Explicit-listener relaying beyond the acceptance list: round-robin over
endpoints, connect failures, and the counters that describe both."""
import socket
import time

from tests.support.echo_server import EchoServer
from tests.support.polling import poll_until
from tests.support.ports import free_port
from tests.support.proxy_config import cluster, hermetic_settings, proxy_config, tcp_listener
from tests.support.tcp_client import bytes_before_close, short_echo


def test_endpoints_are_chosen_round_robin(start_proxy):
    with EchoServer(tag=b"1|") as e1, EchoServer(tag=b"2|") as e2, EchoServer(tag=b"3|") as e3:
        port = free_port()
        doc = proxy_config(hermetic_settings(workers=1), [tcp_listener("tcp", port, "rr")],
                           [cluster("rr", e1.address, e2.address, e3.address)])
        start_proxy(doc)
        tags = [short_echo("127.0.0.1", port, b"x")[:2] for _ in range(9)]
    # One worker, so one round-robin cursor: a rotation of 1,2,3 repeated.
    assert sorted(tags[:3]) == [b"1|", b"2|", b"3|"], tags
    assert tags[3:6] == tags[:3] and tags[6:9] == tags[:3], tags


def test_round_robin_spreads_evenly_over_workers(start_proxy):
    with EchoServer(tag=b"1|") as e1, EchoServer(tag=b"2|") as e2:
        port = free_port()
        doc = proxy_config(hermetic_settings(workers=2), [tcp_listener("tcp", port, "rr")],
                           [cluster("rr", e1.address, e2.address)])
        start_proxy(doc)
        for _ in range(40):
            short_echo("127.0.0.1", port, b"x")
        # Each worker alternates on its own, so the split is within one per worker.
        assert abs(e1.accepted - e2.accepted) <= 2, (e1.accepted, e2.accepted)


def test_connect_failure_closes_client_and_counts(relay_to):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    relay = relay_to(dead, workers=1)
    assert bytes_before_close("127.0.0.1", relay.port, b"anyone?") == b""
    m = poll_until(lambda: (m := relay.admin.metrics()).value(
        "fastproxy_cluster_upstream_cx_connect_fail_total", cluster_name=relay.cluster) == 1 and m,
        timeout=5, message="connect_fail_total == 1")
    assert m.value("fastproxy_listener_downstream_cx_active", listener_name=relay.name) == 0
    assert m.value("fastproxy_cluster_upstream_cx_active", cluster_name=relay.cluster) == 0


def test_cluster_connect_timeout_overrides_the_global_one(start_proxy):
    """The upstream is a loopback listener whose accept queue is full, so
    the kernel drops further SYNs and the proxy's connect never completes.
    The cluster's connect_timeout_ms (300) must apply, not the global 2000."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(0)
    fillers = []
    try:
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(blocker.getsockname())
            fillers.append(f)
        port = free_port()
        doc = proxy_config(hermetic_settings(workers=1, connect_timeout_ms=2000),
                           [tcp_listener("tcp", port, "slow")],
                           [cluster("slow", "127.0.0.1:%d" % blocker.getsockname()[1], connect_timeout_ms=300)])
        proxy = start_proxy(doc)
        t0 = time.monotonic()
        assert bytes_before_close("127.0.0.1", port, b"hello", timeout=10) == b""
        elapsed = time.monotonic() - t0
        assert 0.2 <= elapsed < 1.5, f"client closed after {elapsed:.2f}s, cluster connect_timeout_ms=300"
        poll_until(lambda: proxy.admin.metrics().value(
            "fastproxy_cluster_upstream_cx_connect_fail_total", cluster_name="slow") == 1,
            timeout=5, message="connect_fail_total == 1")
    finally:
        for f in fillers:
            f.close()
        blocker.close()
