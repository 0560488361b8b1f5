# cython: language_level=3
"""Thin wrappers over csrc/sockops.c and csrc/relay.c for the worker's L4 path.

Addresses cross this module as (ip: str, port: int) pairs; the family is the
textual form's (":" means IPv6). Relay drives the C splice pump from the
event loop's readiness callbacks and owns nothing but its pipes: the worker
hands it two sockets and gets told, once, how the connection ended.
"""
from libc.errno cimport EINVAL
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

# How a relay ended (passed to the owner's relay_closed callback).
CLOSED_DONE = 0           # both halves closed cleanly
CLOSED_RESET = 1          # one side reset or failed; both were aborted
CLOSED_CONNECT_FAIL = 2   # the upstream connect failed (err says why)
CLOSED_CONNECT_TIMEOUT = 3
CLOSED_ABORTED = 4        # the worker aborted it (idle timeout, drain deadline)


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


def connect(str ip, int port, str src_ip=None):
    """Starts a non-blocking connect: (fd, in_progress). Raises OSError at once
    for immediate failures (unreachable, bad source)."""
    cdef fp_addr dst, src
    cdef int in_progress = 0
    cdef int fd
    _to_addr(ip, port, &dst)
    if src_ip is not None and (":" in src_ip) == (dst.family == AF_INET6):
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

    Created in the connecting state when b's connect is still in progress.
    When it ends it closes (or aborts) both sockets and calls
    owner.relay_closed(relay, how, err) exactly once.
    """
    cdef fp_relay r
    cdef object loop
    cdef object owner
    cdef int want          # interests currently registered with the loop
    cdef bint connecting
    cdef bint finished
    cdef object timer
    cdef object cb_ra, cb_wa, cb_rb, cb_wb
    cdef public object route    # the worker's per-connection accounting handle
    cdef public uint64_t seen_activity
    cdef public double idle_since

    def __cinit__(self, loop, int a, int b, bint connecting, size_t chunk, owner):
        fp_relay_init(&self.r, a, b, chunk)
        self.loop = loop
        self.owner = owner
        self.want = 0
        self.connecting = connecting
        self.finished = False
        self.timer = None
        self.cb_ra = self._on_read_a
        self.cb_wa = self._on_write_a
        self.cb_rb = self._on_read_b
        self.cb_wb = self._on_write_b

    def __dealloc__(self):
        fp_relay_free(&self.r)

    def set_counters(self, uintptr_t base, int down_rx, int down_tx, int up_rx, int up_tx):
        """Counter slots (indexes into the uint64 array at base; -1 = none)
        bumped by the C pump as bytes are delivered. base must outlive the relay."""
        cdef uint64_t *c = <uint64_t *> base
        # dir 0 (A -> B): received from downstream, sent to upstream
        self.r.dir[0].ctr[0] = c + down_rx if down_rx >= 0 else NULL
        self.r.dir[0].ctr[1] = c + up_tx if up_tx >= 0 else NULL
        # dir 1 (B -> A): received from upstream, sent to downstream
        self.r.dir[1].ctr[0] = c + up_rx if up_rx >= 0 else NULL
        self.r.dir[1].ctr[1] = c + down_tx if down_tx >= 0 else NULL

    def start(self, double connect_timeout=0.0):
        self.idle_since = self.loop.time()
        if self.connecting:
            self._apply(FP_WRITE_B)
            if connect_timeout > 0:
                self.timer = self.loop.call_later(connect_timeout, self._on_connect_timeout)
        else:
            self._apply(fp_relay_start(&self.r))

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
    def fds(self):
        return (self.r.dir[0].src, self.r.dir[0].dst)

    def abort(self):
        """Ends the connection now with a reset on both sides."""
        if not self.finished:
            self._finish(CLOSED_ABORTED, 0)

    # -- event loop plumbing -------------------------------------------------

    cdef void _apply(self, int want) except *:
        """Brings the loop's registrations in line with `want`."""
        cdef int changed = want ^ self.want
        cdef int a = self.r.dir[0].src
        cdef int b = self.r.dir[0].dst
        if changed & FP_READ_A:
            if want & FP_READ_A:
                self.loop.add_reader(a, self.cb_ra)
            else:
                self.loop.remove_reader(a)
        if changed & FP_WRITE_A:
            if want & FP_WRITE_A:
                self.loop.add_writer(a, self.cb_wa)
            else:
                self.loop.remove_writer(a)
        if changed & FP_READ_B:
            if want & FP_READ_B:
                self.loop.add_reader(b, self.cb_rb)
            else:
                self.loop.remove_reader(b)
        if changed & FP_WRITE_B:
            if want & FP_WRITE_B:
                self.loop.add_writer(b, self.cb_wb)
            else:
                self.loop.remove_writer(b)
        self.want = want

    cdef void _pump(self, int events) except *:
        cdef int res = fp_relay_pump(&self.r, events)
        if res & FP_RELAY_DONE:
            self._finish(CLOSED_DONE, 0)
        elif res & FP_RELAY_RESET:
            self._finish(CLOSED_RESET, self.r.error)
        elif res != self.want:
            self._apply(res)

    def _on_read_a(self):
        self._pump(FP_READ_A)

    def _on_write_a(self):
        self._pump(FP_WRITE_A)

    def _on_read_b(self):
        self._pump(FP_READ_B)

    def _on_write_b(self):
        cdef int err
        if self.connecting:
            err = -fp_connect_result(self.r.dir[0].dst)
            if err != 0:
                self._finish(CLOSED_CONNECT_FAIL, err)
                return
            self.connecting = False
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self._apply(fp_relay_start(&self.r))
            return
        self._pump(FP_WRITE_B)

    def _on_connect_timeout(self):
        self.timer = None
        if self.connecting and not self.finished:
            self._finish(CLOSED_CONNECT_TIMEOUT, 0)

    cdef void _finish(self, int how, int err) except *:
        cdef int a = self.r.dir[0].src
        cdef int b = self.r.dir[0].dst
        self.finished = True
        self._apply(0)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        fp_relay_free(&self.r)
        if how == CLOSED_DONE:
            fp_sock_close(a)
            fp_sock_close(b)
        elif how == CLOSED_CONNECT_FAIL or how == CLOSED_CONNECT_TIMEOUT:
            # The client learns of the failure as a reset, as with Envoy's tcp_proxy.
            fp_sock_abort(a)
            fp_sock_close(b)
        else:
            fp_sock_abort(a)
            fp_sock_abort(b)
        self.owner.relay_closed(self, how, err)
