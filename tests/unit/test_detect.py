"""Protocol detection (fastproxy/proto/detect.py): tables of first bytes.

Every sample is also fed as each of its prefixes: below its decision point
the answer is NEED_MORE, from it on the final one, whatever follows.
"""
import random
import ssl
import struct

import pytest

from fastproxy.proto import detect as d
from fastproxy.proto.detect import (
    DEFAULT_OPAQUE_PORTS, H2_PREFACE, HTTP1, HTTP2, MAX_DETECT_BYTES, NEED_MORE, OPAQUE, TLS,
    ClientHello, ClientHelloError, detect, parse_client_hello, skips_detection)


def openssl_hello(sni="api.example.com", alpn=("h2", "http/1.1"), tls12=False):
    """A real ClientHello, as Python's OpenSSL writes it (no socket)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if sni is None:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    out = ssl.MemoryBIO()
    conn = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return out.read()


HELLO = openssl_hello()
HELLO_NO_SNI = openssl_hello(sni=None, alpn=())
HELLO_TLS12 = openssl_hello(sni="legacy.internal", alpn=("http/1.1",), tls12=True)

# name, first bytes, protocol, length of the shortest prefix that decides
SAMPLES = [
    # ---- HTTP/1.x ----
    ("GET origin-form", b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1, 5),
    ("POST", b"POST /upload HTTP/1.1\r\nContent-Length: 0\r\n\r\n", HTTP1, 6),
    ("PUT (shares P with the h2 preface)", b"PUT /x HTTP/1.1\r\n\r\n", HTTP1, 5),
    ("PATCH", b"PATCH /x HTTP/1.1\r\n\r\n", HTTP1, 7),
    ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1, 9),
    ("CONNECT authority-form", b"CONNECT db.example:5432 HTTP/1.1\r\n\r\n", HTTP1, 9),
    ("CONNECT IPv6 literal", b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n", HTTP1, 9),
    ("CONNECT with a path is HTTP (the parser answers 400)", b"CONNECT /x HTTP/1.1\r\n", HTTP1, 9),
    ("absolute-form", b"GET http://a.example/ HTTP/1.1\r\n\r\n", HTTP1, 11),
    ("absolute-form, other scheme", b"GET coap+tcp://a/ HTTP/1.1\r\n", HTTP1, 15),
    ("empty lines first", b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", HTTP1, 9),
    ("WebDAV PROPFIND", b"PROPFIND /dav HTTP/1.1\r\n\r\n", HTTP1, 10),
    ("HTTP/1.0", b"HEAD / HTTP/1.0\r\n\r\n", HTTP1, 6),
    ("longest method, longest scheme (MAX_DETECT_BYTES)",
     b"\r\n\r\nBASELINE-CONTROL " + b"a" * 16 + b"://x/ HTTP/1.1\r\n", HTTP1, MAX_DETECT_BYTES),
    # ---- HTTP/2 ----
    ("h2 preface", H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", HTTP2, 24),
    ("h2 preface alone", H2_PREFACE, HTTP2, 24),
    # ---- TLS ----
    ("TLS 1.3 ClientHello (OpenSSL)", HELLO, TLS, 6),
    ("TLS 1.2 ClientHello (OpenSSL)", HELLO_TLS12, TLS, 6),
    ("ClientHello without SNI", HELLO_NO_SNI, TLS, 6),
    ("TLS record version 3.0", b"\x16\x03\x00\x00\x30\x01\x00\x00\x2c", TLS, 6),
    # ---- opaque ----
    ("Redis RESP", b"*1\r\n$4\r\nPING\r\n", OPAQUE, 1),
    ("Redis inline PING", b"PING\r\n", OPAQUE, 2),
    ("Redis inline SET (a word and a space)", b"SET k v\r\n", OPAQUE, 3),
    ("memcached", b"get foo\r\n", OPAQUE, 1),
    ("lower-case method", b"get / HTTP/1.1\r\n", OPAQUE, 1),
    ("PostgreSQL SSLRequest", b"\x00\x00\x00\x08\x04\xd2\x16\x2f", OPAQUE, 1),
    ("SMTP client first", b"EHLO client.example\r\n", OPAQUE, 1),
    ("unknown method", b"BREW /pot HTTP/1.1\r\n", OPAQUE, 2),
    ("method prefix then space", b"GE / HTTP/1.1\r\n", OPAQUE, 3),
    ("method too long", b"GETGETGETGETGETGETGET / HTTP/1.1\r\n", OPAQUE, 4),
    ("two spaces after the method", b"GET  / HTTP/1.1\r\n", OPAQUE, 5),
    ("tab after the method", b"GET\t/ HTTP/1.1\r\n", OPAQUE, 4),
    ("* with GET", b"GET * HTTP/1.1\r\n", OPAQUE, 5),
    ("target starting with a digit", b"GET 1://x HTTP/1.1\r\n", OPAQUE, 5),
    ("scheme without ://", b"GET http:x HTTP/1.1\r\n", OPAQUE, 10),
    ("scheme over MAX_SCHEME_LEN", b"GET " + b"a" * 17 + b"://x HTTP/1.1\r\n", OPAQUE, 21),
    ("CONNECT with junk", b"CONNECT -x HTTP/1.1\r\n", OPAQUE, 9),
    ("three empty lines", b"\r\n\r\n\r\nGET / HTTP/1.1\r\n", OPAQUE, 5),
    ("bare CR", b"\rGET / HTTP/1.1\r\n", OPAQUE, 2),
    ("PRI but not the preface", b"PRI * HTTP/1.1\r\n\r\n", OPAQUE, 12),
    ("h2 preface with a wrong end", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r", OPAQUE, 24),
    ("TLS alert record", b"\x15\x03\x03\x00\x02\x02\x28", OPAQUE, 1),
    ("TLS record version 2.x", b"\x16\x02\x00\x00\x10\x01", OPAQUE, 2),
    ("TLS record version 3.5", b"\x16\x03\x05\x00\x10\x01", OPAQUE, 3),
    ("TLS zero-length record", b"\x16\x03\x01\x00\x00\x01", OPAQUE, 5),
    ("TLS record over 2^14", b"\x16\x03\x03\x40\x01\x01", OPAQUE, 5),
    ("TLS ServerHello (not a client's)", b"\x16\x03\x03\x00\x2a\x02\x00\x00\x26", OPAQUE, 6),
    ("SSLv2-compatible hello", b"\x80\x2e\x01\x03\x01\x00\x15", OPAQUE, 1),
    ("NUL bytes", b"\x00" * 8, OPAQUE, 1),
]


@pytest.mark.parametrize("name,data,protocol,decided_at", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_every_prefix(name, data, protocol, decided_at):
    assert decided_at <= MAX_DETECT_BYTES
    assert decided_at <= len(data)
    for n in range(len(data) + 1):
        want = NEED_MORE if n < decided_at else protocol
        got = detect(data[:n])
        assert got == want, f"prefix of {n} bytes {data[:n]!r}: {got}, expected {want}"


@pytest.mark.parametrize("name,data,protocol,decided_at", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_bytes_like_inputs(name, data, protocol, decided_at):
    for n in (decided_at - 1, decided_at, len(data)):
        want = detect(data[:n])
        assert detect(bytearray(data[:n])) == want
        assert detect(memoryview(data)[:n]) == want


def test_never_need_more_past_max_detect_bytes():
    rng = random.Random(3)
    alphabets = [bytes(range(256)), b"GETPOSTHEADPRI */:\r\nhtp", b"\r\n \x16\x03\x01"]
    for i in range(3000):
        alphabet = alphabets[i % 3]
        data = bytes(rng.choice(alphabet) for _ in range(MAX_DETECT_BYTES))
        assert detect(data) != NEED_MORE, data
    assert detect(b"") == NEED_MORE


def test_opaque_ports():
    assert DEFAULT_OPAQUE_PORTS == {25, 587, 3306, 4444, 5432, 6379, 9300, 11211}
    for port in DEFAULT_OPAQUE_PORTS:
        assert skips_detection(port)
    for port in (80, 443, 8080, 15001, 15006, 3307):
        assert not skips_detection(port)
    assert skips_detection(8080, opaque_ports={8080})
    assert not skips_detection(3306, opaque_ports=frozenset())


# ---- ClientHello ---------------------------------------------------------------


def ext(ext_type, body):
    return struct.pack("!HH", ext_type, len(body)) + body


def sni_ext(*names, name_type=0):
    entries = b"".join(struct.pack("!BH", name_type, len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def alpn_ext(*protos):
    entries = b"".join(bytes([len(p)]) + p for p in protos)
    return ext(16, struct.pack("!H", len(entries)) + entries)


def hello_msg(exts=None, *, version=b"\x03\x03", session=b"\x11" * 32, suites=b"\x13\x01\x00\x2f",
              comp=b"\x00", tail=b""):
    """A ClientHello handshake message; exts None: no extensions block."""
    body = version + b"\x5a" * 32 + bytes([len(session)]) + session
    body += struct.pack("!H", len(suites)) + suites + bytes([len(comp)]) + comp
    if exts is not None:
        joined = b"".join(exts)
        body += struct.pack("!H", len(joined)) + joined
    body += tail
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(msg, sizes=(), record_version=b"\x03\x01", content_type=22):
    """msg split into handshake records of the given sizes (then the rest)."""
    out, pos = b"", 0
    for size in (*sizes, len(msg)):
        piece = msg[pos:pos + size]
        if piece or pos == 0:
            out += bytes([content_type]) + record_version + struct.pack("!H", len(piece)) + piece
        pos += len(piece)
    return out


SNI_ALPN = [sni_ext(b"Svc.Example.com"), alpn_ext(b"h2", b"http/1.1")]
LONG_EXTS = [ext(10, b"\x00\x04\x00\x1d\x00\x17"), *SNI_ALPN, ext(0xFE0D, b"\x00" * 3000)]

# name, bytes, expected ClientHello fields (sni, alpn) — the length is all of the bytes
HELLOS = [
    ("OpenSSL, SNI and ALPN", HELLO, ("api.example.com", ("h2", "http/1.1"))),
    ("OpenSSL, neither", HELLO_NO_SNI, (None, ())),
    ("OpenSSL TLS 1.2", HELLO_TLS12, ("legacy.internal", ("http/1.1",))),
    ("no extensions block", records(hello_msg(None)), (None, ())),
    ("empty extensions block", records(hello_msg([])), (None, ())),
    ("SNI lower-cased, ALPN in order", records(hello_msg(SNI_ALPN)),
     ("svc.example.com", ("h2", "http/1.1"))),
    ("ALPN before SNI, unknown extensions skipped",
     records(hello_msg([ext(43, b"\x02\x03\x04"), alpn_ext(b"h2"), ext(0xAAAA, b""),
                        sni_ext(b"a.b")])), ("a.b", ("h2",))),
    ("first host_name of several names", records(hello_msg([
        ext(0, struct.pack("!H", 12) + b"\x00\x00\x03one" + b"\x00\x00\x03two")])), ("one", ())),
    ("split inside the handshake header", records(hello_msg(SNI_ALPN), sizes=(2,)),
     ("svc.example.com", ("h2", "http/1.1"))),
    ("split over three records", records(hello_msg(SNI_ALPN), sizes=(10, 40)),
     ("svc.example.com", ("h2", "http/1.1"))),
    ("over one record (16 KiB)", records(hello_msg(LONG_EXTS + [ext(0xFE0E, b"\x01" * 16000)]),
                                         sizes=(16384,)), ("svc.example.com", ("h2", "http/1.1"))),
    ("record version 3.3, empty session id", records(hello_msg(SNI_ALPN, session=b""),
                                                     record_version=b"\x03\x03"),
     ("svc.example.com", ("h2", "http/1.1"))),
]


@pytest.mark.parametrize("name,data,want", HELLOS, ids=[h[0] for h in HELLOS])
def test_client_hello_and_every_prefix(name, data, want):
    assert detect(data) == TLS
    assert parse_client_hello(data) == ClientHello(*want, len(data))
    assert parse_client_hello(memoryview(data)) == ClientHello(*want, len(data))
    # what follows the hello's records is not looked at
    assert parse_client_hello(data + b"\x17\x03\x03\x00\x01X") == ClientHello(*want, len(data))
    for n in range(len(data)):
        assert parse_client_hello(data[:n]) is None, n


def hs_header(length):
    return b"\x01" + length.to_bytes(3, "big")


GOOD = hello_msg(SNI_ALPN)

# name, bytes, a phrase of the ClientHelloError message
BAD_HELLOS = [
    ("not a handshake record", records(GOOD, content_type=23), "not a handshake record"),
    ("record version 2", records(GOOD, record_version=b"\x02\x00"), "not a TLS 1.x record"),
    ("zero-length record", b"\x16\x03\x01\x00\x00", "bad record length"),
    ("record over 2^14", b"\x16\x03\x01\x40\x01" + b"\x00" * 16385, "bad record length"),
    ("ServerHello", records(b"\x02" + GOOD[1:]), "not a ClientHello"),
    ("hello over MAX_CLIENT_HELLO_BYTES", records(hs_header(d.MAX_CLIENT_HELLO_BYTES + 1)),
     "too large"),
    ("second record is not a handshake",
     records(GOOD[:10]) + records(GOOD[10:], content_type=21), "not a handshake record"),
    ("trailing handshake bytes", records(GOOD + b"\x14\x00\x00\x00"), "trailing bytes"),
    ("legacy_version 2.0", records(hello_msg(SNI_ALPN, version=b"\x02\x00")), "not a TLS 1.x"),
    ("message too short for random", records(hs_header(10) + b"\x03\x03" + b"\x00" * 8),
     "truncated random"),
    ("session id over 32", records(hello_msg(SNI_ALPN, session=b"\x00" * 33)), "over 32"),
    ("odd cipher_suites", records(hello_msg(SNI_ALPN, suites=b"\x13\x01\x00")), "cipher_suites"),
    ("no cipher_suites", records(hello_msg(SNI_ALPN, suites=b"")), "cipher_suites"),
    ("no compression methods", records(hello_msg(SNI_ALPN, comp=b"")), "compression"),
    ("extensions length past the end",
     records(hello_msg(None, tail=b"\x00\x10" + alpn_ext(b"h2"))), "truncated extensions"),
    ("bytes after the extensions", records(hello_msg(SNI_ALPN, tail=b"\x00")),
     "after the extensions"),
    ("extension data past the end",
     records(hello_msg([b"\x00\x10\x00\x20\x00\x01"])), "truncated extension data"),
    ("duplicate extension", records(hello_msg([alpn_ext(b"h2"), alpn_ext(b"h2")])), "twice"),
    ("empty server_name_list", records(hello_msg([ext(0, b"\x00\x00")])), "server_name"),
    ("server_name with junk after the list",
     records(hello_msg([ext(0, b"\x00\x04\x00\x00\x01a\x00")])), "server_name"),
    ("host_name with a space", records(hello_msg([sni_ext(b"a b")])), "host_name"),
    ("empty host_name", records(hello_msg([sni_ext(b"")])), "host_name"),
    ("host_name not ASCII", records(hello_msg([sni_ext("é.example".encode())])), "host_name"),
    ("host_name past its list", records(hello_msg([ext(0, b"\x00\x06\x00\x00\x09abc")])),
     "truncated server name"),
    ("empty ALPN protocol", records(hello_msg([alpn_ext(b"h2", b"")])), "empty ALPN"),
    ("empty ALPN list", records(hello_msg([ext(16, b"\x00\x00")])), "ALPN"),
    ("ALPN name past its list", records(hello_msg([ext(16, b"\x00\x03\x05h2")])),
     "truncated protocol name"),
]


@pytest.mark.parametrize("name,data,phrase", BAD_HELLOS, ids=[b[0] for b in BAD_HELLOS])
def test_malformed_client_hello(name, data, phrase):
    with pytest.raises(ClientHelloError, match=phrase):
        parse_client_hello(data)


def test_incomplete_hello_is_none_not_an_error():
    assert parse_client_hello(b"") is None
    assert parse_client_hello(b"\x16\x03\x01") is None
    # the hello's declared length is not there yet: more records must come
    assert parse_client_hello(records(GOOD[:100])) is None


def test_public_names_are_reexported():
    import fastproxy.proto as proto
    assert proto.detect is d  # the module stays reachable by its name
    assert proto.detect_protocol is detect
    for name in proto.__all__:
        if name != "detect_protocol":
            assert getattr(proto, name) is getattr(d, name)
