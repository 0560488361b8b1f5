"""Issue 3: what the client sees when things go wrong - upstream failures
(503 UF / 504 UT / 503 UC / 502, a response cut mid-body), the keep-alive
race, and the local answers to malformed requests (400, 414, 431, 501, 505),
each with a short plain-text reason and the connection closed after it."""
import http.client
import random
import socket
import time

import pytest

from tests.support.http_upstreams import (
    BAD_RESPONSES, HttpUpstream, Reader, connect, exchange, get, read_response, start_http_proxy)
from tests.support.polling import poll_until
from tests.support.ports import free_port


def _proxy(start_proxy, address, **settings):
    return start_http_proxy(start_proxy, {"backend": address}, default_cluster="backend", **settings)


def _assert_plain_reason(resp):
    assert resp.body.strip(), f"{resp.status} without a reason: {resp.raw_head!r}"
    ctype = (resp.header("content-type") or "text/plain").lower()
    assert ctype.startswith("text/plain"), resp.raw_head


def test_connect_refused_is_503_uf(start_proxy):
    proxy, port, _ = _proxy(start_proxy, f"127.0.0.1:{free_port()}")
    resp = get(port, "/refused")
    assert resp is not None and resp.status == 503, resp
    _assert_plain_reason(resp)
    # Istio's default retry policy (no route sets one): 2 retries on connect-failure
    poll_until(lambda: proxy.admin.metrics().value(
        "fastproxy_cluster_upstream_cx_connect_fail_total", cluster_name="backend") == 3,
        timeout=5, message="connect_fail_total == 3 (the first try and 2 retries)")


def test_upstream_silence_is_504_ut_after_the_request_timeout(start_proxy):
    with HttpUpstream("backend") as up:
        proxy, port, _ = _proxy(start_proxy, up.address, http_request_timeout_ms=300)
        get(port, "/warm")          # the upstream connection exists: only the response is awaited
        t0 = time.monotonic()
        resp = get(port, "/_/hang")
        elapsed = time.monotonic() - t0
        assert resp is not None and resp.status == 504, resp
        _assert_plain_reason(resp)
        assert 0.2 <= elapsed <= 0.45, f"504 after {elapsed * 1000:.0f} ms, timeout 300 ms"
        # the proxy still serves
        assert get(port, "/after").status == 200
        poll_until(lambda: proxy.admin.metrics().value(
            "fastproxy_cluster_upstream_rq_timeout_total", cluster_name="backend") == 1,
            timeout=5, message="upstream_rq_timeout_total == 1")


@pytest.mark.parametrize("path", ["/_/close-before-response", "/_/reset-before-response"])
def test_upstream_gone_before_the_response_is_503_uc(start_proxy, path):
    with HttpUpstream("backend") as up:
        proxy, port, _ = _proxy(start_proxy, up.address, upstream_pool_max_idle=0)
        resp = get(port, path)
        assert resp is not None and resp.status == 503, resp
        _assert_plain_reason(resp)
        assert get(port, "/after").status == 200
        poll_until(lambda: proxy.admin.metrics().value(
            "fastproxy_cluster_upstream_rq_reset_total", cluster_name="backend") == 1,
            timeout=5, message="upstream_rq_reset_total == 1")
        assert up.snapshot()[1] == 2, "the failed request was sent again"


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_upstream_gone_mid_body_cuts_the_client_response(start_proxy, reset):
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address)
        path = "/_/truncate?n=100000&sent=5000" + ("&reset=1" if reset else "")
        with connect("127.0.0.1", port) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: svc.local\r\n\r\n".encode())
            r = Reader(s)
            try:
                resp = read_response(r)
            except ConnectionResetError:
                resp = None
        # Never a clean, complete response: the client must see it was cut.
        if resp is not None:
            assert resp.status == 200 and not resp.complete, resp
            assert len(resp.body) < 100000


@pytest.mark.parametrize("kind", sorted(set(BAD_RESPONSES) - {"chunk"}))
def test_invalid_response_head_is_502(start_proxy, kind):
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address)
        resp = get(port, f"/_/bad-response?kind={kind}")
        assert resp is not None and resp.status == 502, resp
        _assert_plain_reason(resp)


def test_invalid_chunk_in_a_response_body_cuts_the_client_response(start_proxy):
    """The head was valid and already relayed: the bad chunk can only end the
    downstream connection, never look like a complete response."""
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address)
        with connect("127.0.0.1", port) as s:
            s.sendall(b"GET /_/bad-response?kind=chunk HTTP/1.1\r\nHost: svc.local\r\n\r\n")
            try:
                resp = read_response(Reader(s))
            except (ConnectionResetError, ValueError):
                resp = None
        if resp is not None:
            assert resp.status == 502 or not resp.complete, resp


def test_keep_alive_race_replays_on_a_fresh_connection(start_proxy):
    """Deterministic: the upstream reads request 2 of every connection and
    closes without a byte, as one that timed the connection out just then.
    PUT: idempotent, so safe to send again (a POST is not: see
    test_governance_retries)."""
    with HttpUpstream("backend", drop_after=1) as up:
        proxy, port, _ = _proxy(start_proxy, up.address)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        statuses = []
        for i in range(40):
            conn.request("PUT", f"/race/{i}", body=b"payload-%d" % i, headers={"Host": "svc.local"})
            resp = conn.getresponse()
            body = resp.read()
            statuses.append(resp.status)
            assert resp.status == 200 and f"/race/{i}".encode() in body, (i, resp.status, body[:200])
        conn.close()
    assert up.dropped >= 10, f"the proxy reused a pooled connection only {up.dropped} times"
    # every request arrived complete exactly once on a connection that answered it
    answered = [r["target"] for r in up.records]
    assert answered == [f"/race/{i}" for i in range(40)], answered
    poll_until(lambda: proxy.admin.metrics().value(
        "fastproxy_cluster_upstream_keepalive_race_replays_total", cluster_name="backend") == up.dropped,
        timeout=5, message=f"keepalive_race_replays_total == {up.dropped}")


def test_keep_alive_race_with_idle_closing_upstream(start_proxy):
    """The upstream closes each keep-alive connection after 30 ms idle; the
    client spaces its requests around that, so some hit a connection the
    upstream is closing right then. 200 requests, 0 errors."""
    rng = random.Random(7)
    with HttpUpstream("backend", idle_close_ms=30) as up:
        _, port, _ = _proxy(start_proxy, up.address)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        failures = []
        for i in range(200):
            time.sleep(rng.uniform(0.026, 0.034))
            try:
                conn.request("GET", f"/idle/{i}", headers={"Host": "svc.local"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    failures.append((i, resp.status))
            except (OSError, http.client.HTTPException) as exc:
                failures.append((i, repr(exc)))
                conn.close()
        conn.close()
        connections, requests = up.snapshot()
    assert not failures, f"{len(failures)} of 200 failed: {failures[:5]}"
    assert connections > 20, "the upstream's idle close never happened; the test proves nothing"


# -- malformed requests: local answers ----------------------------------------------

def _bad_request(port, raw: bytes):
    with connect("127.0.0.1", port) as s:
        s.sendall(raw)
        r = Reader(s)
        try:
            resp = read_response(r)
            rest = r.read_to_eof()
        except ConnectionResetError:
            return None, b""
    return resp, rest


@pytest.mark.parametrize("raw,status", [
    (b"GET / HTTP/1.1\r\nHost: svc.local\r\nBad Header: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: svc.local\r\nX-Ctl: a\x01b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: svc.local\r\n: no-name\r\n\r\n", 400),
    (b"GET /a b HTTP/1.1\r\nHost: svc.local\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: svc.local\r\nTransfer-Encoding: br, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: svc.local\r\nTransfer-Encoding: foo, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: svc.local\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: svc.local\r\n\r\n", 505),
    (b"GET / HTTP/3.1\r\nHost: svc.local\r\n\r\n", 505),
], ids=["space-in-name", "ctl-in-value", "empty-name", "space-in-target", "br-chunked", "unknown-coding",
        "chunked-not-last",
        "http2-version", "http3-version"])
def test_malformed_request_gets_a_local_status_and_close(start_proxy, raw, status):
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address)
        resp, rest = _bad_request(port, raw)
        assert resp is not None and resp.status == status, (raw, resp)
        _assert_plain_reason(resp)
        assert (resp.header("connection") or "").lower() == "close", resp.raw_head
        assert rest == b""
        assert up.snapshot() == (0, 0), "a malformed request reached the upstream"


def test_limits_414_and_431(start_proxy):
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address, http_max_request_line_bytes=1024,
                            http_max_headers=20, http_max_head_bytes=4096)
        ok = get(port, "/" + "a" * 900, headers={f"X-H{i}": "v" for i in range(15)})
        assert ok.status == 200

        long_line, _ = _bad_request(port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: svc.local\r\n\r\n")
        assert long_line is not None and long_line.status == 414, long_line
        _assert_plain_reason(long_line)

        many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
        too_many, _ = _bad_request(port, b"GET / HTTP/1.1\r\nHost: svc.local\r\n" + many + b"\r\n")
        assert too_many is not None and too_many.status == 431, too_many
        _assert_plain_reason(too_many)

        big = b"X-Big: " + b"b" * 6000 + b"\r\n"
        too_big, _ = _bad_request(port, b"GET / HTTP/1.1\r\nHost: svc.local\r\n" + big + b"\r\n")
        assert too_big is not None and too_big.status == 431, too_big
        _assert_plain_reason(too_big)
        assert up.snapshot()[1] == 1, "an over-limit request reached the upstream"


def test_oversized_head_without_end_is_431_not_a_hang(start_proxy):
    """A head past the limit whose blank line never comes: the proxy answers
    431 once the limit is passed instead of waiting for the rest."""
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address, http_max_head_bytes=4096)
        fill = b"".join(b"X-Fill-%d: %s\r\n" % (i, b"f" * 100) for i in range(42))   # ~4.6 KB
        with connect("127.0.0.1", port, timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: svc.local\r\n" + fill)
            r = Reader(s)
            try:
                resp = read_response(r)
            except (ConnectionResetError, socket.timeout) as exc:
                resp = exc
        assert getattr(resp, "status", None) == 431, resp
        assert up.snapshot()[1] == 0


def test_proxy_answers_plain_requests_after_errors(start_proxy):
    """Errors are per connection: a refused upstream and a malformed request
    leave the listener serving."""
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up.address)
        for _ in range(5):
            resp, _ = _bad_request(port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            assert resp is not None and resp.status == 400
        assert exchange(port, b"GET /fine HTTP/1.1\r\nHost: svc.local\r\nConnection: close\r\n\r\n").status == 200
