"""Issue 3, acceptance 3: an upgraded WebSocket echo through the HTTP path.
The handshake goes through the HTTP engine (101 with the right accept key),
then the connection is handed to the splice relay: frames go both ways
byte-exact and the relay's byte counters grow by what the frames carried."""
import base64
import os
import random

from tests.support.http_upstreams import (
    HttpUpstream, Reader, connect, read_response, start_http_proxy, ws_accept, ws_frame, ws_read_frame)
from tests.support.polling import poll_until

RELAY_BYTES = ("fastproxy_relay_spliced_bytes_total", "fastproxy_relay_copied_bytes_total")


def _relayed(metrics) -> float:
    return sum(metrics.value_or_zero(name) for name in RELAY_BYTES)


def _handshake(s, r, path="/_/ws", extra=b""):
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: svc.local\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
              + extra + b"\r\n")
    return key, read_response(r)


def test_websocket_echo_through_the_proxy_is_byte_exact_and_spliced(start_proxy):
    rng = random.Random(3)
    with HttpUpstream("backend") as up:
        proxy, port, _ = start_http_proxy(start_proxy, {"backend": up.address}, default_cluster="backend")
        before = _relayed(proxy.admin.metrics())
        sent_bytes = 0
        with connect("127.0.0.1", port, timeout=10) as s:
            r = Reader(s)
            key, resp = _handshake(s, r)
            assert resp is not None and resp.status == 101, resp
            assert resp.header("sec-websocket-accept").encode() == ws_accept(key), resp.raw_head
            assert (resp.header("upgrade") or "").lower() == "websocket", resp.raw_head
            assert "upgrade" in (resp.header("connection") or "").lower(), resp.raw_head
            for size in (0, 1, 125, 126, 127, 65535, 65536, 300_000, 2 << 20):
                payload = rng.randbytes(size)
                opcode = 0x2 if size % 2 else 0x1
                if opcode == 0x1:
                    payload = payload.hex().encode()[:size]
                frame = ws_frame(opcode, payload, mask=rng.randbytes(4))
                s.sendall(frame)
                sent_bytes += len(frame)
                fin, op, got, masked = ws_read_frame(r)
                assert fin and op == opcode and not masked and got == payload, (size, len(got))
            # ping -> pong, several frames in one write, then close
            s.sendall(ws_frame(0x9, b"are you there", mask=b"1234")
                      + ws_frame(0x2, b"a", mask=b"abcd") + ws_frame(0x2, b"b", mask=b"efgh"))
            assert ws_read_frame(r)[1:3] == (0xA, b"are you there")
            assert ws_read_frame(r)[1:3] == (0x2, b"a")
            assert ws_read_frame(r)[1:3] == (0x2, b"b")
            s.sendall(ws_frame(0x8, b"\x03\xe8bye", mask=b"wxyz"))
            assert ws_read_frame(r)[1:3] == (0x8, b"\x03\xe8bye")
            assert r.read_to_eof() == b""
        assert [rec["target"] for rec in up.records] == ["/_/ws"]
        # The hop-by-hop Upgrade/Connection of an upgrade are forwarded, as RFC 9110 §7.8 needs.
        seen = {k.lower(): v for k, v in up.records[0]["headers"]}
        assert seen.get("upgrade", "").lower() == "websocket", seen
        assert "upgrade" in seen.get("connection", "").lower(), seen
        # After the 101 the relay carries the frames: its counters grew by at least
        # the client's frames (the echo comes back the same size).
        poll_until(lambda: _relayed(proxy.admin.metrics()) - before >= 2 * sent_bytes * 0.9, timeout=5,
                   message=f"relay byte counters to grow by ~{2 * sent_bytes} after the upgrade")


def test_upgrade_refused_by_the_upstream_stays_http(start_proxy):
    """An Upgrade the upstream ignores (a plain 200) leaves the connection an
    HTTP/1.1 connection: the next request is parsed and routed."""
    with HttpUpstream("backend") as up:
        _, port, _ = start_http_proxy(start_proxy, {"backend": up.address}, default_cluster="backend")
        with connect("127.0.0.1", port, timeout=10) as s:
            r = Reader(s)
            _, resp = _handshake(s, r, path="/not-ws")
            assert resp.status == 200 and resp.json()["target"] == "/not-ws"
            s.sendall(b"GET /next HTTP/1.1\r\nHost: svc.local\r\n\r\n")
            nxt = read_response(r)
            assert nxt.status == 200 and nxt.json()["target"] == "/next"
