"""Acceptance 2: TCP half-close is relayed in each direction."""
import socket

from tests.support.half_close_server import HalfCloseServer
from tests.support.payload import small_payload
from tests.support.polling import poll_until
from tests.support.tcp_client import connect, recv_exactly, recv_until_eof


def test_client_shutdown_write_still_receives_everything(relay_to):
    request = small_payload(1, 3 << 20)
    reply = small_payload(2, 5 << 20)
    with HalfCloseServer("reply_after_eof", reply=reply) as server:
        relay = relay_to(server.address)
        with connect("127.0.0.1", relay.port, timeout=20) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            # The upstream replies only after it saw our EOF, so this proves
            # the FIN was relayed as a half-close and the way back stayed open.
            got = recv_until_eof(s)
        result = server.results.get(timeout=20)
    assert result["error"] is None, result
    assert result["received"] == request
    assert len(got) == len(reply) and got == reply


def test_upstream_shutdown_write_gives_eof_and_client_can_still_send(relay_to):
    greeting = small_payload(3, 2 << 20)
    request = small_payload(4, 3 << 20)
    with HalfCloseServer("shut_then_read", greeting=greeting) as server:
        relay = relay_to(server.address)
        with connect("127.0.0.1", relay.port, timeout=20) as s:
            got = recv_until_eof(s)
            assert got == greeting
            # After EOF from the upstream the client's direction is still open.
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            assert recv_until_eof(s) == b""
        result = server.results.get(timeout=20)
    assert result["error"] is None, result
    assert result["received"] == request
    m = poll_until(lambda: (m := relay.admin.metrics()).value(
        "fastproxy_listener_downstream_cx_active", listener_name=relay.name) == 0 and m,
        timeout=5, message="cx_active back to 0 after both directions closed")
    assert m.value("fastproxy_listener_downstream_cx_rx_bytes_total", listener_name=relay.name) == len(request)
    assert m.value("fastproxy_listener_downstream_cx_tx_bytes_total", listener_name=relay.name) == len(greeting)


def test_half_closed_connection_stays_open_until_the_other_side_finishes(relay_to):
    """Upstream has shut down its write side; the client keeps sending in
    several bursts with pauses, and every burst still arrives."""
    with HalfCloseServer("shut_then_read", greeting=b"bye") as server:
        relay = relay_to(server.address)
        with connect("127.0.0.1", relay.port, timeout=20) as s:
            assert recv_exactly(s, 3) == b"bye"
            assert s.recv(1) == b""
            bursts = [small_payload(10 + i, 200_000) for i in range(5)]
            for i, burst in enumerate(bursts):
                s.sendall(burst)
                poll_until(lambda n=sum(map(len, bursts[:i + 1])): relay.admin.metrics().value(
                    "fastproxy_cluster_upstream_cx_tx_bytes_total", cluster_name=relay.cluster) == n,
                    timeout=5, message=f"burst {i} delivered upstream")
            s.shutdown(socket.SHUT_WR)
            assert recv_until_eof(s) == b""
        result = server.results.get(timeout=20)
    assert result["error"] is None, result
    assert result["received"] == b"".join(bursts)
