# cython: language_level=3
"""Thin wrappers over csrc/rewrite.c: the head a proxy forwards.

The C contracts (what is dropped, kept, added, in which order; the size
protocol) are in csrc/rewrite.h; this module converts Python values to the C
structs and back.

- ``RewriteOps``: a route's compiled header operations (set / add / remove,
  path and authority rewrite). Build one per route when the routing table is
  decoded and reuse it for every request; it is immutable.
- ``rewrite_request`` / ``rewrite_response``: parse a head (csrc/http1.c,
  default limits) and return the head to forward, as bytes. A head that
  does not parse raises ``HttpParseError`` as fastproxy._native.http1 does
  (also 400 for an absolute-form target whose authority rw_request refuses);
  an incomplete one, or an invalid argument, raises ValueError.
- ``uuid4``: the x-request-id the rewriter generates from 16 random bytes.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memset

from fastproxy._native.http1 cimport (
    HTTP1_ERROR, HTTP1_INCOMPLETE, http1_error, http1_header, http1_parser,
    http1_parser_init, http1_parse_request, http1_parse_response, http1_request_framing,
    http1_response_framing)

from fastproxy._native.http1 import HttpParseError

# rewrite.pxd (the extern declarations of rewrite.h) is included implicitly.

CONN_NONE = RW_CONN_NONE
CONN_CLOSE = RW_CONN_CLOSE
CONN_KEEP_ALIVE = RW_CONN_KEEP_ALIVE
CONN_UPGRADE = RW_CONN_UPGRADE
MAX_SET = RW_MAX_SET

cdef enum:
    STACK_HEADERS = 128  # >= http1's default limit of 100 fields
    STACK_OUT = 4096     # output bytes tried on the C stack first


cdef bytes _b(object v, str what):
    """bytes-like as bytes; str encoded as UTF-8."""
    if isinstance(v, bytes):
        return <bytes>v
    if isinstance(v, str):
        return (<str>v).encode("utf-8")
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"{what} must be str or bytes, not {type(v).__name__}")


cdef tuple _pairs(object items, str what):
    if hasattr(items, "items"):
        items = items.items()
    return tuple((_b(n, what + " name"), _b(v, what + " value")) for n, v in items)


cdef class RewriteOps:
    """A route's header operations, checked once (rw_ops_check).

    ``set``, ``add``: (name, value) pairs or a mapping; ``remove``: names.
    ``path``: the replacement of the first ``path_prefix_len`` bytes of the
    path (None: the whole path); omitted (None): no path rewrite.
    ``authority``: the forwarded Host; None: no rewrite. Raises ValueError
    with rw_ops_check's reason when the operations are not valid."""
    cdef rw_ops _ops
    cdef rw_field *_fields
    cdef rw_str *_removes
    cdef bytes _data
    cdef readonly tuple set
    cdef readonly tuple add
    cdef readonly tuple remove
    cdef readonly object path
    cdef readonly object path_prefix_len
    cdef readonly object authority
    # The address of the compiled rw_ops (valid while this object lives), for
    # the C data path (fastproxy._native.h1proxy) to use without a cimport.
    cdef readonly size_t address

    def __cinit__(self):
        memset(&self._ops, 0, sizeof(rw_ops))
        self._fields = NULL
        self._removes = NULL

    def __dealloc__(self):
        PyMem_Free(self._fields)
        PyMem_Free(self._removes)

    def __init__(self, set=(), add=(), remove=(), *, path=None, path_prefix_len=None,
                 authority=None):
        cdef list pieces = []
        cdef list offs = []
        cdef Py_ssize_t off = 0, i, nf, nr
        cdef const char *base
        cdef const char *why
        cdef bytes piece

        if self._fields != NULL or self._removes != NULL:
            raise TypeError("RewriteOps is immutable")
        self.set = _pairs(set, "set")
        self.add = _pairs(add, "add")
        self.remove = tuple(_b(n, "remove name") for n in remove)
        self.path = None if path is None else _b(path, "path")
        self.authority = None if authority is None else _b(authority, "authority")
        if path_prefix_len is not None and not 0 <= path_prefix_len < RW_PATH_WHOLE:
            raise ValueError("path_prefix_len out of range")
        self.path_prefix_len = path_prefix_len
        if len(self.set) > RW_MAX_SET:
            raise ValueError(f"more than {RW_MAX_SET} set operations")

        # every string, one after the other, in one bytes object
        for name, value in self.set + self.add:
            pieces += (name, value)
        pieces += self.remove
        pieces.append(self.path or b"")
        pieces.append(self.authority or b"")
        for piece in pieces:
            if len(piece) > 0xffffffff:
                raise ValueError("string too long")
            offs.append(off)
            off += len(piece)
        self._data = b"".join(pieces)
        base = PyBytes_AS_STRING(self._data)

        nf = len(self.set) + len(self.add)
        nr = len(self.remove)
        self._fields = <rw_field *>PyMem_Malloc((nf + 1) * sizeof(rw_field))
        self._removes = <rw_str *>PyMem_Malloc((nr + 1) * sizeof(rw_str))
        if self._fields == NULL or self._removes == NULL:
            raise MemoryError()
        for i in range(nf):
            self._fields[i].name.ptr = base + <Py_ssize_t>offs[2 * i]
            self._fields[i].name.len = <uint32_t>len(pieces[2 * i])
            self._fields[i].value.ptr = base + <Py_ssize_t>offs[2 * i + 1]
            self._fields[i].value.len = <uint32_t>len(pieces[2 * i + 1])
        for i in range(nr):
            self._removes[i].ptr = base + <Py_ssize_t>offs[2 * nf + i]
            self._removes[i].len = <uint32_t>len(pieces[2 * nf + i])
        self._ops.set = self._fields
        self._ops.nset = <uint32_t>len(self.set)
        self._ops.add = self._fields + len(self.set)
        self._ops.nadd = <uint32_t>len(self.add)
        self._ops.remove = self._removes
        self._ops.nremove = <uint32_t>nr
        if self.path is not None:
            self._ops.rewrite_path = 1
            self._ops.path_prefix_len = (RW_PATH_WHOLE if path_prefix_len is None
                                         else <uint32_t>path_prefix_len)
            self._ops.path.ptr = base + <Py_ssize_t>offs[2 * nf + nr]
            self._ops.path.len = <uint32_t>len(self.path)
        if self.authority is not None:
            self._ops.rewrite_authority = 1
            self._ops.authority.ptr = base + <Py_ssize_t>offs[2 * nf + nr + 1]
            self._ops.authority.len = <uint32_t>len(self.authority)
        why = rw_ops_check(&self._ops)
        if why != NULL:
            raise ValueError((<bytes>why).decode("ascii"))
        self.address = <size_t>&self._ops

    def __repr__(self):
        return (f"RewriteOps(set={self.set!r}, add={self.add!r}, remove={self.remove!r}, "
                f"path={self.path!r}, path_prefix_len={self.path_prefix_len!r}, "
                f"authority={self.authority!r})")


cdef inline void _str(rw_str *s, bytes b):
    s.ptr = PyBytes_AS_STRING(b)
    s.len = <uint32_t>PyBytes_GET_SIZE(b)


cdef int _raise(const http1_error *e) except -1:
    reason = (<bytes>e.reason).decode("ascii") if e.reason != NULL else "invalid"
    raise HttpParseError(e.status, reason)


cdef bytes _rewrite(bint is_request, object head, RewriteOps ops, rw_ctx *ctx,
                    bint req_head, bint req_connect):
    cdef http1_parser p
    cdef http1_header h[STACK_HEADERS]
    cdef http1_framing f
    cdef Py_buffer view
    cdef char stack[STACK_OUT]
    cdef char *out = stack
    cdef int64_t r
    cdef int rc
    cdef const rw_ops *cops = &ops._ops if ops is not None else NULL
    cdef rw_ctx dflt

    PyObject_GetBuffer(head, &view, PyBUF_SIMPLE)
    try:
        http1_parser_init(&p, h, STACK_HEADERS, NULL)
        if is_request:
            rc = http1_parse_request(&p, <const char *>view.buf, <size_t>view.len)
        else:
            rc = http1_parse_response(&p, <const char *>view.buf, <size_t>view.len)
        if rc == HTTP1_INCOMPLETE:
            raise ValueError("incomplete head")
        if rc == HTTP1_ERROR:
            _raise(&p.err)
        if is_request:
            rc = http1_request_framing(<const char *>view.buf, p.method, p.minor_version,
                                       p.headers, p.num_headers, &f)
        else:
            rc = http1_response_framing(<const char *>view.buf, p.status, p.minor_version,
                                        req_head, req_connect, p.headers, p.num_headers, &f)
        if rc < 0:
            _raise(&f.err)
        if is_request:
            r = rw_request(<const char *>view.buf, &p, &f, cops, ctx, out, STACK_OUT)
        else:
            r = rw_response(<const char *>view.buf, &p, &f, cops, ctx, out, STACK_OUT)
        if r < 0:
            out = <char *>PyMem_Malloc(<size_t>-r)
            if out == NULL:
                raise MemoryError()
            if is_request:
                r = rw_request(<const char *>view.buf, &p, &f, cops, ctx, out, <size_t>-r)
            else:
                r = rw_response(<const char *>view.buf, &p, &f, cops, ctx, out, <size_t>-r)
        if r == 0:
            # the context, or (requests) the target's authority: which one?
            rw_ctx_init(&dflt)
            if is_request and rw_request(<const char *>view.buf, &p, &f, cops, &dflt,
                                         NULL, 0) == 0:
                raise HttpParseError(400, "invalid authority in request-target")
            raise ValueError("invalid context: peer, proto, default_host or extra")
        return PyBytes_FromStringAndSize(out, <Py_ssize_t>r)
    finally:
        if out != stack:
            PyMem_Free(out)
        PyBuffer_Release(&view)


cdef int _common(rw_ctx *ctx, int connection, bint drop_transfer_encoding, bytes extra,
                 int version_minor) except -1:
    rw_ctx_init(ctx)
    if connection not in (RW_CONN_NONE, RW_CONN_CLOSE, RW_CONN_KEEP_ALIVE, RW_CONN_UPGRADE):
        raise ValueError("connection must be one of the CONN_* constants")
    if version_minor not in (0, 1):
        raise ValueError("version_minor must be 0 or 1")
    ctx.connection = connection
    ctx.version_minor = version_minor
    if drop_transfer_encoding:
        ctx.flags |= RW_DROP_TRANSFER_ENCODING
    _str(&ctx.extra, extra)
    return 0


def rewrite_request(head, RewriteOps ops=None, *, peer=b"", proto=b"", request_id=None,
                    int connection=RW_CONN_NONE, bint drop_transfer_encoding=False,
                    default_host=b"", extra=b"", int version_minor=1):
    """The request head to forward (rw_request) for the request head at the
    start of ``head`` (bytes-like; bytes after the head are ignored).

    ``peer``: appended to x-forwarded-for (empty: untouched); ``proto``:
    x-forwarded-proto (empty: untouched); ``request_id``: 16 random bytes
    for a missing x-request-id (None: none generated); ``connection``: a
    CONN_* constant; ``extra``: complete field lines, each ending CRLF."""
    cdef rw_ctx ctx
    cdef bytes b_peer = _b(peer, "peer")
    cdef bytes b_proto = _b(proto, "proto")
    cdef bytes b_host = _b(default_host, "default_host")
    cdef bytes b_extra = _b(extra, "extra")
    cdef bytes b_rid
    _common(&ctx, connection, drop_transfer_encoding, b_extra, version_minor)
    _str(&ctx.peer, b_peer)
    _str(&ctx.proto, b_proto)
    _str(&ctx.default_host, b_host)
    if request_id is not None:
        b_rid = _b(request_id, "request_id")
        if len(b_rid) != 16:
            raise ValueError("request_id must be 16 bytes")
        ctx.request_id = <const uint8_t *>PyBytes_AS_STRING(b_rid)
    return _rewrite(True, head, ops, &ctx, False, False)


def rewrite_response(head, RewriteOps ops=None, *, request_method=b"GET",
                     int connection=RW_CONN_NONE, bint drop_transfer_encoding=False, extra=b"",
                     int version_minor=1):
    """The response head to forward (rw_response) for the response head at
    the start of ``head``, answering a ``request_method`` request (for its
    framing checks). Other arguments as rewrite_request."""
    cdef rw_ctx ctx
    cdef bytes b_extra = _b(extra, "extra")
    cdef bytes method = _b(request_method, "request_method")
    _common(&ctx, connection, drop_transfer_encoding, b_extra, version_minor)
    return _rewrite(False, head, ops, &ctx, method == b"HEAD", method == b"CONNECT")


def uuid4(random_bytes):
    """The UUIDv4 text (36 lower-case characters) of 16 random bytes, as the
    rewriter writes it into x-request-id."""
    cdef bytes b = _b(random_bytes, "random_bytes")
    cdef char out[RW_UUID_LEN]
    if len(b) != 16:
        raise ValueError("16 bytes are needed")
    rw_uuid4(<const uint8_t *>PyBytes_AS_STRING(b), out)
    return PyBytes_FromStringAndSize(out, RW_UUID_LEN).decode("ascii")
