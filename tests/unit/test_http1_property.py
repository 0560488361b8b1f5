"""Property tests of our HTTP/1 parser (fastproxy._native.http1), issue 3.

tests/unit/test_http1_differential.py holds the table of cases (ours and
httptools, valid and malformed, each disagreement with its reason) and its
first properties. This file adds, with hypothesis:

1. valid messages from a wider grammar, requests AND responses (every method
   llhttp knows, the four target forms, leading empty lines, HTTP/1.0 and
   1.1, Connection option lists, Upgrade, Expect, Content-Length with
   leading zeros, coding lists ending in chunked, chunk extensions,
   trailers, 1xx/204/304, until-close bodies, a pipelined next message):
   ours and httptools give the same Outcome, fed whole, byte by byte and in
   random pieces; a documented difference (KNOWN_DIFFERENCES) is the only
   way out, and its note must say why;
2. mutations of those messages: when both accept, both say the same (same
   fields, same body: a request-smuggling check), and when only ours
   accepts, LLHTTP_STRICTER of the differential test names the reason;
3. arbitrary bytes: no crash, only the documented statuses, and the result
   of the resumable parsers (head and chunked) is the same fed whole, byte by
   byte and in random pieces, and equal to the one-call parse_request /
   parse_response;
4. no over-read: each input handed to the parser ends at a PROT_NONE page
   (mmap + mprotect), so reading one byte past the end of the buffer kills
   the process with SIGSEGV (pytest's faulthandler names the test);
5. the atheris seed corpus (tests/fuzz/corpus_http1) replayed through the
   harness's own checks, so the corpus runs in every `make test`.

The C tests (tests/c/test_http1.c: guard pages, ASan/UBSan, both scanners)
run in `make test-c`; this file checks the compiled extension as shipped.
Each property runs 150 examples (~7 s for the file); for a long hunt:
    FASTPROXY_PROPERTY_EXAMPLES=5000 .venv/bin/python -m pytest tests/unit/test_http1_property.py
"""
from __future__ import annotations

import ctypes
import dataclasses
import faulthandler
import importlib.util
import mmap
import os
import pathlib

import httptools
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fastproxy._native import http1

from test_http1_differential import (  # same directory: pytest puts it on sys.path
    LLHTTP, LLHTTP_METHODS, OURS, TCHARS, Outcome, _check_no_unexplained_acceptance, pieces)

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus_http1"

# FASTPROXY_PROPERTY_EXAMPLES=5000 for a long hunt (the default keeps the file ~10 s)
EXAMPLES = int(os.environ.get("FASTPROXY_PROPERTY_EXAMPLES", "150"))
FAST = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

REQUEST_STATUSES = {400, 413, 414, 431, 501, 505}
CHUNKED_STATUSES = {400, 413, 431}

# ---- documented differences on valid input ----------------------------------------
#
# (reason, applies(kind, raw, ours, theirs), fields): the only valid inputs on
# which the two may give different Outcomes. Where a difference applies, the
# named fields of httptools' Outcome are replaced by ours; the input is
# explained when what is left is equal (several differences may combine).
# Each one is also a row of the table in test_http1_differential.py, where it
# is pinned down on a fixed input.


def _connection_tokens(raw: bytes) -> list[bytes]:
    head = raw.lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0]
    out = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"connection":
            out += [t.strip(b" \t").lower() for t in value.split(b",")]
    return out


KNOWN_DIFFERENCES = [
    ("HTTP/1.0 naming keep-alive and close: llhttp keeps the connection open, "
     "RFC 9112 §9.6: close wins",
     lambda kind, raw, o, t: o.version == "1.0"
     and {b"close", b"keep-alive"} <= set(_connection_tokens(raw)),
     ("keep_alive",)),
    ("101 response: llhttp says keep-alive; after a 101 the connection carries another "
     "protocol, never a next HTTP/1 message",
     lambda kind, raw, o, t: kind == "response" and o.code == 101,
     ("keep_alive",)),
    ("101 without Upgrade or without Connection: upgrade: the status is the switch to us "
     "(RFC 9110 §15.2.2), llhttp switches only when both fields are there",
     lambda kind, raw, o, t: kind == "response" and o.code == 101 and o.upgrade
     and not t.upgrade,
     ("upgrade",)),
    ("1xx other than 100..103 with Content-Length or chunked: llhttp waits for content, "
     "RFC 9112 §6.3 (1): a 1xx response ends at its head",
     lambda kind, raw, o, t: kind == "response" and 104 <= o.code <= 199,
     ("verdict", "body")),
    ("Upgrade request with content: llhttp ends the message at the head and hands the "
     "content to the new protocol; RFC 9112 §6.3 frames it by its Content-Length or chunked "
     "coding, and the switch happens after it (RFC 9110 §7.8)",
     lambda kind, raw, o, t: kind == "request" and o.upgrade and t.upgrade and t.body == b"",
     ("verdict", "body")),
    ("Upgrade in an HTTP/1.0 request: llhttp upgrades (and stops at the head), RFC 9110 §7.8 "
     "says to ignore Upgrade there",
     lambda kind, raw, o, t: kind == "request" and o.version == "1.0" and t.upgrade
     and not o.upgrade,
     ("upgrade", "verdict", "body")),
]


def explain(kind: str, raw: bytes, ours: Outcome, theirs: Outcome) -> list[str]:
    """The documented reasons that together account for theirs != ours, or []."""
    reasons = []
    for why, applies, fields in KNOWN_DIFFERENCES:
        if applies(kind, raw, ours, theirs):
            theirs = dataclasses.replace(theirs, **{f: getattr(ours, f) for f in fields})
            reasons.append(why)
    return reasons if theirs == ours else []


def assert_agree(kind: str, raw: bytes, parts: list[bytes]) -> Outcome:
    ours = OURS.run(raw, kind, [raw])
    assert ours.verdict != "rejected", (raw, ours)
    for feed in ([raw], pieces(raw, "bytewise"), parts):
        assert OURS.run(raw, kind, feed) == ours, (raw, feed)
        theirs = LLHTTP.run(raw, kind, feed)
        if theirs != ours:
            assert explain(kind, raw, ours, theirs), (
                f"undocumented disagreement on {raw!r}\n  ours:      {ours}\n"
                f"  httptools: {theirs}")
    return ours


# ---- grammar of valid messages -------------------------------------------------------

# every method in llhttp's list except CONNECT (generated apart, it needs an
# authority) and SOURCE (llhttp only takes it in ICE/RTSP mode)
METHODS = sorted(LLHTTP_METHODS - {b"CONNECT", b"SOURCE"})
UNRESERVED = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
PCHAR = UNRESERVED + b"!$&'()*+,;=:@"
# field-value bytes, as the differential test (VCHAR and obs-text)
VALUE_BYTES = [bytes([b]) for b in list(range(0x21, 0x7f)) + list(range(0x80, 0x100))]
# names the framing looks at: never generated as "other" fields
FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"proxy-connection",
           b"host", b"upgrade", b"expect", b"keep-alive", b"te", b"trailer"}

token = st.binary(min_size=1, max_size=10).map(lambda b: bytes(TCHARS[x % len(TCHARS)] for x in b))
ows = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t"])
field_value = st.lists(st.sampled_from(VALUE_BYTES + [b" ", b"\t"]), max_size=30).map(
    lambda parts: b"".join(parts).strip(b" \t"))
host = st.sampled_from([b"example.com", b"a.example:8080", b"10.0.0.1", b"[::1]:443",
                        b"svc.ns.svc.cluster.local"])
path_segment = st.lists(st.sampled_from(PCHAR + b"%"), max_size=12).map(bytes).map(
    lambda b: b.replace(b"%", b"%2F"))


def recase(draw, name: bytes) -> bytes:
    """The same field name in random letter case (names are case-insensitive)."""
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return bytes(c ^ 0x20 if f and chr(c).isalpha() else c for c, f in zip(name, flips))


@st.composite
def origin_form(draw):
    path = b"/" + b"/".join(draw(st.lists(path_segment, max_size=4)))
    if draw(st.booleans()):
        path += b"?" + bytes(draw(st.lists(st.sampled_from(PCHAR + b"/?"), max_size=16)))
    return path


@st.composite
def chunked_body(draw):
    """(framed bytes, data): chunk sizes in any case with leading zeros,
    extensions (token or quoted-string values), then trailer fields."""
    framed, data = b"", b""
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=50), max_size=4)):
        size = b"0" * draw(st.integers(0, 2)) + (b"%x" if draw(st.booleans()) else b"%X") % len(chunk)
        for _ in range(draw(st.integers(0, 2))):
            size += b";" + draw(token)
            value = draw(st.sampled_from([None, "token", "quoted"]))
            if value == "token":
                size += b"=" + draw(token)
            elif value == "quoted":
                size += b'="' + draw(st.sampled_from([b"", b"a b", b"x\\\"y", b"=;,"])) + b'"'
        framed += size + b"\r\n" + chunk + b"\r\n"
        data += chunk
    framed += b"0\r\n"
    for _ in range(draw(st.integers(0, 2))):
        framed += draw(token) + b":" + draw(ows) + draw(field_value) + b"\r\n"
    return framed + b"\r\n", data


@st.composite
def connection_field(draw, options: list[bytes]):
    tokens = list(options) + draw(st.lists(st.sampled_from([b"x-hop", b"te", b"Keep-Alive"]),
                                           max_size=2))
    tokens = [recase(draw, t) for t in tokens]
    draw(st.randoms()).shuffle(tokens)
    sep = draw(st.sampled_from([b",", b", ", b" , ", b",\t"]))
    return b"Connection", sep.join(tokens)


@st.composite
def valid_request(draw):
    """A request that RFC 9112 accepts and that both parsers must agree on
    (apart from KNOWN_DIFFERENCES)."""
    minor = draw(st.sampled_from([0, 1]))
    form = draw(st.sampled_from(["origin", "origin", "absolute", "asterisk", "authority"]))
    if form == "asterisk":
        method, target = b"OPTIONS", b"*"
    elif form == "authority":
        method, target = b"CONNECT", draw(st.sampled_from([b"a.example:443", b"10.0.0.1:5432",
                                                          b"[::1]:80"]))
    else:
        method = draw(st.sampled_from(METHODS))
        target = draw(origin_form())
        if form == "absolute":
            target = draw(st.sampled_from([b"http://", b"https://"])) + draw(host) + target
    fields: list[tuple[bytes, bytes]] = []
    if minor == 1 or draw(st.booleans()):
        fields.append((recase(draw, b"Host"), draw(host)))
    for _ in range(draw(st.integers(0, 6))):
        name = draw(token)
        assume(name.lower() not in FRAMING)
        fields.append((name, draw(field_value)))
    options = draw(st.lists(st.sampled_from([b"close", b"keep-alive"]), max_size=2, unique=True))
    body_kind = "none"
    if method == b"CONNECT":
        pass  # a tunnel: no body, no Upgrade
    else:
        if draw(st.integers(0, 4)) == 0:
            options.append(b"upgrade")
            fields.append((b"Upgrade", draw(st.sampled_from([b"websocket", b"h2c", b"foo/2"]))))
        body_kind = draw(st.sampled_from(["none", "length", "chunked"] if minor else
                                         ["none", "length"]))
    if options or draw(st.booleans()):
        fields.append(draw(connection_field(options)))
    if body_kind != "none" and draw(st.booleans()):
        fields.append((recase(draw, b"Expect"), b"100-continue"))
    body = b""
    if body_kind == "length":
        data = draw(st.binary(max_size=60))
        zeros = b"0" * draw(st.integers(0, 3))
        fields.append((recase(draw, b"Content-Length"), zeros + b"%d" % len(data)))
        body = data
    elif body_kind == "chunked":
        codings = draw(st.sampled_from([b"chunked", b"Chunked", b"gzip, chunked",
                                        b"deflate,chunked", b"gzip , chunked"]))
        fields.append((recase(draw, b"Transfer-Encoding"), codings))
        body, _ = draw(chunked_body())
    draw(st.randoms()).shuffle(fields)
    head = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
    head += b"%s %s HTTP/1.%d\r\n" % (method, target, minor)
    # OWS only around values llhttp does not interpret (see the table's
    # "Transfer-Encoding with trailing OWS"); one SP before the others
    head += b"".join(n + b":" + (draw(ows) + v + draw(ows) if n.lower() not in FRAMING else b" " + v)
                     + b"\r\n" for n, v in fields)
    raw = head + b"\r\n" + body
    if draw(st.booleans()):  # a pipelined next request: not part of this one
        raw += b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    return raw


@st.composite
def valid_response(draw):
    minor = draw(st.sampled_from([0, 1]))
    code = draw(st.one_of(st.sampled_from([100, 101, 103, 200, 201, 204, 206, 301, 304, 404, 500,
                                           503, 599]),
                          st.integers(100, 999)))
    reason = draw(st.lists(st.sampled_from(VALUE_BYTES + [b" ", b"\t"]), max_size=16).map(b"".join))
    line = draw(st.sampled_from([b"HTTP/1.%d %d %s", b"HTTP/1.%d %d %s", b"HTTP/1.%d %d"]))
    line = line % ((minor, code, reason) if line.count(b"%") == 3 else (minor, code))
    fields = [(draw(token), draw(field_value)) for _ in range(draw(st.integers(0, 5)))]
    fields = [(n, v) for n, v in fields if n.lower() not in FRAMING]
    options = draw(st.lists(st.sampled_from([b"close", b"keep-alive"]), max_size=2, unique=True))
    if code == 101:
        options.append(b"upgrade")
        fields.append((b"Upgrade", b"websocket"))
    if options:
        fields.append(draw(connection_field(options)))
    no_body = code < 200 or code in (204, 304)
    body_kind = draw(st.sampled_from(["length", "chunked", "close"] if minor else
                                     ["length", "close"]))
    body = b""
    if body_kind == "length":
        data = draw(st.binary(max_size=40))
        fields.append((recase(draw, b"Content-Length"), b"%d" % len(data)))
        body = b"" if no_body else data
    elif body_kind == "chunked":
        fields.append((recase(draw, b"Transfer-Encoding"),
                       draw(st.sampled_from([b"chunked", b"gzip, chunked"]))))
        body = b"" if no_body else draw(chunked_body())[0]
    elif not no_body:
        body = draw(st.binary(max_size=40))  # until close: never complete
    draw(st.randoms()).shuffle(fields)
    raw = line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n" + body
    return raw


def random_pieces(draw, raw: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(raw)), max_size=8))))
    return [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]


# ---- 1. valid messages agree -----------------------------------------------------------


@FAST
@given(st.data())
def test_valid_requests_agree(data):
    raw = data.draw(valid_request())
    ours = assert_agree("request", raw, random_pieces(data.draw, raw))
    assert ours.verdict == "complete", (raw, ours)


@FAST
@given(st.data())
def test_valid_responses_agree(data):
    raw = data.draw(valid_response())
    ours = assert_agree("response", raw, random_pieces(data.draw, raw))
    assert ours.verdict in ("complete", "incomplete"), (raw, ours)


# ---- 2. mutations: when both accept, they agree ---------------------------------------------

INTERESTING = [bytes([b]) for b in b"\r\n \t:;,=\"\\\x00\x01\x7f\x80\xff0aAzZ9-/*?#"] + [
    b"\r\n", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 1\r\n", b"chunked", b", ",
    b"\r\n\r\n"]


@st.composite
def mutated(draw, kind):
    raw = bytearray(draw(valid_request() if kind == "request" else valid_response()))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if op == "insert":
            raw[i:i] = draw(st.sampled_from(INTERESTING))
        elif op == "delete":
            del raw[i:i + draw(st.integers(1, 3))]
        elif op == "replace":
            raw[i:i + 1] = draw(st.sampled_from(INTERESTING))
        else:
            raw[i:i] = raw[i:i + draw(st.integers(1, 20))]
    return bytes(raw)


def check_mutant(kind: str, raw: bytes) -> None:
    _check_no_unexplained_acceptance(raw, kind)
    ours = OURS.run(raw, kind, [raw])
    assert OURS.run(raw, kind, pieces(raw, "bytewise")) == ours, raw
    if ours.verdict != "complete":
        return
    theirs = LLHTTP.run(raw, kind, [raw])
    if theirs.verdict == "complete" and theirs != ours:
        assert explain(kind, raw, ours, theirs), (
            f"both accept, different messages: {raw!r}\n  ours:      {ours}\n"
            f"  httptools: {theirs}")


@FAST
@given(mutated("request"))
def test_mutated_requests_agree_when_both_accept(raw):
    check_mutant("request", raw)


@FAST
@given(mutated("response"))
def test_mutated_responses_agree_when_both_accept(raw):
    check_mutant("response", raw)


# ---- 3 + 4. arbitrary bytes: no crash, no over-read, feeding-invariant ---------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class GuardPage:
    """`size` usable bytes followed by a PROT_NONE page: place(data) returns
    a writable memoryview of len(data) bytes that ends where the guard page
    begins, so the parser reading one byte past it faults."""

    def __init__(self, size: int = 1 << 17):
        page = mmap.PAGESIZE
        self.size = (size + page - 1) // page * page
        self.map = mmap.mmap(-1, self.size + page)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        if _libc.mprotect(self.base + self.size, page, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
        self.view = memoryview(self.map)

    def place(self, data: bytes) -> memoryview:
        n = len(data)
        assert n <= self.size
        self.view[self.size - n:self.size] = data
        return self.view[self.size - n:self.size]


GUARD = GuardPage()


def _head_feed(cls, raw: bytes, cuts: list[int]):
    """A resumable head parser fed the prefixes raw[:c] for c in cuts, then
    raw, each at the guard page (a new address each time)."""
    p = cls()
    try:
        for c in cuts + [len(raw)]:
            r = p.feed(GUARD.place(raw[:c]))
            if r is not None:
                return ("ok", repr(r))
        return ("incomplete",)
    except http1.HttpParseError as e:
        return ("error", e.status, e.reason)


def _chunked_feed(raw: bytes, cuts: list[int]):
    d = http1.ChunkedDecoder()
    used, data = 0, []
    try:
        for a, b in zip([0] + cuts, cuts + [len(raw)]):
            n, chunks = d.feed(GUARD.place(raw[a:b]))
            used += n
            data += chunks
            if d.done:
                break
        return ("ok", used, b"".join(data), d.done)
    except http1.HttpParseError as e:
        return ("error", e.status, e.reason)


def _one_call(fn, raw: bytes):
    try:
        r = fn(GUARD.place(raw))
    except http1.HttpParseError as e:
        return ("error", e.status, e.reason)
    return ("incomplete",) if r is None else ("ok", repr(r))


def check_bytes(raw: bytes, cuts: list[int]) -> None:
    every = list(range(len(raw)))
    for cls, fn, statuses in ((http1.RequestParser, http1.parse_request, REQUEST_STATUSES),
                              (http1.ResponseParser, http1.parse_response, {502})):
        whole = _head_feed(cls, raw, [])
        assert _head_feed(cls, raw, every) == whole, raw
        assert _head_feed(cls, raw, cuts) == whole, (raw, cuts)
        assert _one_call(fn, raw) == whole, raw
        if whole[0] == "error":
            assert whole[1] in statuses, whole
    whole = _chunked_feed(raw, [])
    assert _chunked_feed(raw, every) == whole, raw
    assert _chunked_feed(raw, cuts) == whole, (raw, cuts)
    if whole[0] == "error":
        assert whole[1] in CHUNKED_STATUSES, whole


@st.composite
def bytes_and_cuts(draw, source):
    raw = draw(source)
    return raw, sorted(set(draw(st.lists(st.integers(0, len(raw)), max_size=6))))


@FAST
@given(bytes_and_cuts(st.binary(max_size=200)))
@example((b"", []))
@example((b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [3, 17]))
@example((b"HTTP/1.1 200 OK\r\n\r\n", [9]))
@example((b"5\r\nhello\r\n0\r\n\r\n", [1, 2, 3]))
def test_random_bytes_no_crash_same_result_however_fed(case):
    check_bytes(*case)


@FAST
@given(bytes_and_cuts(st.one_of(mutated("request"), mutated("response"), valid_request(),
                                valid_response())))
def test_near_valid_bytes_same_result_however_fed(case):
    raw, cuts = case
    check_bytes(raw, cuts)
    # a message body after its head, alone, through the chunked decoder
    head_end = raw.find(b"\r\n\r\n")
    if head_end >= 0:
        body = raw[head_end + 4:]
        assert _chunked_feed(body, list(range(len(body)))) == _chunked_feed(body, [])


def test_guard_page_traps():
    """The guard really is PROT_NONE (checked in a child: it must die)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        faulthandler.disable()  # no traceback for the expected fault
        try:
            ctypes.string_at(GUARD.base + GUARD.size, 1)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), "reading the guard page did not fault"


def test_limits_at_the_guard_page():
    """Inputs ending exactly at each limit, at the guard page."""
    for n in range(1, 40):
        head = b"GET /" + b"a" * n + b" HTTP/1.1\r\nHost: a\r\n\r\n"
        lim = len(head)
        for max_head in (lim - 1, lim, lim + 1):
            for cut in range(len(head) + 1):
                try:
                    http1.RequestParser(max_head_bytes=max_head).feed(GUARD.place(head[:cut]))
                except http1.HttpParseError as e:
                    assert e.status in (414, 431)


# ---- 5. the fuzz corpus ------------------------------------------------------------------


def _fuzz_harness():
    spec = importlib.util.spec_from_file_location("fuzz_http1", ROOT / "tests/fuzz/fuzz_http1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.http1 = http1  # the harness imports it only when run as a program
    return mod


@pytest.mark.skipif(not CORPUS.is_dir(), reason="no seed corpus")
def test_fuzz_corpus_replays():
    harness = _fuzz_harness()
    files = sorted(CORPUS.iterdir())
    assert files
    for f in files:
        data = f.read_bytes()
        harness.TestOneInput(data)
        if data:
            check_bytes(data[1:], [len(data) // 2])


def test_httptools_is_the_reference():
    """The other implementation is really llhttp, and ours really is C."""
    assert hasattr(httptools, "HttpRequestParser")
    assert http1.simd() in ("sse4.2", "scalar")
