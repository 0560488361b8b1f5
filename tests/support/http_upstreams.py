"""Real HTTP/1.1 upstreams for the end-to-end tests of the HTTP path, written
on plain sockets and threads (one thread per connection), plus the client
side pieces the tests share: a buffered socket reader, a response reader
that frames bodies as RFC 9112 says, and WebSocket framing.

HttpUpstream(name) serves keep-alive HTTP/1.1 on 127.0.0.1:0 (or the
addresses given). It counts connections and requests and keeps one record
per request (see _Exchange.record). Any path not listed below is answered by
the echo handler: a JSON document describing the request as received,
including its raw head (to check header case, order and hop-by-hop removal)
and its body's length and SHA-256 (the body itself when small, and for a
chunked body the raw wire bytes, to check the proxy's re-framing).

Special paths (query parameters in brackets):
    /_/stream?n=N&seed=S        Content-Length N, payload.stream_chunks(N, S)
    /_/chunked?n=N&seed=S&size=K[&ext=1][&trailer=T]   the same bytes, chunked
                                in K-byte chunks (with a chunk extension on each,
                                and a trailer field line T)
    /_/status?code=C            status C (204, 304, ...), no body for 1xx/204/304
    /_/head                     Content-Length 1234 and, unless HEAD, 1234 bytes
    /_/close-before-response    reads the request, closes without answering
    /_/reset-before-response    reads the request, resets (SO_LINGER 0)
    /_/truncate?n=N&sent=K[&reset=1]  announces N bytes, sends K, closes (or resets)
    /_/stall?n=N&sent=K         announces N bytes, sends K, then sends nothing more
                                (until stop, peer EOF or 30 s) and keeps the connection open
    /_/drip?n=N&every_ms=M      Content-Length N, one byte every M milliseconds
    /_/hang                     reads the request, never answers (until stop or peer EOF)
    /_/delay?ms=M               echo after M milliseconds
    /_/bad-response?kind=K      an invalid response head (see BAD_RESPONSES)
    /_/conn-close               echo with `Connection: close`, then closes
    /_/http10                   echo as an HTTP/1.0 response (close-delimited)
    /_/ws                       WebSocket (RFC 6455) echo: 101, then every
                                data frame back unmasked, ping -> pong, close -> close

Any path: ?rh=Name:value (repeatable) adds that field to the response head.

Server-wide options: `idle_close_ms` closes a keep-alive connection that
stays idle that long after a response (to provoke the keep-alive race);
`send_continue` answers `Expect: 100-continue` with 100 before reading the
body (on by default); `drop_after` N closes a connection without a byte of
response when request N+1 arrives on it (a pooled connection the upstream
gave up on: the deterministic keep-alive race).

Misbehaviour switches (plain attributes, safe to flip while it serves, to
make an endpoint flap): `fail_with` answers every request (after reading
it) with that status when an int, or resets ("reset"), closes ("close")
or never answers ("hang", as /_/hang); `health_status`, when set, is the
status of every request for `health_path` (default /healthz), which is
otherwise served as any path (so a health check can fail while traffic
succeeds, or the reverse); `delay_ms` waits that long before serving any
request but the health path. The server keeps a gauge of requests in flight (`in_flight`,
from a head read to the first byte of its answer or the end of its
connection) and its high-water mark `max_in_flight` (reset_max_in_flight()).

Run as a script (`python -m tests.support.http_upstreams --listen H:P --name N`)
for an upstream in its own process (its own GIL, for the 1 GiB transfers) or
in another network namespace; it prints {"listening": [...]} first, then one
JSON line per request record (without body bytes).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

if __package__ in (None, ""):  # run by path: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.payload import stream_chunks  # noqa: E402

CRLF = b"\r\n"
MAX_HEAD = 256 * 1024
KEEP_BODY = 64 * 1024          # bodies up to this size are kept in the record
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

BAD_RESPONSES = {
    "garbage": b"this is not http\r\n\r\n",
    "status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "header": b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n",
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
}


# ---- socket reading ---------------------------------------------------------

class Reader:
    """Buffered reads over a socket, keeping what was read beyond a request."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def _fill(self, want: int = 65536) -> bool:
        if self.eof:
            return False
        data = self.sock.recv(max(want, 65536))
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, marker: bytes, limit: int = MAX_HEAD) -> bytes | None:
        """Bytes up to and including `marker`; None on EOF before it (with
        nothing, or with a partial head left in self.buf)."""
        start = 0
        while True:
            i = self.buf.find(marker, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(marker)])
                del self.buf[:i + len(marker)]
                return out
            if len(self.buf) > limit:
                raise ValueError(f"no {marker!r} within {limit} bytes")
            start = max(0, len(self.buf) - len(marker) + 1)
            if not self._fill():
                return None

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill(n - len(self.buf)):
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_some(self, n: int) -> bytes:
        """Up to n bytes (at least 1), b"" at EOF."""
        if not self.buf and not self._fill(n):
            return b""
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self, limit: int = 64 << 20) -> bytes:
        while self._fill():
            if len(self.buf) > limit:
                raise AssertionError(f"more than {limit} bytes without EOF")
        out = bytes(self.buf)
        self.buf.clear()
        return out


def parse_head(head: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """(start line split on spaces into at most 3 parts, [(name, value)])
    of a head ending in CRLF CRLF. Names keep their case; values are stripped."""
    lines = head[:-4].split(CRLF)
    start = lines[0].split(b" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return start, headers


def header_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {t.strip().lower() for v in header_values(headers, b"connection") for t in v.split(b",")}


def iter_chunked(reader: Reader, raw: bytearray | None = None, raw_limit: int = KEEP_BODY):
    """Yields the data of a chunked body; the wire bytes go into `raw` (up to
    raw_limit). Trailers are read and dropped."""
    def keep(b):
        if raw is not None and len(raw) < raw_limit:
            raw.extend(b[:raw_limit - len(raw)])

    while True:
        line = reader.read_until(CRLF, 4096)
        if line is None:
            raise EOFError("EOF in a chunk size line")
        keep(line)
        size = int(line[:-2].split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:
                trailer = reader.read_until(CRLF, 65536)
                if trailer is None:
                    raise EOFError("EOF in the trailers")
                keep(trailer)
                if trailer == CRLF:
                    return
        left = size
        while left:
            data = reader.read_some(min(left, 1 << 20))
            if not data:
                raise EOFError("EOF in a chunk")
            keep(data)
            left -= len(data)
            yield data
        end = reader.read_exact(2)
        keep(end)
        if end != CRLF:
            raise ValueError(f"chunk not followed by CRLF: {end!r}")


# ---- responses (client side) -------------------------------------------------

@dataclass
class Response:
    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw_head: bytes
    informational: list["Response"] = field(default_factory=list)
    complete: bool = True          # the body ended by its framing (or the EOF it is delimited by)
    chunked_raw: bytes = b""

    def header(self, name: str) -> str | None:
        values = header_values(self.headers, name.encode())
        return values[0].decode("latin-1") if values else None

    def json(self):
        return json.loads(self.body)


def read_response(reader: Reader, method: str = "GET", keep_1xx: bool = False,
                  body_limit: int = 64 << 20) -> Response | None:
    """One response from `reader`, 1xx heads included in .informational (or
    returned on their own with keep_1xx). None when the connection ended
    before any byte of a head. A body cut short (EOF or reset before its
    framing ended) gives complete=False."""
    informational = []
    while True:
        head = reader.read_until(CRLF + CRLF)
        if head is None:
            if reader.buf:
                raise EOFError(f"EOF inside a response head: {bytes(reader.buf[:200])!r}")
            return None
        start, headers = parse_head(head)
        version, status = start[0], int(start[1])
        reason = start[2] if len(start) > 2 else b""
        if 100 <= status < 200 and status != 101:
            r = Response(status, reason, version, headers, b"", head)
            if keep_1xx:
                return r
            informational.append(r)
            continue
        break
    resp = Response(status, reason, version, headers, b"", head, informational)
    if method == "HEAD" or status in (204, 304) or status == 101 or (method == "CONNECT" and 200 <= status < 300):
        return resp
    te = b",".join(header_values(headers, b"transfer-encoding")).lower()
    cl = header_values(headers, b"content-length")
    try:
        if te.split(b",")[-1].strip() == b"chunked":
            raw = bytearray()
            body = bytearray()
            for data in iter_chunked(reader, raw, body_limit):
                body += data
                if len(body) > body_limit:
                    raise AssertionError("response body over the limit")
            resp.body, resp.chunked_raw = bytes(body), bytes(raw)
        elif cl:
            resp.body = reader.read_exact(int(cl[0]))
        else:
            resp.body = reader.read_to_eof(body_limit)
    except (EOFError, ConnectionResetError) as exc:
        resp.body = bytes(reader.buf)
        reader.buf.clear()
        resp.complete = False
        resp.reason = resp.reason + f" [cut: {type(exc).__name__}]".encode()
    return resp


def connect(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def exchange(port: int, request: bytes, method: str = "GET", host: str = "127.0.0.1",
             timeout: float = 10.0) -> Response | None:
    """One raw request on a fresh connection, its response (or None when the
    connection closed without one)."""
    with connect(host, port, timeout) as s:
        s.sendall(request)
        try:
            return read_response(Reader(s), method)
        except ConnectionResetError:
            return None


def get(port: int, path: str = "/", host_header: str = "test.local", headers: dict | None = None,
        method: str = "GET", body: bytes | None = None, timeout: float = 10.0) -> Response | None:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host_header}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    return exchange(port, raw, method, timeout=timeout)


# ---- WebSocket framing (RFC 6455 §5) --------------------------------------------

def ws_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def ws_frame(opcode: int, payload: bytes, mask: bytes | None = None, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mbit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + ws_mask(payload, mask)


def ws_mask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def ws_read_frame(reader: Reader) -> tuple[bool, int, bytes, bool]:
    """(fin, opcode, payload unmasked, was_masked)."""
    b0, b1 = reader.read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", reader.read_exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", reader.read_exact(8))[0]
    mask = reader.read_exact(4) if b1 & 0x80 else None
    payload = reader.read_exact(n)
    if mask is not None:
        payload = ws_mask(payload, mask)
    return bool(b0 & 0x80), b0 & 0x0F, payload, mask is not None


# ---- the upstream server -------------------------------------------------------

class _Exchange:
    """One request as the upstream received it."""

    def __init__(self, server: "HttpUpstream", conn_id: int, seq: int, head: bytes, peer):
        start, self.headers = parse_head(head)
        self.server = server
        self.head = head
        self.method = start[0]
        self.target = start[1] if len(start) > 1 else b""
        self.version = start[2] if len(start) > 2 else b""
        self.conn_id = conn_id
        self.seq = seq
        self.peer = peer
        split = urlsplit(self.target.decode("latin-1"))
        self.path = split.path
        self.query_all = parse_qs(split.query)
        self.query = {k: v[0] for k, v in self.query_all.items()}
        self.body_len = 0
        self.body_sha = hashlib.sha256()
        self.body = bytearray()
        self.body_raw = bytearray()
        self.body_read = False
        self.continue_sent = False
        self.settled = False       # counted out of the server's in-flight gauge

    def header(self, name: bytes) -> bytes | None:
        values = header_values(self.headers, name)
        return values[0] if values else None

    def chunked(self) -> bool:
        te = b",".join(header_values(self.headers, b"transfer-encoding")).lower()
        return bool(te) and te.split(b",")[-1].strip() == b"chunked"

    def keep_alive(self) -> bool:
        tokens = connection_tokens(self.headers)
        if b"close" in tokens:
            return False
        if self.version == b"HTTP/1.0":
            return b"keep-alive" in tokens
        return True

    def iter_body(self, reader: Reader):
        """The request body, streamed (hashed and, when small, kept)."""
        if self.body_read:
            return
        self.body_read = True
        if self.chunked():
            source = iter_chunked(reader, self.body_raw)
        else:
            cl = self.header(b"content-length")
            source = _iter_exact(reader, int(cl) if cl is not None else 0)
        for data in source:
            self.body_len += len(data)
            self.body_sha.update(data)
            if len(self.body) < KEEP_BODY:
                self.body += data[:KEEP_BODY - len(self.body)]
            yield data

    def read_body(self, reader: Reader) -> None:
        for _ in self.iter_body(reader):
            pass

    def record(self) -> dict:
        return {
            "server": self.server.name, "conn": self.conn_id, "seq": self.seq,
            "peer": list(self.peer[:2]) if self.peer else None,
            "method": self.method.decode("latin-1"), "target": self.target.decode("latin-1"),
            "version": self.version.decode("latin-1"),
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
            "raw_head": self.head.decode("latin-1"),
            "body_len": self.body_len, "body_sha256": self.body_sha.hexdigest(),
            "body": self.body.decode("latin-1") if self.body_len <= KEEP_BODY else None,
            "body_raw": self.body_raw.decode("latin-1") if self.body_raw else None,
            "continue_sent": self.continue_sent,
        }


def _iter_exact(reader: Reader, n: int):
    left = n
    while left:
        data = reader.read_some(min(left, 1 << 20))
        if not data:
            raise EOFError(f"EOF with {left} of {n} body bytes missing")
        left -= len(data)
        yield data


class _Close(Exception):
    """Ends the connection (the handler already did what it meant to)."""


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def response_bytes(status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b"",
                   version: str = "HTTP/1.1", content_length: bool = True) -> bytes:
    lines = [f"{version} {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class HttpUpstream:
    """A threaded keep-alive HTTP/1.1 server. See the module docstring."""

    def __init__(self, name: str = "up", listen: list[tuple[str, int]] | None = None,
                 idle_close_ms: int | None = None, send_continue: bool = True,
                 drop_after: int | None = None, on_record=None, fail_with: int | str | None = None,
                 health_status: int | None = None, health_path: str = "/healthz", delay_ms: int = 0):
        self.name = name
        self.fail_with = fail_with
        self.health_status = health_status
        self.health_path = health_path
        self.delay_ms = delay_ms
        self.in_flight = 0
        self.max_in_flight = 0
        self.drop_after = drop_after
        self.idle_close_ms = idle_close_ms
        self.send_continue = send_continue
        self.on_record = on_record
        self.listeners = []
        for host, port in listen or [("127.0.0.1", 0)]:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            ls = socket.socket(family, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            ls.bind((host, port))
            ls.listen(1024)
            self.listeners.append(ls)
        self.lock = threading.Condition()
        self.connections = 0
        self.requests = 0
        self.records: list[dict] = []
        self.dropped = 0
        self.raw_received: list[bytearray] = []   # per connection, first 64 KiB of wire bytes
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # lifecycle
    @property
    def port(self) -> int:
        return self.listeners[0].getsockname()[1]

    @property
    def address(self) -> str:
        host, port = self.listeners[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> "HttpUpstream":
        for ls in self.listeners:
            t = threading.Thread(target=self._accept_loop, args=(ls,), daemon=True,
                                 name=f"http-{self.name}-accept")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping = True
        for ls in self.listeners:
            try:
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(timeout=10)

    def __enter__(self) -> "HttpUpstream":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # observation
    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.connections, self.requests

    def reset_max_in_flight(self) -> None:
        with self.lock:
            self.max_in_flight = self.in_flight

    def wait_requests(self, count: int, timeout: float = 10.0) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: self.requests >= count, timeout)

    def records_since(self, index: int) -> list[dict]:
        with self.lock:
            return list(self.records[index:])

    def raw_bytes_received(self) -> bytes:
        with self.lock:
            return b"".join(bytes(b) for b in self.raw_received)

    # serving
    def _accept_loop(self, ls: socket.socket) -> None:
        while not self._stopping:
            try:
                sock, peer = ls.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                conn_id = self.connections
                self._socks.add(sock)
            t = threading.Thread(target=self._serve, args=(sock, peer, conn_id), daemon=True,
                                 name=f"http-{self.name}-{conn_id}")
            t.start()
            with self.lock:
                self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _serve(self, sock: socket.socket, peer, conn_id: int) -> None:
        raw = bytearray()
        with self.lock:
            self.raw_received.append(raw)
        reader = _RecordingReader(sock, raw)
        sock.settimeout(60)
        try:
            seq = 0
            ex = None
            while not self._stopping:
                if self.idle_close_ms is not None and seq > 0 and not reader.buf:
                    sock.settimeout(self.idle_close_ms / 1000)
                    try:
                        if not reader._fill():
                            return
                    except socket.timeout:
                        return          # idle too long: close (the keep-alive race)
                    sock.settimeout(60)
                head = reader.read_until(CRLF + CRLF)
                if head is None:
                    return
                seq += 1
                ex = _Exchange(self, conn_id, seq, head, peer)
                with self.lock:
                    self.requests += 1
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                    if self.drop_after is not None and seq > self.drop_after:
                        self.dropped += 1
                        self._settle(ex)
                        return      # read a request on a reused connection, close without a byte
                keep = self._handle(sock, reader, ex)
                self._settle(ex)
                if not keep:
                    return
        except _Close:
            return
        except (OSError, EOFError, ValueError):
            return
        finally:
            with self.lock:
                self._socks.discard(sock)
                if ex is not None:
                    self._settle(ex)
            try:
                sock.close()
            except OSError:
                pass

    def _settle(self, ex: _Exchange) -> None:
        """Counts `ex` out of the in-flight gauge, once (caller may hold the lock:
        it is a Condition over an RLock)."""
        with self.lock:
            if not ex.settled:
                ex.settled = True
                self.in_flight -= 1

    def _finish(self, ex: _Exchange, settle: bool = True) -> dict:
        rec = ex.record()
        with self.lock:
            # Out of flight before the first byte of the answer: whoever waits
            # for that answer (a proxy's breaker) can only start another
            # request after this, so the gauge never over-counts.
            if settle:
                self._settle(ex)
            self.records.append(rec)
            self.lock.notify_all()
        if self.on_record:
            self.on_record(rec)
        return rec

    def _continue(self, sock: socket.socket, ex: _Exchange) -> None:
        expect = (ex.header(b"expect") or b"").lower()
        if expect == b"100-continue" and self.send_continue and ex.version == b"HTTP/1.1":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            ex.continue_sent = True

    def _handle(self, sock: socket.socket, reader: Reader, ex: _Exchange) -> bool:
        """Serves one request; returns whether the connection stays open."""
        path = ex.path
        q = ex.query
        name_hdr = [("X-Upstream", self.name), ("X-Upstream-Conn", str(ex.conn_id))]
        for extra in ex.query_all.get("rh", []):       # ?rh=Name:value adds a response header
            k, _, v = extra.partition(":")
            name_hdr.append((k, v.strip()))
        keep = ex.keep_alive()
        conn_hdr = [] if keep else [("Connection", "close")]
        if ex.version == b"HTTP/1.0" and keep:
            conn_hdr = [("Connection", "keep-alive")]

        if path == self.health_path and self.health_status is not None:
            ex.read_body(reader)
            self._finish(ex)
            sock.sendall(response_bytes(self.health_status, "Health", name_hdr + conn_hdr,
                                        f"health {self.health_status}\n".encode()))
            return keep
        if self.delay_ms and path != self.health_path:
            time.sleep(self.delay_ms / 1000)
        fail = self.fail_with
        if fail is not None:
            self._continue(sock, ex)
            ex.read_body(reader)
            self._finish(ex, settle=fail != "hang")
            if fail == "reset":
                _reset(sock)
                raise _Close()
            if fail == "close":
                raise _Close()
            if fail == "hang":
                self._linger(sock)
                raise _Close()
            sock.sendall(response_bytes(int(fail), "Failing", name_hdr + conn_hdr, f"failing {fail}\n".encode()))
            return keep
        if path == "/_/ws" and b"websocket" in (ex.header(b"upgrade") or b"").lower():
            self._finish(ex)
            self._websocket(sock, reader, ex)
            raise _Close()
        if path == "/_/close-before-response":
            ex.read_body(reader)
            self._finish(ex)
            raise _Close()
        if path == "/_/reset-before-response":
            ex.read_body(reader)
            self._finish(ex)
            _reset(sock)
            raise _Close()
        if path == "/_/hang":
            ex.read_body(reader)
            self._finish(ex, settle=False)
            self._linger(sock)
            raise _Close()
        if path == "/_/stall":
            ex.read_body(reader)
            self._finish(ex)
            n, sent = int(q.get("n", "100000")), int(q.get("sent", "1000"))
            sock.sendall(response_bytes(200, "OK", name_hdr + [("Content-Length", str(n))], content_length=False)
                         + b"s" * sent)
            self._linger(sock)
            raise _Close()
        if path == "/_/drip":
            ex.read_body(reader)
            self._finish(ex)
            n, every = int(q.get("n", "10")), int(q.get("every_ms", "100"))
            sock.sendall(response_bytes(200, "OK", name_hdr + conn_hdr + [("Content-Length", str(n))],
                                        content_length=False))
            for _ in range(n):
                time.sleep(every / 1000)
                sock.sendall(b"d")
            return keep

        self._continue(sock, ex)
        if path == "/_/delay":
            time.sleep(int(q.get("ms", "100")) / 1000)
        ex.read_body(reader)
        self._finish(ex)

        if path == "/_/stream":
            n, seed = int(q.get("n", "0")), int(q.get("seed", "1"))
            sock.sendall(response_bytes(200, "OK", name_hdr + conn_hdr + [("Content-Length", str(n))],
                                        content_length=False))
            if ex.method != b"HEAD":
                for chunk in stream_chunks(n, seed):
                    sock.sendall(chunk)
            return keep
        if path == "/_/chunked":
            n, seed, size = int(q.get("n", "0")), int(q.get("seed", "1")), int(q.get("size", "1000"))
            sock.sendall(response_bytes(200, "OK", name_hdr + conn_hdr + [("Transfer-Encoding", "chunked")],
                                        content_length=False))
            if ex.method == b"HEAD":
                return keep
            ext = b";ext=\"x y\"" if q.get("ext") else b""
            pending = bytearray()
            for chunk in stream_chunks(n, seed):
                pending += chunk
                while len(pending) >= size:
                    sock.sendall(b"%x%s\r\n" % (size, ext) + bytes(pending[:size]) + CRLF)
                    del pending[:size]
            if pending:
                sock.sendall(b"%x%s\r\n" % (len(pending), ext) + bytes(pending) + CRLF)
            trailer = q.get("trailer")
            sock.sendall(b"0\r\n" + (f"{trailer}\r\n".encode() if trailer else b"") + CRLF)
            return keep
        if path == "/_/status":
            code = int(q.get("code", "200"))
            hdrs = name_hdr + conn_hdr
            if code == 304:
                hdrs = hdrs + [("ETag", '"v1"')]
                sock.sendall(response_bytes(code, "Not Modified", hdrs, content_length=False))
            elif code == 204:
                sock.sendall(response_bytes(code, "No Content", hdrs, content_length=False))
            else:
                sock.sendall(response_bytes(code, "Status", hdrs, f"status {code}\n".encode()))
            return keep
        if path == "/_/head":
            body = b"h" * 1234
            sock.sendall(response_bytes(200, "OK", name_hdr + conn_hdr + [("Content-Length", "1234")],
                                        b"" if ex.method == b"HEAD" else body, content_length=False))
            return keep
        if path == "/_/truncate":
            n, sent = int(q.get("n", "100000")), int(q.get("sent", "1000"))
            head = response_bytes(200, "OK", name_hdr + [("Content-Length", str(n))], content_length=False)
            sock.sendall(head + b"t" * sent)
            time.sleep(0.05)
            if q.get("reset"):
                _reset(sock)
            raise _Close()
        if path == "/_/bad-response":
            sock.sendall(BAD_RESPONSES[q.get("kind", "garbage")])
            time.sleep(0.05)
            raise _Close()

        # echo (also /_/conn-close, /_/http10, /_/delay)
        body = json.dumps(ex.record()).encode()
        json_hdr = [("Content-Type", "application/json")]
        if path == "/_/conn-close":
            sock.sendall(response_bytes(200, "OK", name_hdr + [("Connection", "close")] + json_hdr, body))
            raise _Close()
        if path == "/_/http10":
            sock.sendall(response_bytes(200, "OK", name_hdr + json_hdr, body,
                                        version="HTTP/1.0", content_length=False))
            raise _Close()
        if ex.method == b"HEAD":
            sock.sendall(response_bytes(200, "OK", name_hdr + conn_hdr + json_hdr
                                        + [("Content-Length", str(len(body)))], content_length=False))
        else:
            sock.sendall(response_bytes(200, "OK", name_hdr + conn_hdr + json_hdr, body))
        return keep

    def _linger(self, sock: socket.socket) -> None:
        """Sends nothing more until stop, the peer's EOF or 30 s."""
        deadline = time.monotonic() + 30
        while not self._stopping and time.monotonic() < deadline:
            sock.settimeout(0.2)
            try:
                if not sock.recv(65536):
                    break
            except socket.timeout:
                continue

    def _websocket(self, sock: socket.socket, reader: Reader, ex: _Exchange) -> None:
        key = ex.header(b"sec-websocket-key") or b""
        sock.sendall(response_bytes(101, "Switching Protocols", [
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", ws_accept(key).decode()), ("X-Upstream", self.name)],
            content_length=False))
        sock.settimeout(30)
        while True:
            fin, opcode, payload, masked = ws_read_frame(reader)
            if not masked:   # RFC 6455 §5.1: a server closes on an unmasked client frame
                sock.sendall(ws_frame(0x8, struct.pack("!H", 1002)))
                return
            if opcode == 0x8:
                sock.sendall(ws_frame(0x8, payload))
                return
            if opcode == 0x9:
                sock.sendall(ws_frame(0xA, payload))
                continue
            sock.sendall(ws_frame(opcode, payload, fin=fin))


class _RecordingReader(Reader):
    """A Reader that also keeps the first 64 KiB of wire bytes of its connection."""

    def __init__(self, sock: socket.socket, raw: bytearray):
        super().__init__(sock)
        self.raw = raw

    def _fill(self, want: int = 65536) -> bool:
        before = len(self.buf)
        ok = super()._fill(want)
        if ok and len(self.raw) < KEEP_BODY:
            self.raw.extend(self.buf[before:before + KEEP_BODY - len(self.raw)])
        return ok


# ---- the same server in its own process ------------------------------------------

class HttpUpstreamProcess:
    """HttpUpstream run as `python -m tests.support.http_upstreams`, optionally
    under a command prefix such as `ip netns exec NS`."""

    def __init__(self, listen: list[str], name: str = "up", prefix: list[str] | None = None,
                 idle_close_ms: int | None = None):
        from .proxy_process import PYTHON, REPO_ROOT
        argv = [*(prefix or []), PYTHON, "-m", "tests.support.http_upstreams", "--name", name]
        for address in listen:
            argv += ["--listen", address]
        if idle_close_ms is not None:
            argv += ["--idle-close-ms", str(idle_close_ms)]
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        self._lines: queue.Queue = queue.Queue()
        self._records: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()
        try:
            first = json.loads(self._lines.get(timeout=15))
        except queue.Empty:
            self.stop()
            raise AssertionError(f"http upstream did not start: {self.proc.stderr.read()}")
        self.listening = first["listening"]
        self.port = self.listening[0][1]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)

    def records(self, wait_for: int = 0, timeout: float = 10.0) -> list[dict]:
        """Every request record so far; with wait_for, waits until there are that many."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._records.append(json.loads(self._lines.get(timeout=0.05)))
                continue
            except queue.Empty:
                pass
            if len(self._records) >= wait_for or time.monotonic() > deadline:
                return list(self._records)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> "HttpUpstreamProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", action="append", default=[], help="HOST:PORT ([v6]:port)")
    ap.add_argument("--name", default="up")
    ap.add_argument("--idle-close-ms", type=int, default=None)
    args = ap.parse_args(argv)
    out_lock = threading.Lock()

    def emit(rec: dict) -> None:
        rec = {k: v for k, v in rec.items() if k not in ("body", "body_raw")}
        with out_lock:
            print(json.dumps(rec), flush=True)

    server = HttpUpstream(args.name, [_parse_hostport(a) for a in args.listen or ["127.0.0.1:0"]],
                          idle_close_ms=args.idle_close_ms, on_record=emit)
    server.start()
    with out_lock:
        print(json.dumps({"listening": [list(ls.getsockname()[:2]) for ls in server.listeners]}), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    return 0


# ---- proxy configs for the HTTP path ------------------------------------------------

def http_listener(name: str, port: int, cluster_name: str | None = None, host: str = "127.0.0.1") -> dict:
    """An explicit HTTP listener; requests no VirtualService matches go to
    `cluster_name` (absent: 404 NR)."""
    http = {"cluster": cluster_name} if cluster_name else {}
    return {"name": name, "address": f"{host}:{port}", "http": http}


def route_to(*destinations: tuple[str, int] | str) -> list[dict]:
    """[{destination: {host: c}, weight: w}, ...] from names or (name, weight)."""
    out = []
    for d in destinations:
        if isinstance(d, str):
            out.append({"destination": {"host": d}})
        else:
            out.append({"destination": {"host": d[0]}, "weight": d[1]})
    return out


def start_http_proxy(start_proxy, upstreams: dict, virtual_services: list | None = None,
                     default_cluster: str | None = None, workers: int = 1, env: dict | None = None,
                     listener_name: str = "web", **settings):
    """A proxy with one explicit HTTP listener. upstreams: cluster name ->
    address or list of addresses. Returns (proxy, port, doc)."""
    from .ports import free_port
    from .proxy_config import cluster, hermetic_settings, proxy_config
    port = free_port()
    clusters = [cluster(name, *([a] if isinstance(a, str) else a)) for name, a in upstreams.items()]
    doc = proxy_config(hermetic_settings(workers=workers, **settings),
                       [http_listener(listener_name, port, default_cluster)], clusters)
    if virtual_services is not None:
        doc["virtual_services"] = virtual_services
    return start_proxy(doc, env=env), port, doc


def worker_rss(admin) -> dict[int, int]:
    """RSS in bytes of each worker process, by pid."""
    import psutil
    out = {}
    for w in admin.workers():
        try:
            out[int(w["pid"])] = psutil.Process(int(w["pid"])).memory_info().rss
        except psutil.Error:
            pass
    return out


if __name__ == "__main__":
    sys.exit(main())
