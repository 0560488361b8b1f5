# cython: language_level=3
"""Thin wrappers over csrc/h1proxy.c: the worker's HTTP/1.1 path.

The C engine owns every HTTP connection of the worker: it reads, parses,
rewrites, pools upstream connections and streams bodies. Python is asked one
question per request, through the owner's ``decide(conn, method, target,
authority, headers)``, and answers with a ``Decision``: a ``Target`` (proxy to
this endpoint with these header operations) or a ``Reply`` (answer locally).
Decisions are immutable and meant to be cached by the owner (per route and
endpoint), so that a request costs a route match and no allocation.

The owner is also told when a connection ends (``http_closed(conn, requests)``)
and when one is handed back (``http_detached(conn, kind, fd, upstream_fd,
cluster_block)``: not HTTP after all, or upgraded to a tunnel).

Observability (obs-spec.md, csrc/h1proxy.h "Observability"): with
``series_max`` the engine keeps the Istio request series at the top of the
counter region (``series_slot(key)`` hands a series to the TCP path); with
``records`` every finished request leaves a record, handed to the owner's
``http_records(list_of_tuples)`` at the end of each ``run()`` (field order:
RECORD_FIELDS); with ``tracing`` the forwarded heads carry the trace context.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset

from fastproxy._native.h1proxy cimport *
from fastproxy._native.http1 cimport (
    http1_framing, http1_header, http1_limits_init, http1_parser, http1_span_ieq)
from fastproxy._native.relay cimport fp_addr
from fastproxy._native.rewrite cimport rw_ops, rw_str

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)

cdef extern from "<sys/socket.h>" nogil:
    enum:
        AF_INET
        AF_INET6

DEF EVENT_BATCH = 64
DEF TICK_MS = 50        # the worker's tick period (worker/main.py): deadlines sooner get a wake-up
DEF RECORD_BATCH = 64

# H1_EV_DETACH kinds, as the owner sees them.
DETACH_HTTP2 = H1_DETACH_HTTP2
DETACH_TLS = H1_DETACH_TLS
DETACH_OPAQUE = H1_DETACH_OPAQUE
DETACH_TIMEOUT = H1_DETACH_TIMEOUT
DETACH_TUNNEL = H1_DETACH_TUNNEL

FLAG_UF = H1_F_UF
FLAG_UT = H1_F_UT
FLAG_UC = H1_F_UC
FLAG_NR = H1_F_NR
FLAG_DC = H1_F_DC
FLAG_DPE = H1_F_DPE
FLAG_UPE = H1_F_UPE
FLAG_UO = H1_F_UO
FLAG_UH = H1_F_UH
FLAG_RL = H1_F_RL
FLAG_FI = H1_F_FI
FLAG_DI = H1_F_DI
FLAG_URX = H1_F_URX
FLAG_SI = H1_F_SI

SERIES_SLOTS = H1_SERIES_SLOTS
G_SERIES_OVERFLOW = H1_G_SERIES_OVERFLOW
G_RECORDS_DROPPED = H1_G_RECORDS_DROPPED

# drain_records() tuple fields, in order (obs-spec.md §3).
RECORD_FIELDS = (
    "start_time_us", "duration_us", "upstream_service_time_us", "method", "path", "protocol",
    "status", "flags", "bytes_received", "bytes_sent", "upstream_host", "cluster_block",
    "listener_block", "x_request_id", "authority", "user_agent", "downstream_peer", "original_dst",
    "trace_id", "span_id", "parent_span_id", "sampled", "route_name")


def series_key_http(listener_block, cluster_block, flags, status):
    """The packed KEY of an HTTP request series (obs-spec.md §1)."""
    return (1 << 63) | ((listener_block // 16) << 40) | ((cluster_block // 16) << 20) | \
        ((flags & 0xff) << 10) | (status & 0x3ff)


def series_key_tcp(listener_block, cluster_block):
    """The packed KEY of a TCP series (obs-spec.md §2)."""
    return (1 << 63) | (1 << 62) | ((listener_block // 16) << 40) | ((cluster_block // 16) << 20)


cdef int _addr(object ip, int port, fp_addr *out) except -1:
    memset(out, 0, sizeof(fp_addr))
    cdef bytes b = (<str>ip).encode()
    out.family = AF_INET6 if ":" in ip else AF_INET
    if inet_pton(out.family, b, out.ip) != 1:
        raise ValueError(f"not an IP address: {ip!r}")
    if port < 0 or port > 65535:
        raise ValueError(f"not a port: {port}")
    out.port = port
    return 0


cdef inline void _set_str(rw_str *s, bytes b):
    s.ptr = PyBytes_AS_STRING(b)
    s.len = <uint32_t>PyBytes_GET_SIZE(b)


cdef bytes _hex(const uint8_t *b, int n):
    cdef char out[64]
    cdef int i
    for i in range(n):
        out[2 * i] = b"0123456789abcdef"[b[i] >> 4]
        out[2 * i + 1] = b"0123456789abcdef"[b[i] & 15]
    return PyBytes_FromStringAndSize(out, 2 * n)


cdef tuple _record(const h1_record *r):
    cdef bytes trace = b"", span = b"", parent = b""
    if r.traced:
        trace = _hex(r.trace_id, 16)
        span = _hex(r.span_id, 8)
        if r.has_parent:
            parent = _hex(r.parent_id, 8)
    return (r.start_us, r.duration_us, r.upstream_us,
            PyBytes_FromStringAndSize(r.method, r.method_len),
            PyBytes_FromStringAndSize(r.path, r.path_len),
            b"HTTP/1.1" if r.minor else b"HTTP/1.0",
            r.status, r.flags, r.bytes_received, r.bytes_sent,
            PyBytes_FromStringAndSize(r.upstream, r.upstream_len),
            r.cluster_block, r.listener_block,
            PyBytes_FromStringAndSize(r.rid, r.rid_len),
            PyBytes_FromStringAndSize(r.authority, r.authority_len),
            PyBytes_FromStringAndSize(r.ua, r.ua_len),
            PyBytes_FromStringAndSize(r.peer, r.peer_len),
            PyBytes_FromStringAndSize(r.odst, r.odst_len),
            trace, span, parent, bool(r.sampled), PyBytes_FromStringAndSize(r.route, r.route_len))


cdef bytes _hostport(object addr):
    if addr is None:
        return b""
    ip, port = addr[0], addr[1]
    return (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}").encode()


cdef class Decision:
    """What the engine does with one request (see Target and Reply)."""
    cdef h1_route r
    cdef tuple keep          # objects the C pointers in r refer to


cdef int _set_limits(h1_route *r, tuple limits) except -1:
    """limits: up to 2 (bucket address, max_tokens, tokens_per_fill,
    fill_interval_ms), checked in that order (govern.h gv_limit; the
    governance segment outlives every decision)."""
    cdef Py_ssize_t i
    if len(limits) > 2:
        raise ValueError(f"at most 2 rate limits per decision, got {len(limits)}")
    for i in range(len(limits)):
        addr, r.limits[i].max_tokens, r.limits[i].tokens_per_fill, r.limits[i].fill_interval_ms = limits[i]
        r.limits[i].b = <void *><uintptr_t>addr
    return 0


cdef class Target(Decision):
    """Proxy to the endpoint (ip, port), optionally from source address
    src_ip, counting on cluster_block; req_ops / resp_ops are RewriteOps
    (or None); name is the route's, for the request record."""

    cdef public object cluster       # the owner's cluster and route, for a retry's pick
    cdef public object route

    def __init__(self, str ip, int port, src_ip, uint32_t cluster_block, uint32_t connect_timeout_ms,
                 uint32_t timeout_ms=0, req_ops=None, resp_ops=None, bytes name=b"", *,
                 uintptr_t gcl=0, gcfg=None, uintptr_t gep=0, uint32_t ep_slot=0, retry=None,
                 uint32_t idle_timeout_ms=0, uint32_t delay_ms=0, object cluster=None, object route=None,
                 tuple limits=()):
        """Governance (csrc/h1proxy.h): gcl / gep are the cluster's and the
        endpoint's shared-memory state addresses (0: none), gcfg a
        govern.ClusterCfg (required with gcl), retry a govern.RetryCfg.
        cluster and route are the owner's, for retries."""
        memset(&self.r, 0, sizeof(h1_route))
        self.r.action = H1_ACT_PROXY
        _addr(ip, port, &self.r.upstream)
        if src_ip is not None and (":" in src_ip) == (":" in ip):
            _addr(src_ip, 0, &self.r.source)
        self.r.cluster_block = cluster_block
        self.r.connect_timeout_ms = connect_timeout_ms
        self.r.timeout_ms = timeout_ms
        if req_ops is not None:
            self.r.req_ops = <const rw_ops *><uintptr_t>req_ops.address
        if resp_ops is not None:
            self.r.resp_ops = <const rw_ops *><uintptr_t>resp_ops.address
        _set_str(&self.r.name, name)
        if gcl and gcfg is not None:
            self.r.gcl = <void *>gcl
            self.r.gcfg = <const void *><uintptr_t>gcfg.address
        self.r.gep = <void *>gep
        self.r.ep_slot = ep_slot
        if retry is not None:
            self.r.retry = <const void *><uintptr_t>retry.address
        self.r.idle_timeout_ms = idle_timeout_ms
        self.r.delay_ms = delay_ms
        _set_limits(&self.r, limits)
        self.cluster = cluster
        self.route = route
        self.keep = (req_ops, resp_ops, name, gcfg, retry)


cdef class Reply(Decision):
    """Answer locally: status, reason, extra field lines (complete lines,
    CRLF-terminated, may be empty) and body; flags are H1_F_* (e.g. NR)."""

    def __init__(self, int status, bytes reason, bytes headers=b"", bytes body=b"", uint32_t flags=0,
                 bytes name=b"", uint32_t delay_ms=0, tuple limits=()):
        memset(&self.r, 0, sizeof(h1_route))
        self.r.action = H1_ACT_RESPOND
        self.r.status = status
        self.r.flags = flags
        self.r.delay_ms = delay_ms          # a fault delay before the answer (flag DI)
        _set_limits(&self.r, limits)        # rate limits before it (429 RL)
        _set_str(&self.r.reason, reason)
        _set_str(&self.r.headers, headers)
        _set_str(&self.r.body, body)
        _set_str(&self.r.name, name)
        self.keep = (reason, headers, body, name)


cdef class Conn:
    """The owner's per-connection object; the engine holds a reference from
    add() until the connection is reported (closed or detached)."""
    cdef h1_conn *c
    cdef bytes _peer, _proto, _host     # what the C options point to
    cdef public object listener
    cdef public object dst
    cdef public object cache            # the owner's per-connection decision cache
    cdef public object peer             # the client's ip (str), for source-ip hashing

    def __init__(self, listener, dst, peer=None):
        self.listener = listener
        self.dst = dst
        self.cache = None
        self.peer = peer


cdef bytes _span(const char *buf, uint32_t off, uint32_t n):
    return PyBytes_FromStringAndSize(buf + off, n)


cdef class Headers:
    """The request's header fields, for route matches, valid only during
    decide(): get(name) with a lower-case name scans the parsed fields
    (repeated fields joined with ",", as Envoy does). One per engine, reused:
    a request whose routes match no header costs nothing here."""
    cdef const char *buf
    cdef const http1_parser *p

    def get(self, bytes name, default=None):
        cdef uint32_t i
        cdef object found = None
        if self.p == NULL:
            raise RuntimeError("headers used outside decide()")
        for i in range(self.p.num_headers):
            if http1_span_ieq(self.buf, self.p.headers[i].name, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)):
                v = _span(self.buf, self.p.headers[i].value.off, self.p.headers[i].value.len)
                found = v if found is None else found + b"," + v
        return default if found is None else found


cdef int _route_cb(void *cb_data, void *conn_user, const char *buf, const http1_parser *p,
                   const http1_framing *f, h1_route *out) noexcept with gil:
    cdef HttpEngine eng = <HttpEngine>cb_data
    cdef Conn conn = <Conn>conn_user
    cdef Decision d
    cdef bytes authority
    try:
        if f.host_index >= 0:
            authority = _span(buf, p.headers[f.host_index].value.off, p.headers[f.host_index].value.len)
        else:
            authority = b""
        eng.headers.buf = buf
        eng.headers.p = p
        try:
            d = eng.owner.decide(conn, _span(buf, p.method.off, p.method.len),
                                 _span(buf, p.target.off, p.target.len), authority, eng.headers)
        finally:
            eng.headers.p = NULL
        memcpy(out, &d.r, sizeof(h1_route))
        Py_INCREF(d)
        out.ref = <void *>d
        return 0
    except BaseException as e:
        eng.errors += 1
        eng.last_error = e
        return -1


cdef void _release_cb(void *cb_data, void *ref) noexcept with gil:
    Py_DECREF(<object>ref)


cdef int _retry_cb(void *cb_data, void *conn_user, void *ref, const uint32_t *tried, unsigned ntried,
                   h1_route *out) noexcept with gil:
    cdef HttpEngine eng = <HttpEngine>cb_data
    cdef Decision d
    cdef unsigned i
    try:
        d = eng.owner.retry(<Conn>conn_user, <object>ref, tuple([tried[i] for i in range(ntried)]))
        if d is None or d.r.action != H1_ACT_PROXY:
            return -1
        memcpy(out, &d.r, sizeof(h1_route))
        Py_INCREF(d)
        out.ref = <void *>d
        return 0
    except BaseException as e:
        eng.errors += 1
        eng.last_error = e
        return -1


cdef class HttpEngine:
    """The worker's HTTP connections, driven from C. The loop watches one fd: ours."""
    cdef h1_engine *e
    cdef object loop
    cdef readonly object owner
    cdef bint soon
    cdef int efd
    cdef Headers headers                # handed to decide(), valid during the call
    cdef public uint64_t errors         # decide() raised (the request got a 500)
    cdef public object last_error
    cdef readonly bint records          # records are kept and handed to owner.http_records()
    cdef uint64_t wake_at               # the deadline a loop timer is set for, 0: none

    def __cinit__(self, loop, owner, uintptr_t counters, uint32_t counters_len, *,
                  uint32_t max_head_bytes, uint32_t max_headers, uint32_t max_line_bytes,
                  uint32_t buffer_bytes, uint32_t pool_max_idle, uint32_t pool_idle_ms,
                  uint32_t client_idle_ms, uint32_t series_base=0, uint32_t series_max=0,
                  bint records=False, uint32_t records_cap=4096, bint tracing=False,
                  double trace_sampling=1.0, uintptr_t gv_base=0, uintptr_t gv_ledger=0):
        cdef h1_config cfg
        memset(&cfg, 0, sizeof(cfg))
        http1_limits_init(&cfg.limits)
        cfg.limits.max_head_bytes = max_head_bytes
        cfg.limits.max_headers = max_headers
        cfg.limits.max_line_bytes = max_line_bytes
        cfg.buffer_bytes = buffer_bytes
        cfg.pool_max_idle = pool_max_idle
        cfg.pool_idle_ms = pool_idle_ms
        cfg.client_idle_ms = client_idle_ms
        cfg.counters = <uint64_t *>counters
        cfg.counters_len = counters_len
        cfg.route = _route_cb
        cfg.release = _release_cb
        cfg.retry = _retry_cb
        # the governance segment and this worker's ledger in it (h1proxy.h)
        cfg.gv_base = <void *>gv_base
        cfg.gv_ledger = <int64_t *>gv_ledger if gv_base else NULL
        cfg.cb_data = <void *>self
        cfg.series_base = series_base
        cfg.series_max = series_max
        cfg.records = records
        cfg.records_cap = records_cap
        cfg.tracing = tracing
        cfg.trace_sampling = trace_sampling
        self.e = h1_engine_new(&cfg)
        if self.e == NULL:
            raise OSError(errno, "cannot create the HTTP engine")
        self.loop = loop
        self.owner = owner
        self.soon = False
        self.headers = Headers()
        self.errors = 0
        self.last_error = None
        self.records = records
        self.efd = h1_engine_fd(self.e)
        loop.add_reader(self.efd, self.run)

    def __dealloc__(self):
        if self.e != NULL:
            h1_engine_free(self.e)
            self.e = NULL

    def add(self, int fd, Conn conn, *, bint detect, uint32_t detect_ms, uint32_t listener_block,
            bytes peer, bytes proto, bytes default_host, bint request_id,
            bytes peer_addr=b"", bytes original_dst=None, uint32_t headers_timeout_ms=0):
        """Hands the connected client socket fd to the engine (raises OSError
        on failure: the caller still owns fd). peer_addr / original_dst
        ("ip:port") are for records only: by default the engine asks the
        socket for the peer, and the original destination is conn.dst."""
        cdef h1_conn_opts o
        cdef bytes odst = b""
        memset(&o, 0, sizeof(o))
        o.detect = detect
        o.detect_ms = detect_ms
        o.listener_block = listener_block
        conn._peer, conn._proto, conn._host = peer, proto, default_host
        _set_str(&o.peer, peer)
        _set_str(&o.proto, proto)
        _set_str(&o.default_host, default_host)
        o.request_id = request_id
        o.headers_timeout_ms = headers_timeout_ms
        if self.records:
            odst = _hostport(conn.dst) if original_dst is None else original_dst
            _set_str(&o.peer_addr, peer_addr)
            _set_str(&o.original_dst, odst)
        conn.c = h1_engine_add(self.e, fd, <void *>conn, &o)
        if conn.c == NULL:
            raise OSError(errno, "cannot register the connection")
        Py_INCREF(conn)         # until the engine reports it
        self._schedule()        # bytes may already wait

    def series_slot(self, uint64_t key):
        """The base slot of the series of the packed key (allocated on first
        use), or -1 past max_series (G_SERIES_OVERFLOW was incremented) or
        when there is no series area."""
        if self.e == NULL:
            return -1
        return h1_engine_series_slot(self.e, key)

    def drain_records(self):
        """The records of the requests that ended since the last drain, oldest
        first, as tuples (RECORD_FIELDS order)."""
        cdef h1_record *recs[RECORD_BATCH]
        cdef unsigned n, i
        cdef list out = []
        if self.e == NULL:
            return out
        while True:
            n = h1_engine_records(self.e, recs, RECORD_BATCH)
            try:
                for i in range(n):
                    out.append(_record(recs[i]))
            finally:
                h1_engine_records_release(self.e, recs, n)
            if n < RECORD_BATCH:
                return out

    cdef _schedule(self):
        if not self.soon:
            self.soon = True
            self.loop.call_soon(self.run)

    def run(self):
        """Serves every ready connection; reports the ones that ended."""
        cdef h1_event out[EVENT_BATCH]
        cdef int more = 0
        cdef int n, i
        cdef Conn conn
        if self.e == NULL:
            return
        self.soon = False
        while True:
            n = h1_engine_run(self.e, out, EVENT_BATCH, &more)
            if n < 0:
                raise OSError(-n, "HTTP engine failed")
            for i in range(n):
                conn = <Conn>out[i].user
                conn.c = NULL
                try:
                    if out[i].kind == H1_EV_CLOSED:
                        self.owner.http_closed(conn, out[i].requests)
                    else:
                        self.owner.http_detached(conn, out[i].detach, out[i].fd, out[i].upstream_fd,
                                                 out[i].cluster_block)
                finally:
                    Py_DECREF(conn)
            if n < EVENT_BATCH:
                break
        if self.records:
            recs = self.drain_records()
            if recs:
                self.owner.http_records(recs)
        if more:
            self._schedule()
        self._wake_for_deadline()

    cdef _wake_for_deadline(self):
        # The worker's tick fires deadlines within its period; a sooner one
        # (a retry's backoff, a per-try timeout) gets its own wake-up.
        cdef uint64_t at = h1_engine_next_deadline(self.e)
        cdef uint64_t now = h1_engine_now(self.e)
        if at == 0 or (self.wake_at != 0 and self.wake_at <= at) or at >= now + TICK_MS:
            return
        self.wake_at = at
        self.loop.call_later((at - now) / 1000.0 if at > now else 0, self._wake)

    def _wake(self):
        self.wake_at = 0
        self.expire()

    def expire(self):
        """Fires the deadlines that passed (called from the worker's tick)."""
        if self.e != NULL and h1_engine_expire(self.e, 0):
            self._schedule()
        if self.e != NULL:
            self._wake_for_deadline()

    def drain(self):
        if self.e != NULL:
            h1_engine_drain(self.e)
            self._schedule()

    @property
    def count(self):
        return h1_engine_count(self.e) if self.e != NULL else 0

    def stats(self):
        cdef h1_stats st
        if self.e == NULL:
            return {}
        h1_engine_get_stats(self.e, &st)
        return st

    def close(self):
        """Aborts every connection and frees the engine (connections are not reported)."""
        if self.e == NULL:
            return
        self.loop.remove_reader(self.efd)
        h1_engine_free(self.e)
        self.e = NULL
