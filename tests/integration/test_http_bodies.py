"""Issue 3, acceptance 3: bodies through the HTTP path - chunked both ways
(re-framed, extensions and trailers dropped), Expect: 100-continue with curl
and a raw socket, and a 1 GiB body each way, byte-exact, while the worker's
RSS stays flat."""
import hashlib
import json
import re
import shutil
import subprocess
import threading
import time

import pytest

from tests.support.http_upstreams import (
    HttpUpstream, HttpUpstreamProcess, Reader, connect, read_response, start_http_proxy, worker_rss)
from tests.support.payload import stream_chunks, stream_sha256

GIB = 1 << 30
RSS_GROWTH_LIMIT = 32 << 20
CHUNK_LINE = re.compile(rb"^[0-9a-fA-F]+\r\n$")


def _proxy(start_proxy, address, **settings):
    return start_http_proxy(start_proxy, {"backend": address}, default_cluster="backend", **settings)


def _chunk_lines(raw: bytes) -> list[bytes]:
    """The size lines of a chunked body, walking its framing."""
    lines, i = [], 0
    while True:
        j = raw.index(b"\r\n", i) + 2
        line = raw[i:j]
        lines.append(line)
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return lines
        i = j + size + 2


def test_chunked_request_is_reframed_without_extensions_or_trailers(start_proxy):
    chunks = [b"hello", b" ", b"chunked" * 100, b"\r\n0\r\n\r\nGET /not-a-request HTTP/1.1\r\n\r\n"]
    body = b"".join(b"%x;name=\"v a l\";flag\r\n" % len(c) + c + b"\r\n" for c in chunks)
    body += b"0;last=1\r\nX-Trailer: t\r\n\r\n"
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address)
        with connect("127.0.0.1", port) as s:
            s.sendall(b"POST /chunked-up HTTP/1.1\r\nHost: svc.local\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(body), 7):       # in small pieces: the decoder resumes
                s.sendall(body[i:i + 7])
                if i % 140 == 0:
                    time.sleep(0.001)
            resp = read_response(Reader(s))
        assert resp is not None and resp.status == 200, resp
        rec = resp.json()
        assert up.snapshot()[1] == 1, up.records
    assert rec["body"] == b"".join(chunks).decode(), rec
    raw = rec["body_raw"].encode("latin-1")
    lines = _chunk_lines(raw)
    assert all(CHUNK_LINE.match(line) for line in lines), lines
    assert raw.endswith(b"0\r\n\r\n") and b"X-Trailer" not in raw, raw[-80:]
    assert b"name=" not in raw and b"last=1" not in raw
    headers = {k.lower(): v for k, v in rec["headers"]}
    assert headers.get("transfer-encoding", "").lower() == "chunked", rec["raw_head"]
    assert "content-length" not in headers


def test_chunked_response_streams_to_the_client_reframed(start_proxy):
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address)
        with connect("127.0.0.1", port) as s:
            r = Reader(s)
            s.sendall(b"GET /_/chunked?n=2000000&seed=9&size=3001&ext=1&trailer=X-T:1 HTTP/1.1\r\n"
                      b"Host: svc.local\r\n\r\n")
            resp = read_response(r)
            # the connection stays usable after a chunked response
            s.sendall(b"GET /next HTTP/1.1\r\nHost: svc.local\r\n\r\n")
            nxt = read_response(r)
    assert resp.status == 200 and resp.complete, resp.reason
    assert (resp.header("transfer-encoding") or "").lower() == "chunked", resp.raw_head
    assert hashlib.sha256(resp.body).hexdigest() == stream_sha256(2_000_000, 9)
    assert b";" not in b"".join(_chunk_lines(resp.chunked_raw)), "chunk extensions reached the client"
    assert nxt.status == 200 and nxt.json()["target"] == "/next"


def test_large_chunked_upload_streams_byte_exact(start_proxy):
    total = 8 << 20
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address)
        with connect("127.0.0.1", port, timeout=30) as s:
            s.sendall(b"PUT /big HTTP/1.1\r\nHost: svc.local\r\nTransfer-Encoding: chunked\r\n\r\n")
            for chunk in stream_chunks(total, 11, chunk_bytes=65521):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            resp = read_response(Reader(s))
    rec = resp.json()
    assert rec["body_len"] == total and rec["body_sha256"] == stream_sha256(total, 11, 65521), rec["body_len"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_expect_100_continue_with_curl(start_proxy, tmp_path):
    data = b"".join(stream_chunks(1 << 20, 21))
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address)
        t0 = time.monotonic()
        out = subprocess.run(["curl", "-sS", "-v", "--max-time", "20", "-H", "Expect: 100-continue",
                              "-H", "Host: svc.local", "--data-binary", f"@{path}",
                              f"http://127.0.0.1:{port}/upload"], capture_output=True, timeout=30)
        elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    rec = json.loads(out.stdout)
    assert rec["body_len"] == len(data) and rec["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert rec["continue_sent"], rec
    assert b"< HTTP/1.1 100 Continue" in out.stderr, out.stderr.decode()[-2000:]
    # curl waits 1 s for the 100 before sending anyway; the proxy relayed it at once.
    assert elapsed < 0.9, f"curl took {elapsed:.2f}s: the 100 Continue was not relayed promptly"


def test_expect_100_continue_with_a_raw_socket(start_proxy):
    body = b"x" * 50_000
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address)
        with connect("127.0.0.1", port) as s:
            r = Reader(s)
            s.sendall(b"POST /expect HTTP/1.1\r\nHost: svc.local\r\nExpect: 100-continue\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body))
            s.settimeout(3)
            interim = read_response(r, keep_1xx=True)
            assert interim is not None and interim.status == 100, interim
            assert interim.raw_head.startswith(b"HTTP/1.1 100"), interim.raw_head
            s.sendall(body)
            final = read_response(r)
            # and the connection stays usable
            s.sendall(b"GET /after HTTP/1.1\r\nHost: svc.local\r\n\r\n")
            after = read_response(r)
    assert final.status == 200 and final.json()["body_len"] == len(body) and final.json()["continue_sent"]
    assert after.status == 200 and after.json()["target"] == "/after"


class _RssSampler:
    """Samples the workers' RSS every 100 ms while a transfer runs."""

    def __init__(self, admin):
        self.admin = admin
        self.baseline = worker_rss(admin)
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.1):
            for pid, rss in worker_rss(self.admin).items():
                self.peak[pid] = max(self.peak.get(pid, 0), rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def growth(self) -> dict[int, int]:
        return {pid: self.peak[pid] - self.baseline.get(pid, self.peak[pid]) for pid in self.peak}


@pytest.mark.slow
def test_one_gib_each_way_byte_exact_with_flat_rss(start_proxy):
    """A 1 GiB Content-Length upload and a 1 GiB download at the same time
    through one worker; the upstream runs in its own process."""
    with HttpUpstreamProcess(["127.0.0.1:0"], name="big") as up:
        proxy, port, _ = _proxy(start_proxy, f"127.0.0.1:{up.port}", workers=1)
        # warm up: buffers and pools exist before the baseline is taken
        with connect("127.0.0.1", port) as s:
            s.sendall(b"POST /warm HTTP/1.1\r\nHost: svc.local\r\nContent-Length: 100000\r\n\r\n" + b"w" * 100000)
            assert read_response(Reader(s)).status == 200
        results: dict = {}
        errors: list = []

        def upload():
            try:
                with connect("127.0.0.1", port, timeout=60) as s:
                    s.sendall(b"POST /upload HTTP/1.1\r\nHost: svc.local\r\nContent-Length: %d\r\n\r\n" % GIB)
                    for chunk in stream_chunks(GIB, 31, chunk_bytes=1 << 20):
                        s.sendall(chunk)
                    results["upload"] = read_response(Reader(s)).json()
            except BaseException as exc:  # noqa: BLE001
                errors.append(("upload", exc))

        def download():
            try:
                with connect("127.0.0.1", port, timeout=60) as s:
                    s.sendall(b"GET /_/stream?n=%d&seed=32 HTTP/1.1\r\nHost: svc.local\r\n\r\n" % GIB)
                    r = Reader(s)
                    head = r.read_until(b"\r\n\r\n")
                    h = hashlib.sha256()
                    got = len(r.buf)
                    h.update(r.buf)
                    buf = bytearray(1 << 20)
                    view = memoryview(buf)
                    while got < GIB:
                        n = s.recv_into(buf)
                        if not n:
                            break
                        h.update(view[:n])
                        got += n
                    results["download"] = {"head": head, "len": got, "sha": h.hexdigest()}
            except BaseException as exc:  # noqa: BLE001
                errors.append(("download", exc))

        t0 = time.monotonic()
        with _RssSampler(proxy.admin) as rss:
            threads = [threading.Thread(target=upload), threading.Thread(target=download)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
        elapsed = time.monotonic() - t0
        assert not any(t.is_alive() for t in threads), "1 GiB transfers still running after 120 s"
    assert not errors, errors
    expected_up = stream_sha256(GIB, 31, 1 << 20)
    expected_down = stream_sha256(GIB, 32)
    assert results["upload"]["body_len"] == GIB and results["upload"]["body_sha256"] == expected_up
    dl = results["download"]
    assert dl["head"].startswith(b"HTTP/1.1 200") and dl["len"] == GIB and dl["sha"] == expected_down
    growth = rss.growth()
    assert growth and max(growth.values()) < RSS_GROWTH_LIMIT, (
        f"worker RSS grew by {[g >> 20 for g in growth.values()]} MiB during 2 GiB of bodies "
        f"(baseline {[b >> 20 for b in rss.baseline.values()]} MiB)")
    assert elapsed < 90, f"2 GiB took {elapsed:.1f}s"
