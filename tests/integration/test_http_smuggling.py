"""Issue 3, acceptance 3: request smuggling vectors never reach the upstream
as two requests.

Each vector carries a second request ("GET /smuggled") placed where a parser
that disagrees with ours about the first request's length would see it.
For every vector: the client gets the local error status and the connection
closes; the upstream saw no request at all (the bad head is never
forwarded), and the bytes "/smuggled" never reached it on any connection.

Vectors whose error is only seen inside the body (a bad chunk) may have had
their head forwarded already; for them the upstream may see that one
request, never a second one."""
import pytest

from tests.support.http_upstreams import HttpUpstream, Reader, connect, read_response, start_http_proxy

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: svc.local\r\n\r\n"
H = b"POST /first HTTP/1.1\r\nHost: svc.local\r\n"

# (id, raw request, acceptable statuses) - rejected at the head
HEAD_VECTORS = [
    ("cl-te", H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, {400}),
    ("te-cl", H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED, {400}),
    ("dup-cl-differ", H + b"Content-Length: 0\r\nContent-Length: 45\r\n\r\n" + SMUGGLED, {400}),
    ("dup-cl-same", H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc" + SMUGGLED, {400}),
    ("cl-list", H + b"Content-Length: 0, 45\r\n\r\n" + SMUGGLED, {400}),
    ("cl-plus", H + b"Content-Length: +45\r\n\r\n" + SMUGGLED, {400}),
    ("cl-hex", H + b"Content-Length: 0x2d\r\n\r\n" + SMUGGLED, {400}),
    ("cl-negative", H + b"Content-Length: -1\r\n\r\n" + SMUGGLED, {400}),
    ("cl-overflow", H + b"Content-Length: 18446744073709551617\r\n\r\n" + SMUGGLED, {400, 413}),
    ("te-chunked-identity", H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED, {400, 501}),
    ("te-identity", H + b"Transfer-Encoding: identity\r\n\r\n" + SMUGGLED, {400, 501}),
    ("te-chunked-twice-lines", H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"
     + SMUGGLED, {400, 501}),
    ("te-xchunked", H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED, {400, 501}),
    ("te-vtab", H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n" + SMUGGLED, {400, 501}),
    ("te-obs-fold", H + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED, {400}),
    ("obs-fold", H + b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n" + SMUGGLED, {400}),
    ("space-before-colon-te", H + b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
     {400}),
    ("tab-before-colon-cl", H + b"Content-Length\t: 45\r\n\r\n" + SMUGGLED, {400}),
    ("bare-cr-in-value", H + b"X-A: a\rContent-Length: 45\r\n\r\n" + SMUGGLED, {400}),
    ("bare-cr-line-end", H + b"Content-Length: 0\r\rX: y\r\n\r\n" + SMUGGLED, {400}),
    ("bare-lf-in-value", H + b"X-A: a\nContent-Length: 45\r\n\r\n" + SMUGGLED, {400}),
    ("nul-in-value", H + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n" + SMUGGLED, {400}),
    ("nul-in-name", H + b"Content-Len\x00gth: 45\r\n\r\n" + SMUGGLED, {400}),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a.local\r\nHost: b.local\r\n\r\n" + SMUGGLED, {400}),
    ("no-host-http11", b"GET / HTTP/1.1\r\nX: y\r\n\r\n" + SMUGGLED, {400}),
    ("request-line-tab", b"GET\t/ HTTP/1.1\r\nHost: svc.local\r\n\r\n" + SMUGGLED, {400}),
    ("request-line-lf-only-target", b"GET /\n HTTP/1.1\r\nHost: svc.local\r\n\r\n" + SMUGGLED, {400}),
]

# (id, raw request) - the head is valid, the chunked body is not
BODY_VECTORS = [
    ("chunk-size-overflow", H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"10000000000000000000000000000000001\r\nx\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-size-2-to-the-64", H + b"Transfer-Encoding: chunked\r\n\r\n"     # wraps to 0 in 64 bits
     b"10000000000000000\r\n\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"),
    ("chunk-size-0x", H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-size-negative", H + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-size-space", H + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-ext-ctl", H + b"Transfer-Encoding: chunked\r\n\r\n5;a\x01=b\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-ext-bare-lf", H + b"Transfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-ext-unterminated-quote", H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"5;a=\"b\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-size-lf-only", H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-data-too-long", H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhelloXX\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-missing-crlf", H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n" + SMUGGLED),
    ("last-chunk-bad-trailer", H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nBad Trailer: x\r\n\r\n" + SMUGGLED),
]


@pytest.fixture
def smuggle_target(start_proxy):
    with HttpUpstream("backend") as up:
        _, port, _ = start_http_proxy(start_proxy, {"backend": up.address}, default_cluster="backend")
        yield up, port


def _send(port: int, raw: bytes):
    """Sends the vector in one write; returns (first response or None, every
    further byte until the connection ended)."""
    with connect("127.0.0.1", port, timeout=5) as s:
        s.sendall(raw)
        r = Reader(s)
        try:
            resp = read_response(r)
        except (ConnectionResetError, EOFError):
            return None, b""
        try:
            rest = r.read_to_eof()
        except ConnectionResetError:
            rest = b""
    return resp, rest


def _assert_never_smuggled(up: HttpUpstream, max_requests: int):
    targets = [rec["target"] for rec in up.records]
    assert "/smuggled" not in targets, targets
    assert up.snapshot()[1] <= max_requests, f"upstream saw {up.snapshot()[1]} requests: {targets}"
    assert b"/smuggled" not in up.raw_bytes_received(), up.raw_bytes_received()[:500]


@pytest.mark.parametrize("raw,statuses", [v[1:] for v in HEAD_VECTORS], ids=[v[0] for v in HEAD_VECTORS])
def test_bad_head_is_rejected_and_nothing_is_forwarded(smuggle_target, raw, statuses):
    up, port = smuggle_target
    resp, rest = _send(port, raw)
    assert resp is not None, "the connection ended without a status"
    assert resp.status in statuses, (resp.status, resp.body[:200])
    assert (resp.header("connection") or "").lower() == "close", resp.raw_head
    assert b"HTTP/1.1" not in rest, f"a second response followed: {rest[:300]!r}"
    _assert_never_smuggled(up, 0)


@pytest.mark.parametrize("raw", [v[1] for v in BODY_VECTORS], ids=[v[0] for v in BODY_VECTORS])
def test_bad_chunked_body_never_yields_a_second_request(smuggle_target, raw):
    up, port = smuggle_target
    resp, rest = _send(port, raw)
    # A local 4xx (400, or 413 for a size past 2^63-1), or (head already
    # forwarded) a 5xx or a cut connection - never a success.
    if resp is not None:
        assert resp.status >= 400, (resp.status, resp.body[:200])
    assert b"HTTP/1.1" not in rest, f"a second response followed: {rest[:300]!r}"
    _assert_never_smuggled(up, 1)
    # The upstream must not have received a complete, well-formed request it answered.
    for rec in up.records:
        assert rec["target"] == "/first"


def test_smuggled_looking_bytes_inside_a_valid_body_stay_in_it(smuggle_target):
    """The control: the same bytes as body data are one request's body."""
    up, port = smuggle_target
    body = b"0\r\n\r\n" + SMUGGLED
    raw = H + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    resp, _ = _send(port, raw)
    assert resp.status == 200 and resp.json()["body"] == body.decode()
    assert [rec["target"] for rec in up.records] == ["/first"]


def test_pipelined_after_a_bad_request_is_not_served(smuggle_target):
    """A request pipelined behind a rejected one is never read."""
    up, port = smuggle_target
    raw = (b"GET /ok HTTP/1.1\r\nHost: svc.local\r\n\r\n"
           + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nx" + SMUGGLED)
    with connect("127.0.0.1", port, timeout=5) as s:
        s.sendall(raw)
        r = Reader(s)
        first = read_response(r)
        try:
            second = read_response(r)
            rest = r.read_to_eof()
        except ConnectionResetError:
            second, rest = None, b""
    assert first.status == 200 and first.json()["target"] == "/ok"
    assert second is None or second.status == 400, second
    assert b"HTTP/1.1" not in rest
    assert [rec["target"] for rec in up.records] == ["/ok"]
    assert b"/smuggled" not in up.raw_bytes_received()
