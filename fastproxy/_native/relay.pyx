# cython: language_level=3
"""Thin wrappers over csrc/sockops.c, csrc/relay.c and csrc/engine.c: the worker's L4 path.

Addresses cross this module as (ip: str, port: int) pairs; the family is the
textual form's (":" means IPv6). A Relay is one proxied connection's state;
the Engine drives every relay of the worker from C through one epoll set,
which the event loop watches as a single fd. Python runs once per batch of
ready connections, and once when each connection ends.
"""
from libc.errno cimport EINVAL, errno
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport memset

from fastproxy._native.relay cimport *

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, unsigned size)

cdef extern from "<sys/socket.h>" nogil:
    enum:
        AF_INET
        AF_INET6

DEF MAX_BATCH = 64
DEF FINISHED_BATCH = 64

# How a relay ended (passed to the owner's relay_closed callback).
CLOSED_DONE = FP_END_DONE                      # both halves closed cleanly
CLOSED_RESET = FP_END_RESET                    # one side reset or failed; both were aborted
CLOSED_CONNECT_FAIL = FP_END_CONNECT_FAIL      # the upstream connect failed (err says why)
CLOSED_CONNECT_TIMEOUT = FP_END_CONNECT_TIMEOUT
CLOSED_ABORTED = FP_END_ABORTED                # the worker ended it (idle timeout, drain deadline)


cdef int _to_addr(str ip, int port, fp_addr *out) except -1:
    memset(out, 0, sizeof(fp_addr))
    cdef bytes b = ip.encode()
    if ":" in ip:
        out.family = AF_INET6
    else:
        out.family = AF_INET
    if inet_pton(out.family, b, out.ip) != 1:
        raise ValueError(f"not an IP address: {ip!r}")
    if port < 0 or port > 65535:
        raise ValueError(f"not a port: {port}")
    out.port = port
    return 0


cdef tuple _from_addr(fp_addr *a):
    cdef char buf[64]
    inet_ntop(a.family, a.ip, buf, sizeof(buf))
    return (buf.decode(), a.port)


def accept_batch(int lfd):
    """Accepts every pending connection (up to 64): a list of non-blocking fds.
    Raises OSError for EMFILE and other errors worth backing off for."""
    cdef int fds[MAX_BATCH]
    cdef int n = fp_accept_batch(lfd, fds, MAX_BATCH)
    if n < 0:
        raise OSError(-n, "accept failed")
    return [fds[i] for i in range(n)]


def original_dst(int fd):
    """((ip, port), redirected): the destination the client asked for."""
    cdef fp_addr a
    cdef int redirected = 0
    cdef int rc = fp_original_dst(fd, &a, &redirected)
    if rc < 0:
        raise OSError(-rc, "original destination unavailable")
    return _from_addr(&a), bool(redirected)


def peer_addr(int fd):
    cdef fp_addr a
    cdef int rc = fp_peer_addr(fd, &a)
    if rc < 0:
        raise OSError(-rc, "getpeername failed")
    return _from_addr(&a)


def connect(str ip, int port, str src_ip=None, bint transparent=False, unsigned int mark=0):
    """Starts a non-blocking connect: (fd, in_progress). Raises OSError at once
    for immediate failures (unreachable, bad source). With `transparent`,
    src_ip may be a foreign address (TPROXY source preservation): the socket
    gets IP_TRANSPARENT and SO_MARK `mark` (CAP_NET_ADMIN needed)."""
    cdef fp_addr dst, src
    cdef int in_progress = 0
    cdef int fd
    _to_addr(ip, port, &dst)
    if transparent:
        if src_ip is None:
            raise ValueError("a transparent connect needs src_ip")
        _to_addr(src_ip, 0, &src)
        fd = fp_connect_transparent(&dst, &src, mark, &in_progress)
    elif src_ip is not None and (":" in src_ip) == (dst.family == AF_INET6):
        _to_addr(src_ip, 0, &src)
        fd = fp_connect(&dst, &src, &in_progress)
    else:
        fd = fp_connect(&dst, NULL, &in_progress)
    if fd < 0:
        raise OSError(-fd, f"connect to {ip}:{port} failed")
    return fd, bool(in_progress)


def abort(int fd):
    """Closes fd so the peer sees a reset."""
    fp_sock_abort(fd)


def close(int fd):
    fp_sock_close(fd)


cdef class Relay:
    """One proxied TCP connection: downstream socket a, upstream socket b.

    Inert until Engine.add(); from then on the engine owns its progress and
    reports its end exactly once, through the owner's relay_closed().
    """
    cdef fp_relay r
    cdef bint registered
    cdef object timer
    cdef public object route    # the worker's per-connection accounting handle
    cdef public object log      # the worker's access-log facts (start, addresses), or None
    cdef public uint64_t seen_activity
    cdef public double idle_since

    def __cinit__(self, int a, int b, size_t chunk):
        fp_relay_init(&self.r, a, b, chunk)

    def __dealloc__(self):
        fp_relay_free(&self.r)

    def set_counters(self, uintptr_t base, int down_rx, int down_tx, int up_rx, int up_tx,
                     int tcp_rx=-1, int tcp_tx=-1):
        """Counter slots (indexes into the uint64 array at base; -1 = none)
        bumped by the C pump as bytes are delivered. base must outlive the relay.
        tcp_rx / tcp_tx: the Istio TCP series' "received from downstream" and
        "sent to downstream" slots (series base + 3, + 4; see csrc/h1proxy.h)."""
        cdef uint64_t *c = <uint64_t *> base
        # dir 0 (A -> B): received from downstream, sent to upstream
        self.r.dir[0].ctr[0] = c + down_rx if down_rx >= 0 else NULL
        self.r.dir[0].ctr[1] = c + up_tx if up_tx >= 0 else NULL
        self.r.dir[0].ctr[2] = c + tcp_rx if tcp_rx >= 0 else NULL
        # dir 1 (B -> A): received from upstream, sent to downstream
        self.r.dir[1].ctr[0] = c + up_rx if up_rx >= 0 else NULL
        self.r.dir[1].ctr[1] = c + down_tx if down_tx >= 0 else NULL
        self.r.dir[1].ctr[2] = c + tcp_tx if tcp_tx >= 0 else NULL

    @property
    def activity(self):
        return self.r.activity

    @property
    def spliced(self):
        return self.r.dir[0].spliced + self.r.dir[1].spliced

    @property
    def copied(self):
        return self.r.dir[0].copied + self.r.dir[1].copied

    @property
    def received(self):
        """Bytes read from a (the client) and delivered to b."""
        return self.r.dir[0].spliced + self.r.dir[0].copied

    @property
    def sent(self):
        """Bytes read from b (the upstream) and delivered to a."""
        return self.r.dir[1].spliced + self.r.dir[1].copied

    @property
    def error(self):
        return self.r.error


cdef class Engine:
    """The worker's relays, driven from C. The loop watches one fd: ours."""
    cdef fp_engine *e
    cdef object loop
    cdef object owner
    cdef bint soon          # a run is already scheduled with call_soon
    cdef int efd

    def __cinit__(self, loop, size_t chunk, unsigned pool_max, owner):
        self.e = fp_engine_new(chunk, pool_max)
        if self.e == NULL:
            raise OSError(errno, "cannot create the relay engine")
        self.loop = loop
        self.owner = owner
        self.soon = False
        self.efd = fp_engine_fd(self.e)
        loop.add_reader(self.efd, self.run)

    def __dealloc__(self):
        if self.e != NULL:
            fp_engine_free(self.e)
            self.e = NULL

    def close(self, relays=()):
        """Aborts `relays` (those still registered), then releases the epoll
        set and the pooled pipes."""
        if self.e == NULL:
            return
        for r in list(relays):
            self.finish(r)
        self.loop.remove_reader(self.efd)
        fp_engine_free(self.e)
        self.e = NULL

    @property
    def count(self):
        return fp_engine_count(self.e) if self.e != NULL else 0

    def add(self, Relay r, bint connecting, double connect_timeout):
        cdef int rc = fp_engine_add(self.e, &r.r, connecting, <void *> r)
        if rc < 0:
            raise OSError(-rc, "cannot register the connection")
        Py_INCREF(r)            # the engine holds a pointer into r until it reports r
        r.registered = True
        r.idle_since = self.loop.time()
        if connecting and connect_timeout > 0:
            r.timer = self.loop.call_later(connect_timeout, self._connect_timeout, r)
        # Bytes may already wait on either socket; edge-triggered epoll has
        # reported them at registration, so the next run will see them.

    def run(self):
        """Pumps every ready connection; reports the ones that ended."""
        cdef fp_finished out[FINISHED_BATCH]
        cdef int more = 0
        cdef int n, i
        cdef Relay r
        if self.e == NULL:
            return
        self.soon = False
        while True:
            n = fp_engine_run(self.e, out, FINISHED_BATCH, &more)
            if n < 0:
                raise OSError(-n, "relay engine failed")
            for i in range(n):
                r = <Relay> out[i].relay.user
                self._ended(r, out[i].how)
            if n < FINISHED_BATCH:
                break
        if more and not self.soon:
            self.soon = True
            self.loop.call_soon(self.run)

    def finish(self, Relay r):
        """Ends r now (both sides reset, or a connect timeout while connecting)
        and reports it, with how it really ended if it already had."""
        if not r.registered or self.e == NULL:
            return
        fp_engine_finish(self.e, &r.r)
        self._ended(r, r.r.eng_how)

    def _connect_timeout(self, Relay r):
        r.timer = None
        if r.registered and (r.r.eng_state & FP_ENG_CONNECTING):
            self.finish(r)

    cdef void _ended(self, Relay r, int how) except *:
        r.registered = False
        if r.timer is not None:
            r.timer.cancel()
            r.timer = None
        try:
            self.owner.relay_closed(r, how, r.r.error)
        finally:
            Py_DECREF(r)
