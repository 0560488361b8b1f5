"""Acceptance 3: an upstream reset reaches the client as a reset."""
import errno
import queue
import socket
import struct

import pytest

from tests.support.half_close_server import HalfCloseServer
from tests.support.polling import poll_until
from tests.support.reset_server import ResetServer
from tests.support.tcp_client import connect


def _recv_until_reset(sock, timeout: float = 5.0) -> bytes:
    """Reads until the connection ends; returns the bytes seen before a
    reset, and fails if it ends with a clean EOF instead."""
    sock.settimeout(timeout)
    seen = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError as exc:
            assert exc.errno == errno.ECONNRESET
            return bytes(seen)
        except TimeoutError:
            pytest.fail(f"neither reset nor EOF {timeout}s after the upstream reset "
                        f"({len(seen)} bytes seen): the connection was left hanging")
        if not chunk:
            pytest.fail(f"clean EOF (FIN) after {len(seen)} bytes; expected ECONNRESET")
        seen += chunk


def test_upstream_reset_reaches_client_as_reset(relay_to):
    with ResetServer() as server:
        relay = relay_to(server.address)
        with connect("127.0.0.1", relay.port) as s:
            s.sendall(b"please reset me")
            assert server.wait_reset(10), "upstream never got the bytes"
            _recv_until_reset(s)
    poll_until(lambda: relay.admin.metrics().value(
        "fastproxy_listener_downstream_cx_active", listener_name=relay.name) == 0,
        timeout=5, message="cx_active back to 0 after the reset")


def test_upstream_reset_after_data_still_resets_client(relay_to):
    """Bytes the upstream sent before its reset may or may not arrive (a
    reset discards unread data), but the end of the stream must be a reset,
    never a clean EOF that would make a truncated reply look complete, and
    never silence. Whether data and reset reach the proxy in one wakeup is
    timing, so the case is repeated."""
    with ResetServer(before_reset=b"partial-answer") as server:
        relay = relay_to(server.address, workers=1)
        for i in range(10):
            with connect("127.0.0.1", relay.port) as s:
                s.sendall(b"go")
                assert server.wait_reset(10)
                seen = _recv_until_reset(s)
                assert b"partial-answer".startswith(seen), (i, seen)


def test_every_reset_is_relayed_and_no_worker_dies(relay_to):
    with ResetServer() as server:
        relay = relay_to(server.address, workers=1)
        workers_before = [(w["id"], w["pid"]) for w in relay.admin.workers()]
        for _ in range(5):
            with connect("127.0.0.1", relay.port) as s:
                s.sendall(b"x")
                _recv_until_reset(s)
        # The server counts a reset just after it closes; wait for that count.
        assert server.wait_reset(5.0, count=5), f"server reset {server.resets} of 5"
    workers = relay.admin.workers()
    assert [(w["id"], w["pid"]) for w in workers] == workers_before
    assert all(w["restarts"] == 0 and w["alive"] for w in workers)
    m = relay.admin.metrics()
    assert m.value("fastproxy_listener_downstream_cx_total", listener_name=relay.name) == 5
    assert m.value("fastproxy_cluster_upstream_cx_total", cluster_name=relay.cluster) == 5


def test_client_reset_after_data_closes_the_upstream(relay_to):
    """The mirror image: the client sends bytes and resets at once. The
    upstream must see its connection end (Envoy closes it; FIN or RST are
    both fine), and the proxy must not keep counting it as active."""
    with HalfCloseServer("reply_after_eof") as server:
        relay = relay_to(server.address, workers=1)
        with connect("127.0.0.1", relay.port) as s:
            s.sendall(b"some bytes, then a reset")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            result = server.results.get(timeout=5)
        except queue.Empty:
            pytest.fail("upstream connection still open 5s after the client reset")
        assert result["received"] in (b"", b"some bytes, then a reset") or result["error"], result
    poll_until(lambda: relay.admin.metrics().value(
        "fastproxy_listener_downstream_cx_active", listener_name=relay.name) == 0,
        timeout=5, message="cx_active back to 0 after the client reset")
