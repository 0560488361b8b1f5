"""csrc/detect.c (fastproxy._native.detect) against fastproxy/proto/detect.py.

The Python module states the detection rules; the C one must give the same
answer for every input. A table of cases, then hypothesis: random bytes, and
mutations of valid starts (HTTP/1 request lines, the HTTP/2 preface, TLS
record headers, a real ClientHello). Every case is compared on each of its
prefixes, as bytes, bytearray and memoryview.
"""
import ssl

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastproxy._native import detect as native
from fastproxy.proto import detect as py
from fastproxy.proto.detect import H2_PREFACE, HTTP1, HTTP2, MAX_DETECT_BYTES, NEED_MORE, OPAQUE, TLS

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def client_hello() -> bytes:
    """A real ClientHello, as Python's OpenSSL writes it (no socket)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    out = ssl.MemoryBIO()
    conn = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="api.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return out.read()


HELLO = client_hello()

# name, first bytes, what the whole input is
CASES = [
    ("h2 preface", H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", HTTP2),
    ("h2 preface, last byte wrong", H2_PREFACE[:-1] + b"X", OPAQUE),
    ("PRI with HTTP/1.1", b"PRI * HTTP/1.1\r\n\r\n", OPAQUE),
    ("h2 preface after CRLF", b"\r\n" + H2_PREFACE, OPAQUE),
    ("OpenSSL ClientHello", HELLO, TLS),
    ("TLS 3.4 record", b"\x16\x03\x04\x00\x01\x01", TLS),
    ("TLS 3.5 record", b"\x16\x03\x05\x00\x01\x01", OPAQUE),
    ("TLS record length 0", b"\x16\x03\x01\x00\x00\x01", OPAQUE),
    ("TLS record length 2^14", b"\x16\x03\x01\x40\x00\x01", TLS),
    ("TLS record length 2^14 + 1", b"\x16\x03\x01\x40\x01\x01", OPAQUE),
    ("TLS ServerHello", b"\x16\x03\x03\x00\x30\x02", OPAQUE),
    ("SSLv2 hello", b"\x80\x2e\x01\x03\x01\x00\x15", OPAQUE),
    ("GET /", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1),
    ("PUT /", b"PUT /x HTTP/1.1\r\n", HTTP1),
    ("two empty lines", b"\r\n\r\nDELETE /x HTTP/1.1\r\n", HTTP1),
    ("three empty lines", b"\r\n\r\n\r\nGET / HTTP/1.1\r\n", OPAQUE),
    ("CR CR", b"\r\rGET / HTTP/1.1\r\n", OPAQUE),
    ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\n", HTTP1),
    ("GET *", b"GET * HTTP/1.1\r\n", OPAQUE),
    ("M-SEARCH *", b"M-SEARCH * HTTP/1.1\r\n", OPAQUE),
    ("CONNECT host", b"CONNECT a.example:443 HTTP/1.1\r\n", HTTP1),
    ("CONNECT [v6]", b"CONNECT [::1]:443 HTTP/1.1\r\n", HTTP1),
    ("CONNECT :port", b"CONNECT :443 HTTP/1.1\r\n", OPAQUE),
    ("absolute-form", b"GET http://a/ HTTP/1.1\r\n", HTTP1),
    ("scheme + - .", b"GET a+b-c.d://x HTTP/1.1\r\n", HTTP1),
    ("16-byte scheme", b"GET " + b"s" * 16 + b"://x HTTP/1.1\r\n", HTTP1),
    ("17-byte scheme", b"GET " + b"s" * 17 + b"://x HTTP/1.1\r\n", OPAQUE),
    ("scheme :/x", b"GET http:/x HTTP/1.1\r\n", OPAQUE),
    ("relative path", b"GET index.html HTTP/1.1\r\n", OPAQUE),
    ("longest decision", b"\r\n\r\nBASELINE-CONTROL " + b"a" * 16 + b"://x/ HTTP/1.1\r\n", HTTP1),
    ("longest, scheme too long", b"\r\n\r\nBASELINE-CONTROL " + b"a" * 17 + b"://x/ HTTP/1.1\r\n", OPAQUE),
    ("17 method bytes", b"BASELINE-CONTROLS / HTTP/1.1\r\n", OPAQUE),
    ("lower-case method", b"get / HTTP/1.1\r\n", OPAQUE),
    ("unknown method", b"BREW /pot HTTP/1.1\r\n", OPAQUE),
    ("empty method", b" / HTTP/1.1\r\n", OPAQUE),
    ("NUL in method", b"GE\x00T / HTTP/1.1\r\n", OPAQUE),
    ("Redis PING", b"PING\r\n", OPAQUE),
    ("Redis RESP", b"*1\r\n$4\r\nPING\r\n", OPAQUE),
    ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n", OPAQUE),
    ("PostgreSQL SSLRequest", b"\x00\x00\x00\x08\x04\xd2\x16\x2f", OPAQUE),
]


def assert_same(data: bytes) -> None:
    """C == Python on every prefix of data, for each bytes-like type."""
    for n in range(len(data) + 1):
        part = data[:n]
        want = py.detect(part)
        got = native.detect(part)
        assert got == want, f"{part!r}: C says {got}, Python {want}"
        assert native.detect(bytearray(part)) == want
        assert native.detect(memoryview(data)[:n]) == want
        if n >= MAX_DETECT_BYTES:
            assert got != NEED_MORE


@pytest.mark.parametrize("name,data,protocol", CASES, ids=[c[0] for c in CASES])
def test_table(name, data, protocol):
    assert py.detect(data) == protocol
    assert_same(data)


def test_constants():
    assert native.MAX_DETECT_BYTES == MAX_DETECT_BYTES
    codes = {native.CODE_NEED_MORE: NEED_MORE, native.CODE_HTTP1: HTTP1,
             native.CODE_HTTP2: HTTP2, native.CODE_TLS: TLS, native.CODE_OPAQUE: OPAQUE}
    assert len(codes) == 5
    for data in (b"", b"GET /", H2_PREFACE, HELLO, b"\x00"):
        assert codes[native.detect_code(data)] == native.detect(data)


def test_every_method():
    for method in sorted(py.METHODS):
        for target in (b"/", b"*", b"h2c://x", b"a.example:80", b"[::1]:80", b"-"):
            assert_same(method + b" " + target + b" HTTP/1.1\r\n")
        assert_same(method + b"X / HTTP/1.1\r\n")
        assert_same(method[:-1] + b" / HTTP/1.1\r\n")


def test_words_that_are_not_methods():
    # llhttp's and others' methods outside METHODS, near misses, other protocols' verbs
    for word in (b"SOURCE", b"PRI", b"BREW", b"GETS", b"GE", b"PROPFIN", b"M-SEARCHX",
                 b"BASELINE-CONTROLS", b"get", b"Get", b"EHLO", b"PING", b"SET", b"AUTH",
                 b"QUERYS", b"UN", b"UNLOCKED"):
        assert_same(word + b" / HTTP/1.1\r\n")
        assert py.detect(word + b" / HTTP/1.1\r\n") == OPAQUE


def test_rejects_non_buffers():
    with pytest.raises(TypeError):
        native.detect("GET / HTTP/1.1")
    with pytest.raises(TypeError):
        native.detect(None)


# ---- properties ---------------------------------------------------------------

# bytes the rules look at, so that mutations keep reaching the later rules
INTERESTING = b"\r\n /*:[.+-_PRIGETOSCNMHDLUAQabhtps019\x00\x01\x02\x03\x04\x16\x40\xff"

START_SEEDS = [
    H2_PREFACE,
    HELLO[:16],
    b"\x16\x03\x01\x00\x01\x01",
    b"\x16\x03\x03\x40\x00\x01",
    b"GET / HTTP/1.1\r\n",
    b"\r\nPOST /x HTTP/1.1\r\n",
    b"\r\n\r\nHEAD http://a/ HTTP/1.0\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"CONNECT [::1]:443 HTTP/1.1\r\n",
    b"M-SEARCH * HTTP/1.1\r\n",
    b"PATCH coap+tcp://x/ HTTP/1.1\r\n",
    b"\r\n\r\nBASELINE-CONTROL " + b"a" * 16 + b"://x/ HTTP/1.1\r\n",
    b"UNSUBSCRIBE abcdefghijklmno:// HTTP/1.1\r\n",
]

interesting_byte = st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255))


@st.composite
def mutated_start(draw):
    """A valid first line with a few bytes replaced, inserted or deleted."""
    data = bytearray(draw(st.sampled_from(START_SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(("replace", "insert", "delete", "truncate")))
        if op == "insert":
            data.insert(pos, draw(interesting_byte))
        elif pos == len(data):
            continue
        elif op == "replace":
            data[pos] = draw(interesting_byte)
        elif op == "delete":
            del data[pos]
        else:
            del data[pos:]
    return bytes(data)


@SETTINGS
@given(st.binary(max_size=MAX_DETECT_BYTES + 8))
@example(b"")
@example(b"\r")
@example(b"\x16")
def test_random_bytes(data):
    assert_same(data)


@SETTINGS
@given(st.lists(st.sampled_from(INTERESTING), max_size=MAX_DETECT_BYTES + 4).map(bytes))
def test_random_interesting_bytes(data):
    assert_same(data)


@SETTINGS
@given(mutated_start())
def test_mutated_starts(data):
    assert_same(data)


@SETTINGS
@given(st.sampled_from(sorted(py.METHODS)),
       st.binary(max_size=4).map(lambda b: b.replace(b" ", b"")),
       st.text("abcxyz019+-.:/[]*", max_size=24).map(str.encode))
def test_method_and_target(method, junk, target):
    assert_same(b"\r\n" * (len(junk) % 3) + method + junk + b" " + target)
