"""Acceptance 8: graceful shutdown. SIGTERM turns readiness false, stops
accepting, lets in-flight connections finish within drain_seconds, exits 0
and removes its shared memory. Also /quitquitquit and /drain_listeners."""
import signal
import socket
import time

import pytest

from tests.support.echo_server import EchoServer
from tests.support.payload import small_payload
from tests.support.polling import poll_until
from tests.support.tcp_client import connect, echo_once, recv_until_eof, relays


def _not_ready(admin) -> bool:
    try:
        status, _ = admin.get("/ready", timeout=2)
    except OSError:
        return False
    return status == 503


@pytest.mark.slow
def test_sigterm_drains_in_flight_connection_then_exits_clean(relay_to):
    with EchoServer() as echo:
        relay = relay_to(echo.address, workers=2, drain_seconds=8)
        proxy = relay.proxy
        assert proxy.shm_segments(), "expected the proxy's segments in /dev/shm while it runs"
        with connect("127.0.0.1", relay.port, timeout=15) as s:
            first = small_payload(1, 1 << 20)
            assert echo_once(s, first) == first

            proxy.send_signal(signal.SIGTERM)
            poll_until(lambda: _not_ready(relay.admin), timeout=5, message="/ready -> 503 after SIGTERM")
            poll_until(lambda: not relays("127.0.0.1", relay.port, timeout=0.5), timeout=5,
                       message="listener to stop accepting new connections")

            # The in-flight connection keeps working during the drain.
            second = small_payload(2, 2 << 20)
            assert echo_once(s, second) == second
            assert proxy.running(), "proxy exited while a connection was still in flight"
            s.shutdown(socket.SHUT_WR)
            assert recv_until_eof(s) == b""
        rc = proxy.wait_exit(timeout=8 + 10)
    proxy.assert_clean_exit(rc)


@pytest.mark.slow
def test_drain_is_bounded_by_drain_seconds(relay_to):
    with EchoServer() as echo:
        relay = relay_to(echo.address, workers=1, drain_seconds=2)
        proxy = relay.proxy
        with connect("127.0.0.1", relay.port, timeout=15) as idle:
            assert echo_once(idle, b"hello") == b"hello"
            t0 = time.monotonic()
            proxy.send_signal(signal.SIGTERM)
            rc = proxy.wait_exit(timeout=2 + 10)
            elapsed = time.monotonic() - t0
            # The idle connection is closed by the exit, not kept forever.
            try:
                tail = idle.recv(1)
            except ConnectionResetError:
                tail = b""
            assert tail == b""
    proxy.assert_clean_exit(rc)
    assert elapsed >= 1.5, f"exited after {elapsed:.2f}s, before drain_seconds=2 with a connection open"
    assert elapsed < 2 + 5, f"drain took {elapsed:.2f}s, drain_seconds=2"


def test_sigterm_with_no_connections_exits_promptly(relay_to, echo_server):
    relay = relay_to(echo_server.address, drain_seconds=5)
    t0 = time.monotonic()
    relay.proxy.send_signal(signal.SIGTERM)
    rc = relay.proxy.wait_exit(timeout=15)
    relay.proxy.assert_clean_exit(rc)
    assert time.monotonic() - t0 < 5 + 3


def test_quitquitquit_exits_zero_and_cleans_shm(relay_to, echo_server):
    relay = relay_to(echo_server.address, drain_seconds=1)
    status, _ = relay.admin.post("/quitquitquit")
    assert status == 200
    rc = relay.proxy.wait_exit(timeout=15)
    # exit code 0, no /dev/shm/fastproxy-<pid>-*, and no worker outlives the manager
    relay.proxy.assert_clean_exit(rc)


def test_drain_listeners_stops_accepting_but_keeps_connections(relay_to, echo_server):
    relay = relay_to(echo_server.address, drain_seconds=5)
    with connect("127.0.0.1", relay.port) as held:
        assert echo_once(held, b"before") == b"before"
        status, _ = relay.admin.post("/drain_listeners")
        assert status == 200
        poll_until(lambda: _not_ready(relay.admin), timeout=5, message="/ready -> 503 after drain_listeners")
        poll_until(lambda: not relays("127.0.0.1", relay.port, timeout=0.5), timeout=5,
                   message="listener to stop accepting")
        assert echo_once(held, b"after") == b"after"
        assert relay.admin.get("/healthz")[0] == 200
