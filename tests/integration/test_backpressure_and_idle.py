"""Backpressure end to end (a stalled upstream stops the client, nothing is
buffered without bound) and the idle timeout."""
import socket
import time

from tests.support.payload import small_payload
from tests.support.polling import poll_until
from tests.support.tcp_client import connect, recv_exactly

TRY_BYTES = 192 << 20
BOUND = 80 << 20      # socket buffers may autotune (tcp_rmem max is 32 MiB here); a buffering proxy takes it all


def _stalled_upstream():
    """A listener whose accepted connection is not read until the test says so."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    return srv


def test_stalled_upstream_stops_the_client_then_every_byte_arrives(relay_to):
    with _stalled_upstream() as srv:
        relay = relay_to(f"127.0.0.1:{srv.getsockname()[1]}", workers=1)
        payload = small_payload(7, TRY_BYTES)
        with connect("127.0.0.1", relay.port, timeout=10) as c:
            up, _ = srv.accept()
            with up:
                c.setblocking(False)
                sent, deadline = 0, time.monotonic() + 3.0
                view = memoryview(payload)
                while sent < TRY_BYTES and time.monotonic() < deadline:
                    try:
                        sent += c.send(view[sent:sent + (1 << 20)])
                    except BlockingIOError:
                        time.sleep(0.01)
                # The proxy must not have soaked up the stream.
                assert 0 < sent < BOUND, f"client could send {sent} bytes into a stalled upstream"
                c.setblocking(True)
                c.shutdown(socket.SHUT_WR)
                up.settimeout(20)
                got = recv_exactly(up, sent)
                assert got == payload[:sent]
                assert up.recv(1) == b"", "the client's FIN was not relayed after the data"


def test_idle_connection_is_closed_and_an_active_one_is_not(relay_to, echo_server):
    relay = relay_to(echo_server.address, workers=1, idle_timeout_s=1)
    with connect("127.0.0.1", relay.port) as idle, connect("127.0.0.1", relay.port) as busy:
        for s in (idle, busy):
            s.sendall(b"hi")
            assert recv_exactly(s, 2) == b"hi"
        t0 = time.monotonic()
        idle.settimeout(5)
        closed_at = None
        while time.monotonic() - t0 < 5.0:
            busy.sendall(b"ping")
            assert recv_exactly(busy, 4) == b"ping"
            try:
                idle.setblocking(False)
                data = idle.recv(1)
                if data == b"":
                    closed_at = time.monotonic() - t0
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed_at = time.monotonic() - t0
                break
            time.sleep(0.2)
        assert closed_at is not None, "the idle connection was never closed"
        assert 0.9 <= closed_at <= 3.0, f"closed after {closed_at:.2f}s with idle_timeout_s=1"
        busy.sendall(b"still")
        assert recv_exactly(busy, 5) == b"still"
    poll_until(lambda: relay.admin.metrics().value("fastproxy_tcp_idle_timeouts_total") == 1,
               timeout=5, message="idle timeout counted once")
