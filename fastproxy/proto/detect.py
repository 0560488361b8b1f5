"""Which protocol a connection speaks, from its first bytes. Pure, sans-IO.

    detect(data)             -> NEED_MORE | HTTP1 | HTTP2 | TLS | OPAQUE
    parse_client_hello(data) -> ClientHello (SNI, ALPN) | None (need more)
    skips_detection(port)    -> the port is opaque: relay without looking

`data` is everything the client sent so far (bytes-like). detect() decides
as early as the bytes allow: OPAQUE as soon as no rule can match any more,
NEED_MORE while a rule could still match, and never NEED_MORE once
len(data) >= MAX_DETECT_BYTES. The caller gives up waiting after its
detection timeout (FASTPROXY_DETECT_TIMEOUT_MS): a client that sends nothing
speaks a server-first protocol and is OPAQUE.

The rules, in order:

HTTP2   the connection preface "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n" (RFC 9113
        §3.4), all 24 bytes; a proper prefix of it is NEED_MORE.
TLS     a TLS record header (RFC 8446 §5.1) of a handshake (22), version 3.x
        with x <= 4, length 1..2^14, whose first byte is a ClientHello (1):
        decided at 6 bytes. parse_client_hello() then reads the whole hello.
        (SSLv2-compatible hellos are OPAQUE.)
HTTP1   at most MAX_EMPTY_LINES empty lines (CRLF, RFC 9112 §2.2), a known
        method (METHODS, case-sensitive), one SP, and the start of a
        request-target that fits the method: '/' (origin-form), '*' with
        OPTIONS, an authority character with CONNECT, or otherwise a scheme
        of at most MAX_SCHEME_LEN characters followed by "://" (absolute-
        form). The rest of the line is left to the HTTP/1 parser. A method
        outside METHODS (the HTTP/1 parser accepts any token) is OPAQUE: a
        text protocol such as memcached's or Redis' inline commands also
        starts with a word and a space.
OPAQUE  anything else.
"""
from __future__ import annotations

from collections.abc import Collection

NEED_MORE = "need_more"
HTTP1 = "http1"
HTTP2 = "http2"
TLS = "tls"
OPAQUE = "opaque"

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Ports whose protocols are server-first or otherwise never detected (Istio's
# default set): SMTP, submission, MySQL, 4444, PostgreSQL, Redis,
# Elasticsearch transport, memcached.
DEFAULT_OPAQUE_PORTS = frozenset({25, 587, 3306, 4444, 5432, 6379, 9300, 11211})

# Registered methods (RFC 9110, 5789, 4918, 3253, 3648, 3744, 4791, 5323,
# 5842, 2068's LINK/UNLINK), the common cache PURGE, UPnP's, and QUERY.
METHODS = frozenset(m.encode() for m in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK",
    "VERSION-CONTROL", "REPORT", "CHECKOUT", "CHECKIN", "UNCHECKOUT", "MKWORKSPACE",
    "UPDATE", "LABEL", "MERGE", "BASELINE-CONTROL", "MKACTIVITY", "ORDERPATCH", "ACL",
    "MKCALENDAR", "SEARCH", "BIND", "UNBIND", "REBIND", "LINK", "UNLINK", "PURGE",
    "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "QUERY"))
MAX_METHOD_LEN = max(len(m) for m in METHODS)
_METHOD_PREFIXES = frozenset(m[:i] for m in METHODS for i in range(1, len(m) + 1))

MAX_EMPTY_LINES = 2
MAX_SCHEME_LEN = 16
MAX_DETECT_BYTES = max(len(H2_PREFACE),
                       2 * MAX_EMPTY_LINES + MAX_METHOD_LEN + 1 + MAX_SCHEME_LEN + 3)

# The largest ClientHello handshake message parse_client_hello() reads (as
# Envoy's tls_inspector): above it the hello is refused.
MAX_CLIENT_HELLO_BYTES = 64 * 1024
MAX_RECORD_BYTES = 1 << 14

_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_SCHEME_CHARS = _ALPHA | frozenset(b"0123456789+-.")
_AUTHORITY_START = _ALPHA | frozenset(b"0123456789[")
_HOST_NAME_CHARS = _ALPHA | frozenset(b"0123456789-._")


def skips_detection(port: int, opaque_ports: Collection[int] = DEFAULT_OPAQUE_PORTS) -> bool:
    """True when connections to this port are relayed as TCP at once."""
    return port in opaque_ports


def detect(data: bytes | bytearray | memoryview) -> str:
    """NEED_MORE, HTTP1, HTTP2, TLS or OPAQUE for a connection's first bytes."""
    n = len(data)
    if n == 0:
        return NEED_MORE
    b0 = data[0]
    if b0 == 0x16:
        return _tls_record(data, n)
    if isinstance(data, memoryview):
        data = bytes(data[:MAX_DETECT_BYTES])  # nothing past it is looked at
        n = len(data)
    if b0 == 0x50:  # 'P': the HTTP/2 preface, or POST, PUT, PATCH...
        k = n if n < len(H2_PREFACE) else len(H2_PREFACE)
        if data[:k] == H2_PREFACE[:k]:
            return HTTP2 if k == len(H2_PREFACE) else NEED_MORE
    return _http1(data, n)


def _tls_record(data, n: int) -> str:
    if n < 2:
        return NEED_MORE
    if data[1] != 3:
        return OPAQUE
    if n < 3:
        return NEED_MORE
    if data[2] > 4:
        return OPAQUE
    if n < 5:
        return NEED_MORE
    length = (data[3] << 8) | data[4]
    if not 1 <= length <= MAX_RECORD_BYTES:
        return OPAQUE
    if n < 6:
        return NEED_MORE
    return TLS if data[5] == 1 else OPAQUE


def _http1(data: bytes | bytearray, n: int) -> str:
    i = 0
    while data[i] == 0x0D:  # empty lines
        if i >= 2 * MAX_EMPTY_LINES:
            return OPAQUE
        if i + 1 >= n:
            return NEED_MORE
        if data[i + 1] != 0x0A:
            return OPAQUE
        i += 2
        if i >= n:
            return NEED_MORE
    sp = data.find(b" ", i, i + MAX_METHOD_LEN + 1)
    if sp < 0:
        return NEED_MORE if bytes(data[i:i + MAX_METHOD_LEN + 1]) in _METHOD_PREFIXES else OPAQUE
    method = bytes(data[i:sp])
    if method not in METHODS:
        return OPAQUE
    k = sp + 1
    if k >= n:
        return NEED_MORE
    c = data[k]
    if c == 0x2F:  # '/'
        return HTTP1
    if c == 0x2A:  # '*'
        return HTTP1 if method == b"OPTIONS" else OPAQUE
    if method == b"CONNECT":
        return HTTP1 if c in _AUTHORITY_START else OPAQUE
    if c not in _ALPHA:
        return OPAQUE
    m = k + 1
    while m < n and m - k < MAX_SCHEME_LEN and data[m] in _SCHEME_CHARS:
        m += 1
    if m >= n:
        return NEED_MORE
    tail = bytes(data[m:m + 3])
    if tail == b"://":
        return HTTP1
    return NEED_MORE if len(tail) < 3 and b"://".startswith(tail) else OPAQUE


# ---- TLS ClientHello (RFC 8446 §4.1.2; RFC 5246 §7.4.1.2) --------------------

EXT_SERVER_NAME = 0       # RFC 6066 §3
EXT_ALPN = 16             # RFC 7301 §3.1


class ClientHelloError(ValueError):
    """The bytes are not a well-formed TLS ClientHello (or it is too large)."""


class ClientHello:
    """What a ClientHello says about where it is going.

    sni: the host_name of the server_name extension, lower-cased (None if
    absent); alpn: the protocol names offered, in order (latin-1 decoded);
    length: bytes of data (whole records) that carried the hello."""

    __slots__ = ("sni", "alpn", "length")

    def __init__(self, sni: str | None, alpn: tuple[str, ...], length: int):
        self.sni = sni
        self.alpn = alpn
        self.length = length

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ClientHello) and self.sni == other.sni
                and self.alpn == other.alpn and self.length == other.length)

    def __repr__(self) -> str:
        return f"ClientHello(sni={self.sni!r}, alpn={self.alpn!r}, length={self.length})"


class _Reader:
    """Bounds-checked big-endian reads over buf[pos:end]."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int, end: int):
        self.buf = buf
        self.pos = pos
        self.end = end

    def take(self, k: int, what: str) -> int:
        """Skips k bytes, returning where they start."""
        p = self.pos
        if k > self.end - p:
            raise ClientHelloError(f"truncated {what}")
        self.pos = p + k
        return p

    def u8(self, what: str) -> int:
        return self.buf[self.take(1, what)]

    def u16(self, what: str) -> int:
        p = self.take(2, what)
        return (self.buf[p] << 8) | self.buf[p + 1]

    def vector(self, len_bytes: int, what: str) -> _Reader:
        """The variable-length vector that follows, as a sub-reader."""
        k = self.u8(what) if len_bytes == 1 else self.u16(what)
        p = self.take(k, what)
        return _Reader(self.buf, p, p + k)

    @property
    def left(self) -> int:
        return self.end - self.pos


def parse_client_hello(data: bytes | bytearray | memoryview) -> ClientHello | None:
    """The ClientHello at the start of data, or None while more bytes are
    needed (data is a proper prefix of one). The hello may span several
    handshake records. Raises ClientHelloError when the bytes cannot be one,
    or the hello is over MAX_CLIENT_HELLO_BYTES."""
    n = len(data)
    pos = 0
    frags: list[bytes] = []
    have = 0
    need = -1  # bytes of the handshake message (header included), once known
    while need < 0 or have < need:
        if n - pos < 5:
            return None
        if data[pos] != 22:
            raise ClientHelloError("not a handshake record")
        if data[pos + 1] != 3 or data[pos + 2] > 4:
            raise ClientHelloError("not a TLS 1.x record")
        length = (data[pos + 3] << 8) | data[pos + 4]
        if not 1 <= length <= MAX_RECORD_BYTES:
            raise ClientHelloError("bad record length")
        if n - pos - 5 < length:
            return None
        frags.append(bytes(data[pos + 5:pos + 5 + length]))
        have += length
        pos += 5 + length
        if need < 0 and have >= 4:
            head = frags[0] if len(frags[0]) >= 4 else b"".join(frags)
            if head[0] != 1:
                raise ClientHelloError("not a ClientHello")
            need = 4 + ((head[1] << 16) | (head[2] << 8) | head[3])
            if need - 4 > MAX_CLIENT_HELLO_BYTES:
                raise ClientHelloError("ClientHello too large")
    msg = frags[0] if len(frags) == 1 else b"".join(frags)
    if have > need:
        # the hello must end where its last record ends: nothing else is
        # expected in the client's first handshake flight's records
        raise ClientHelloError("trailing bytes after the ClientHello")
    sni, alpn = _client_hello_body(_Reader(msg, 4, need))
    return ClientHello(sni, alpn, pos)


def _client_hello_body(r: _Reader) -> tuple[str | None, tuple[str, ...]]:
    version = r.u16("legacy_version")
    if version >> 8 != 3:
        raise ClientHelloError("not a TLS 1.x ClientHello")
    r.take(32, "random")
    session = r.vector(1, "legacy_session_id")
    if session.left > 32:
        raise ClientHelloError("legacy_session_id over 32 bytes")
    suites = r.vector(2, "cipher_suites")
    if suites.left < 2 or suites.left % 2:
        raise ClientHelloError("bad cipher_suites")
    if r.vector(1, "compression_methods").left < 1:
        raise ClientHelloError("no compression_methods")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    if r.left == 0:  # no extensions (TLS 1.2 and older may omit them)
        return sni, alpn
    exts = r.vector(2, "extensions")
    if r.left:
        raise ClientHelloError("bytes after the extensions")
    seen = set()
    while exts.left:
        ext_type = exts.u16("extension type")
        body = exts.vector(2, "extension data")
        if ext_type in seen:
            raise ClientHelloError(f"extension {ext_type} twice")
        seen.add(ext_type)
        if ext_type == EXT_SERVER_NAME:
            sni = _server_name(body)
        elif ext_type == EXT_ALPN:
            alpn = _alpn(body)
    return sni, alpn


def _server_name(body: _Reader) -> str | None:
    names = body.vector(2, "server_name_list")
    if body.left or names.left == 0:
        raise ClientHelloError("bad server_name extension")
    host = None
    while names.left:
        name_type = names.u8("name_type")
        name = names.vector(2, "server name")
        if name_type == 0 and host is None:  # host_name
            raw = name.buf[name.pos:name.end]
            if not raw or any(c not in _HOST_NAME_CHARS for c in raw):
                raise ClientHelloError("bad host_name")
            host = raw.decode("ascii").lower()
    return host


def _alpn(body: _Reader) -> tuple[str, ...]:
    names = body.vector(2, "protocol_name_list")
    if body.left or names.left == 0:
        raise ClientHelloError("bad ALPN extension")
    out = []
    while names.left:
        proto = names.vector(1, "protocol name")
        if proto.left == 0:
            raise ClientHelloError("empty ALPN protocol name")
        out.append(proto.buf[proto.pos:proto.end].decode("latin-1"))
    return tuple(out)
