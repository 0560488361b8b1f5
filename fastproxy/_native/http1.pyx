# cython: language_level=3
"""Thin wrappers over csrc/http1.c: HTTP/1.1 heads, chunked bodies, framing.

The C contracts (grammar, resume, limits, error statuses) are in
csrc/http1.h; this module only converts between C offsets and Python bytes.

- ``parse_request`` / ``parse_response``: one call, one result. ``last_len``
  is picohttpparser's hint (the length of ``buf`` at the previous call that
  returned None): an unterminated head below the limits then returns None
  without being parsed again, and any error in it is reported once the head
  ends or reaches a limit. Use ``RequestParser`` / ``ResponseParser`` for a
  true resume, which validates every byte once, as it arrives.
- ``ChunkedDecoder``: a chunked body, fed in arbitrary pieces.
- ``request_framing`` / ``response_framing``: body length, keep-alive,
  Connection options, Expect and Upgrade from a parsed head.

Every rejection raises ``HttpParseError(status, reason)``: the HTTP status
to answer with (502 for what an upstream sent) and a short reason. Limits
are keyword arguments; 0 means the default.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint32_t
from libc.string cimport memcpy

# http1.pxd (the extern declarations of http1.h) is included implicitly.

cdef extern from "string.h" nogil:
    void *memmem(const void *haystack, size_t haystacklen, const void *needle,
                 size_t needlelen)

DEFAULT_MAX_HEAD_BYTES = HTTP1_DEFAULT_MAX_HEAD_BYTES
DEFAULT_MAX_HEADERS = HTTP1_DEFAULT_MAX_HEADERS
DEFAULT_MAX_LINE_BYTES = HTTP1_DEFAULT_MAX_LINE_BYTES
MAX_CHUNK_LINE_BYTES = HTTP1_MAX_CHUNK_LINE_BYTES

BODY_NONE = HTTP1_BODY_NONE
BODY_LENGTH = HTTP1_BODY_LENGTH
BODY_CHUNKED = HTTP1_BODY_CHUNKED
BODY_UNTIL_CLOSE = HTTP1_BODY_UNTIL_CLOSE
BODY_TUNNEL = HTTP1_BODY_TUNNEL
_BODY_NAMES = {BODY_NONE: "none", BODY_LENGTH: "length", BODY_CHUNKED: "chunked",
               BODY_UNTIL_CLOSE: "until_close", BODY_TUNNEL: "tunnel"}

cdef enum:
    STACK_HEADERS = 128  # header entries parse_request keeps on the C stack
    SPANS = 64           # chunk data spans per http1_chunked_decode call


class HttpParseError(ValueError):
    """The input was rejected: ``status`` is the HTTP status that applies
    (400, 413, 414, 431, 501, 505; 502 for a response), ``reason`` says why."""

    def __init__(self, status, reason):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self):
        return f"{self.status} {self.reason}"


def simd():
    """"sse4.2" or "scalar": the scanner compiled into this module."""
    return (<bytes>http1_simd()).decode("ascii")


cdef int _raise(const http1_error *e) except -1:
    reason = (<bytes>e.reason).decode("ascii") if e.reason != NULL else "invalid"
    raise HttpParseError(e.status, reason)


cdef int _limits(http1_limits *l, Py_ssize_t max_head_bytes, Py_ssize_t max_headers,
                 Py_ssize_t max_line_bytes) except -1:
    if not (0 <= max_head_bytes <= 0x7fffffff and 0 <= max_headers <= 0x7fffffff
            and 0 <= max_line_bytes <= 0x7fffffff):
        raise ValueError("limits must be in 0..2**31-1 (0: the default)")
    l.max_head_bytes = <uint32_t>max_head_bytes
    l.max_headers = <uint32_t>max_headers
    l.max_line_bytes = <uint32_t>max_line_bytes
    return 0


cdef inline int _acquire(object obj, Py_buffer *view, const char **ptr,
                         Py_ssize_t *n) except -1:
    """Points *ptr at obj's bytes; returns 1 if view must be released."""
    if type(obj) is bytes:
        ptr[0] = PyBytes_AS_STRING(obj)
        n[0] = PyBytes_GET_SIZE(obj)
        return 0
    PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    ptr[0] = <const char *>view.buf
    n[0] = view.len
    return 1


cdef inline bytes _span(const char *buf, http1_span s):
    return PyBytes_FromStringAndSize(buf + s.off, s.len)


cdef list _headers(const char *buf, const http1_header *h, uint32_t n):
    cdef list out = []
    cdef uint32_t i
    for i in range(n):
        out.append((_span(buf, h[i].name), _span(buf, h[i].value)))
    return out


cdef class ParsedRequest:
    """A complete request head; ``consumed`` bytes of the input were its."""
    cdef readonly Py_ssize_t consumed
    cdef readonly bytes method
    cdef readonly bytes target
    cdef readonly int version_minor
    cdef readonly list headers

    def __repr__(self):
        return (f"ParsedRequest(consumed={self.consumed}, method={self.method!r}, "
                f"target={self.target!r}, version_minor={self.version_minor}, "
                f"headers={self.headers!r})")


cdef class ParsedResponse:
    """A complete response head; ``consumed`` bytes of the input were its."""
    cdef readonly Py_ssize_t consumed
    cdef readonly int status
    cdef readonly bytes reason
    cdef readonly int version_minor
    cdef readonly list headers

    def __repr__(self):
        return (f"ParsedResponse(consumed={self.consumed}, status={self.status}, "
                f"reason={self.reason!r}, version_minor={self.version_minor}, "
                f"headers={self.headers!r})")


cdef ParsedRequest _request(const http1_parser *p, const char *buf):
    cdef ParsedRequest r = ParsedRequest.__new__(ParsedRequest)
    r.consumed = p.consumed
    r.method = _span(buf, p.method)
    r.target = _span(buf, p.target)
    r.version_minor = p.minor_version
    r.headers = _headers(buf, p.headers, p.num_headers)
    return r


cdef ParsedResponse _response(const http1_parser *p, const char *buf):
    cdef ParsedResponse r = ParsedResponse.__new__(ParsedResponse)
    r.consumed = p.consumed
    r.status = p.status
    r.reason = _span(buf, p.reason)
    r.version_minor = p.minor_version
    r.headers = _headers(buf, p.headers, p.num_headers)
    return r


cdef object _parse_once(bint is_request, object buf, Py_ssize_t last_len,
                        Py_ssize_t max_head_bytes, Py_ssize_t max_headers,
                        Py_ssize_t max_line_bytes):
    cdef http1_parser p
    cdef http1_limits lim
    cdef http1_header stack[STACK_HEADERS]
    cdef http1_header *hdrs = stack
    cdef Py_buffer view
    cdef const char *ptr
    cdef Py_ssize_t n, start
    cdef uint32_t cap
    cdef int rc, release

    _limits(&lim, max_head_bytes, max_headers, max_line_bytes)
    release = _acquire(buf, &view, &ptr, &n)
    try:
        if last_len < 0 or last_len > n:
            raise ValueError("last_len must be in 0..len(buf)")
        http1_parser_init(&p, NULL, 0, &lim)  # resolves the defaults
        if (last_len > 0 and n < <Py_ssize_t>p.limits.max_head_bytes
                and n < <Py_ssize_t>p.limits.max_line_bytes):
            start = last_len - 3 if last_len >= 3 else 0
            if memmem(ptr + start, <size_t>(n - start), b"\r\n\r\n", 4) == NULL:
                return None
        cap = p.limits.max_headers
        if cap > STACK_HEADERS:
            hdrs = <http1_header *>PyMem_Malloc(cap * sizeof(http1_header))
            if hdrs == NULL:
                raise MemoryError()
        try:
            http1_parser_init(&p, hdrs, cap, &lim)
            if is_request:
                rc = http1_parse_request(&p, ptr, <size_t>n)
            else:
                rc = http1_parse_response(&p, ptr, <size_t>n)
            if rc == HTTP1_INCOMPLETE:
                return None
            if rc == HTTP1_ERROR:
                _raise(&p.err)
            return _request(&p, ptr) if is_request else _response(&p, ptr)
        finally:
            if hdrs != stack:
                PyMem_Free(hdrs)
    finally:
        if release:
            PyBuffer_Release(&view)


def parse_request(buf, Py_ssize_t last_len=0, *, Py_ssize_t max_head_bytes=0,
                  Py_ssize_t max_headers=0, Py_ssize_t max_line_bytes=0):
    """Parses the request head at the start of ``buf`` (bytes-like).

    Returns None while the head is incomplete, else a ParsedRequest; raises
    HttpParseError. ``last_len``: see the module docstring."""
    return _parse_once(True, buf, last_len, max_head_bytes, max_headers, max_line_bytes)


def parse_response(buf, Py_ssize_t last_len=0, *, Py_ssize_t max_head_bytes=0,
                   Py_ssize_t max_headers=0, Py_ssize_t max_line_bytes=0):
    """Parses the response head at the start of ``buf``; as parse_request,
    with ParsedResponse and errors of status 502."""
    return _parse_once(False, buf, last_len, max_head_bytes, max_headers, max_line_bytes)


cdef class _HeadParser:
    cdef http1_parser _p
    cdef http1_header *_h
    cdef bint _request

    def __cinit__(self, *, Py_ssize_t max_head_bytes=0, Py_ssize_t max_headers=0,
                  Py_ssize_t max_line_bytes=0):
        cdef http1_limits lim
        _limits(&lim, max_head_bytes, max_headers, max_line_bytes)
        http1_parser_init(&self._p, NULL, 0, &lim)
        self._h = <http1_header *>PyMem_Malloc(self._p.limits.max_headers * sizeof(http1_header))
        if self._h == NULL:
            raise MemoryError()
        http1_parser_init(&self._p, self._h, self._p.limits.max_headers, &lim)

    def __dealloc__(self):
        PyMem_Free(self._h)

    def reset(self):
        """Forgets the message in progress: call it before the next one."""
        http1_parser_reset(&self._p)

    def feed(self, buf):
        """Parses ``buf``: everything received for this head so far (the
        bytes given to the previous call, then new ones). Returns None while
        incomplete; only the new bytes are examined."""
        cdef Py_buffer view
        cdef const char *ptr
        cdef Py_ssize_t n
        cdef int rc
        cdef int release = _acquire(buf, &view, &ptr, &n)
        try:
            if self._request:
                rc = http1_parse_request(&self._p, ptr, <size_t>n)
            else:
                rc = http1_parse_response(&self._p, ptr, <size_t>n)
            if rc == HTTP1_INCOMPLETE:
                return None
            if rc == HTTP1_ERROR:
                _raise(&self._p.err)
            return _request(&self._p, ptr) if self._request else _response(&self._p, ptr)
        finally:
            if release:
                PyBuffer_Release(&view)


cdef class RequestParser(_HeadParser):
    """A resumable request-head parser (one message at a time)."""

    def __init__(self, *, Py_ssize_t max_head_bytes=0, Py_ssize_t max_headers=0,
                 Py_ssize_t max_line_bytes=0):
        self._request = True


cdef class ResponseParser(_HeadParser):
    """A resumable response-head parser (one message at a time)."""

    def __init__(self, *, Py_ssize_t max_head_bytes=0, Py_ssize_t max_headers=0,
                 Py_ssize_t max_line_bytes=0):
        self._request = False


cdef class ChunkedDecoder:
    """A chunked body (RFC 9112 §7.1), fed in pieces of any size."""
    cdef http1_chunked _d

    def __cinit__(self, *, Py_ssize_t max_head_bytes=0, Py_ssize_t max_headers=0):
        cdef http1_limits lim
        _limits(&lim, max_head_bytes, max_headers, 0)
        http1_chunked_init(&self._d, &lim)

    @property
    def done(self):
        """True once the final CRLF has been consumed."""
        return bool(self._d.done)

    @property
    def body_bytes(self):
        """Data bytes decoded so far."""
        return self._d.body_bytes

    def feed(self, data):
        """Decodes the next bytes of the body. Returns (consumed, chunks):
        consumed is len(data) unless the body ended inside data (the rest
        belongs to the next message); chunks are the data bytes found."""
        cdef Py_buffer view
        cdef const char *ptr
        cdef Py_ssize_t n, pos = 0
        cdef http1_span spans[SPANS]
        cdef size_t ns, i
        cdef int64_t r
        cdef list chunks = []
        cdef int release = _acquire(data, &view, &ptr, &n)
        try:
            while pos < n and not self._d.done:
                r = http1_chunked_decode(&self._d, ptr + pos, <size_t>(n - pos), spans, SPANS,
                                         &ns)
                if r < 0:
                    _raise(&self._d.err)
                for i in range(ns):
                    chunks.append(_span(ptr + pos, spans[i]))
                pos += r
                if r == 0:
                    break
            return pos, chunks
        finally:
            if release:
                PyBuffer_Release(&view)


cdef class Framing:
    """How a message's body is delimited and what its connection fields say
    (see http1_framing in csrc/http1.h)."""
    cdef readonly int body
    cdef readonly object content_length
    cdef readonly bint keep_alive
    cdef readonly bint conn_close
    cdef readonly bint conn_keep_alive
    cdef readonly bint conn_upgrade
    cdef readonly bint upgrade
    cdef readonly bint expect_continue
    cdef readonly bint expect_other
    cdef readonly int content_length_index
    cdef readonly int transfer_encoding_index
    cdef readonly int host_index
    cdef readonly int upgrade_index
    cdef readonly list connection_tokens

    @property
    def body_name(self):
        return _BODY_NAMES[self.body]

    def __repr__(self):
        return (f"Framing(body={self.body_name}, content_length={self.content_length}, "
                f"keep_alive={self.keep_alive}, upgrade={self.upgrade}, "
                f"expect_continue={self.expect_continue}, "
                f"connection_tokens={self.connection_tokens!r})")


cdef object _framing(bint is_request, bytes method, int minor, list headers, int status,
                     bint req_head, bint req_connect):
    """Packs method and headers into one C buffer of spans, then frames."""
    cdef Py_ssize_t total = len(method), off = 0, k
    cdef uint32_t n = <uint32_t>len(headers), i
    cdef char *buf
    cdef http1_header *h
    cdef http1_span m
    cdef http1_framing f
    cdef int rc
    cdef bytes name, value
    cdef Framing r

    if minor not in (0, 1):
        raise ValueError("version_minor must be 0 or 1")
    for name, value in headers:
        total += len(name) + len(value)
    if total > 0xffffffff:
        raise ValueError("headers too large")
    buf = <char *>PyMem_Malloc(total + 1)
    h = <http1_header *>PyMem_Malloc((n + 1) * sizeof(http1_header))
    try:
        if buf == NULL or h == NULL:
            raise MemoryError()
        memcpy(buf, PyBytes_AS_STRING(method), len(method))
        m.off = 0
        m.len = <uint32_t>len(method)
        off = len(method)
        i = 0
        for name, value in headers:
            k = len(name)
            memcpy(buf + off, PyBytes_AS_STRING(name), k)
            h[i].name.off = <uint32_t>off
            h[i].name.len = <uint32_t>k
            off += k
            k = len(value)
            memcpy(buf + off, PyBytes_AS_STRING(value), k)
            h[i].value.off = <uint32_t>off
            h[i].value.len = <uint32_t>k
            off += k
            i += 1
        if is_request:
            rc = http1_request_framing(buf, m, minor, h, n, &f)
        else:
            rc = http1_response_framing(buf, status, minor, req_head, req_connect, h, n, &f)
        if rc < 0:
            _raise(&f.err)
        r = Framing.__new__(Framing)
        r.body = f.body
        r.content_length = f.content_length
        r.keep_alive = f.keep_alive
        r.conn_close = f.conn_close
        r.conn_keep_alive = f.conn_keep_alive
        r.conn_upgrade = f.conn_upgrade
        r.upgrade = f.upgrade
        r.expect_continue = f.expect_continue
        r.expect_other = f.expect_other
        r.content_length_index = f.content_length_index
        r.transfer_encoding_index = f.transfer_encoding_index
        r.host_index = f.host_index
        r.upgrade_index = f.upgrade_index
        r.connection_tokens = [_span(buf, f.conn_tokens[i])
                                          for i in range(f.num_conn_tokens)]
        return r
    finally:
        PyMem_Free(buf)
        PyMem_Free(h)


def request_framing(bytes method, int version_minor, list headers):
    """Framing of a request head (http1_request_framing): raises
    HttpParseError with 400, 413 or 501."""
    return _framing(True, method, version_minor, headers, 0, False, False)


def response_framing(int status, int version_minor, list headers, bytes request_method=b"GET"):
    """Framing of a response head answering a ``request_method`` request
    (http1_response_framing): raises HttpParseError with 502."""
    return _framing(False, b"", version_minor, headers, status, request_method == b"HEAD",
                    request_method == b"CONNECT")
