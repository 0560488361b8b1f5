"""Acceptance 4: 1,000 connections open at once through 2 workers, each
echo-verified while all are open; the active gauges return to 0."""
import resource

import pytest

from tests.support.echo_server import EchoServer
from tests.support.payload import small_payload
from tests.support.polling import poll_until
from tests.support.tcp_client import connect, recv_exactly
from tests.support.worker_sockets import client_port_owners

CONNECTIONS = 1000


@pytest.fixture
def enough_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * CONNECTIONS + 512  # clients + echo server ends + slack, this process
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_thousand_concurrent_connections(enough_fds, relay_to):
    with EchoServer() as echo:
        relay = relay_to(echo.address, workers=2)
        listener = {"listener_name": relay.name}
        cl = {"cluster_name": relay.cluster}
        socks = []
        try:
            for _ in range(CONNECTIONS):
                socks.append(connect("127.0.0.1", relay.port, timeout=20))
            payloads = [small_payload(i, 48) for i in range(CONNECTIONS)]
            for s, p in zip(socks, payloads):
                s.sendall(p)
            mismatched = [i for i, (s, p) in enumerate(zip(socks, payloads)) if recv_exactly(s, len(p)) != p]
            assert not mismatched, f"{len(mismatched)} connections echoed wrong bytes"

            # All 1,000 are open at the same time, end to end.
            assert echo.accepted == CONNECTIONS
            m = relay.admin.metrics()
            assert m.value("fastproxy_listener_downstream_cx_active", **listener) == CONNECTIONS
            assert m.value("fastproxy_cluster_upstream_cx_active", **cl) == CONNECTIONS
            assert m.value("fastproxy_listener_downstream_cx_total", **listener) == CONNECTIONS

            workers = relay.admin.workers()
            assert len(workers) == 2
            owners = client_port_owners([w["pid"] for w in workers], relay.port)
            mine = {s.getsockname()[1] for s in socks}
            per_worker = {w["pid"]: sum(1 for port in mine if owners.get(port) == w["pid"]) for w in workers}
            assert sum(per_worker.values()) == CONNECTIONS, per_worker
            assert all(n > 0 for n in per_worker.values()), f"one worker got nothing: {per_worker}"

            # A second round on every connection, still all open.
            for s, p in zip(socks, payloads):
                s.sendall(p[::-1])
            assert all(recv_exactly(s, len(p)) == p[::-1] for s, p in zip(socks, payloads))
        finally:
            for s in socks:
                s.close()

        def drained():
            m = relay.admin.metrics()
            return (m.value("fastproxy_listener_downstream_cx_active", **listener) == 0
                    and m.value("fastproxy_cluster_upstream_cx_active", **cl) == 0
                    and m)

        m = poll_until(drained, timeout=15, message="cx_active back to 0")
        assert m.value("fastproxy_listener_downstream_cx_destroy_total", **listener) == CONNECTIONS
        assert m.value("fastproxy_cluster_upstream_cx_destroy_total", **cl) == CONNECTIONS
        assert m.value("fastproxy_listener_downstream_cx_rx_bytes_total", **listener) == CONNECTIONS * 96
        assert m.value("fastproxy_listener_downstream_cx_tx_bytes_total", **listener) == CONNECTIONS * 96
