# cython: language_level=3
"""Thin wrappers over csrc/govern.c: the traffic-governance segment.

The manager creates the segment (GovernSegment(name, create=True, ...)),
zeroes slots before it hands them out, un-ejects endpoints whose ejection
is over (uneject_due) and records health-check verdicts (set_health). Each
worker attaches to it (GovernSegment(name)): the HTTP engine enforces
breakers, ejections and buckets in C through the addresses given here,
and the balancer reads availability through the cheap cpdef methods
(version, available, rq_active) and takes rate-limit tokens (take).

ClusterCfg and RetryCfg hold the C configuration structs by value; their
``address`` is handed to C, valid while the object lives.

Failures raise: ShmError (fastproxy._native.shm) for what the system or the
segment refused, IndexError for a slot out of range, ValueError for a closed
segment or a bad argument. Layout, atomics and decisions: csrc/govern.h.
"""
cimport cython
from libc.errno cimport EINVAL, ENOENT
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memset

from fastproxy._native.shm cimport fp_shm_create, fp_shm_open, fp_shm_unlink, fp_shm_unmap

import operator
import os

from fastproxy._native.shm import ShmError

# govern.pxd (the extern declarations of govern.h) is included implicitly.

cdef extern from *:
    """
    #include <stdatomic.h>
    /* The hot-path reads: one load each. version is an acquire load (a
     * plain load on x86-64): it pairs with the release bump after an
     * availability change, so the available() calls that follow a moved
     * version see that change even on weakly ordered CPUs. */
    static inline uint64_t gvpy_version(const gv_cluster *c)
    { return atomic_load_explicit(&c->version, memory_order_acquire); }
    static inline int64_t gvpy_ep_rq_active(const gv_endpoint *ep)
    { return atomic_load_explicit(&ep->rq_active, memory_order_relaxed); }
    static inline uint64_t gvpy_bucket_state(const gv_bucket *b)
    { return atomic_load_explicit(&b->state, memory_order_relaxed); }
    #define GVPY_U32_MAX 0xFFFFFFFFu
    """
    const uint32_t U32_MAX "GVPY_U32_MAX"
    uint64_t gvpy_version(const gv_cluster *c) nogil
    int64_t gvpy_ep_rq_active(const gv_endpoint *ep) nogil
    uint64_t gvpy_bucket_state(const gv_bucket *b) nogil

UNLIMITED = GV_UNLIMITED
MAX_RETRIABLE_CODES = GV_MAX_RETRIABLE_CODES


cdef int _raise(int rc, str name, str what) except -1:
    raise ShmError(-rc, f"{what}: {os.strerror(-rc)}", name)


cdef bytes _encode_name(str name):
    cdef bytes b = os.fsencode(name)
    if b"\0" in b:
        raise ValueError(f"segment name contains NUL: {name!r}")
    return b


cdef uint32_t _u32(object v, str field) except? 0xFFFFFFFF:
    """A count or time that must fit the C struct's uint32_t, or ValueError naming it."""
    cdef long long n
    if isinstance(v, float) and v.is_integer():
        v = int(v)                  # a whole number that went through JSON as a float
    try:
        n = operator.index(v)       # no silent truncation of 1.5 or "3"
    except (TypeError, OverflowError):
        raise ValueError(f"{field} must be an integer in 0..{U32_MAX}, not {v!r}") from None
    if n < 0 or n > U32_MAX:
        raise ValueError(f"{field} must be in 0..{U32_MAX}, not {v!r}")
    return <uint32_t>n


cdef str _problem(const void *base, size_t size):
    """Why gv_segment_check refused a mapping, in words (for the error message)."""
    cdef const gv_hdr *h = <const gv_hdr *>base
    if size < sizeof(gv_hdr):
        return f"segment is {size} bytes, smaller than its header"
    if h.magic != GV_MAGIC:
        return f"not a governance segment (magic {h.magic:#x})"
    if h.layout != GV_LAYOUT:
        return f"layout {h.layout}, this build reads {GV_LAYOUT}"
    return (f"{h.ncluster} clusters, {h.nendpoint} endpoints and {h.nbucket} buckets "
            f"do not fit a segment of {size} bytes")


# ---------------------------------------------------------------- configuration

@cython.final
cdef class ClusterCfg:
    """One cluster's gv_cluster_cfg: breaker thresholds (GV_UNLIMITED: none),
    the retry budget and outlier detection. Immutable; ``address`` points at
    the struct for C and stays valid while this object lives."""
    cdef gv_cluster_cfg c

    def __cinit__(self, *, max_connections, max_pending_requests, max_requests, max_retries,
                  budget_percent, min_retry_concurrency, od_enabled, consecutive_5xx,
                  consecutive_gateway_failure, base_ejection_ms, max_ejection_ms,
                  max_ejection_percent, nhosts):
        cdef double pct = budget_percent
        if not (0.0 <= pct <= <double>U32_MAX):     # also refuses NaN
            raise ValueError(f"budget_percent must be >= 0, not {budget_percent!r}")
        memset(&self.c, 0, sizeof(self.c))
        self.c.max_connections = _u32(max_connections, "max_connections")
        self.c.max_pending_requests = _u32(max_pending_requests, "max_pending_requests")
        self.c.max_requests = _u32(max_requests, "max_requests")
        self.c.max_retries = _u32(max_retries, "max_retries")
        # A whole percent in C: 20.5 -> 21 (half up; budgets are never negative).
        self.c.budget_percent = <uint32_t>(pct + 0.5)
        self.c.min_retry_concurrency = _u32(min_retry_concurrency, "min_retry_concurrency")
        self.c.od_enabled = 1 if od_enabled else 0
        self.c.consecutive_5xx = _u32(consecutive_5xx, "consecutive_5xx")
        self.c.consecutive_gateway_failure = _u32(consecutive_gateway_failure, "consecutive_gateway_failure")
        self.c.base_ejection_ms = _u32(base_ejection_ms, "base_ejection_ms")
        self.c.max_ejection_ms = _u32(max_ejection_ms, "max_ejection_ms")
        self.c.max_ejection_percent = _u32(max_ejection_percent, "max_ejection_percent")
        self.c.nhosts = _u32(nhosts, "nhosts")

    @property
    def address(self):
        """Address of the gv_cluster_cfg, for C; valid while this object lives."""
        return <uintptr_t>&self.c

    @property
    def max_connections(self):
        return self.c.max_connections

    @property
    def max_pending_requests(self):
        return self.c.max_pending_requests

    @property
    def max_requests(self):
        return self.c.max_requests

    @property
    def max_retries(self):
        return self.c.max_retries

    @property
    def budget_percent(self):
        """The whole percent C uses (0: no budget)."""
        return self.c.budget_percent

    @property
    def min_retry_concurrency(self):
        return self.c.min_retry_concurrency

    @property
    def od_enabled(self):
        return self.c.od_enabled != 0

    @property
    def consecutive_5xx(self):
        return self.c.consecutive_5xx

    @property
    def consecutive_gateway_failure(self):
        return self.c.consecutive_gateway_failure

    @property
    def base_ejection_ms(self):
        return self.c.base_ejection_ms

    @property
    def max_ejection_ms(self):
        return self.c.max_ejection_ms

    @property
    def max_ejection_percent(self):
        return self.c.max_ejection_percent

    @property
    def nhosts(self):
        return self.c.nhosts

    def __repr__(self):
        cdef const gv_cluster_cfg *c = &self.c
        return (f"<ClusterCfg max_connections={c.max_connections} max_pending_requests="
                f"{c.max_pending_requests} max_requests={c.max_requests} max_retries={c.max_retries} "
                f"budget_percent={c.budget_percent} min_retry_concurrency={c.min_retry_concurrency} "
                f"od_enabled={c.od_enabled != 0} consecutive_5xx={c.consecutive_5xx} "
                f"consecutive_gateway_failure={c.consecutive_gateway_failure} "
                f"base_ejection_ms={c.base_ejection_ms} max_ejection_ms={c.max_ejection_ms} "
                f"max_ejection_percent={c.max_ejection_percent} nhosts={c.nhosts}>")


@cython.final
cdef class RetryCfg:
    """One route's gv_retry: how many retries, on what (GV_RETRY_* bits, as
    fastproxy.policy.retry RETRY_*), the per-try timeout, the retriable
    status codes (at most MAX_RETRIABLE_CODES) and the backoff. Immutable;
    ``address`` points at the struct for C and stays valid while this
    object lives."""
    cdef gv_retry r

    def __cinit__(self, *, num_retries, retry_on, per_try_timeout_ms, codes=(),
                  non_idempotent=False, backoff_base_ms=25, backoff_max_ms=250):
        cdef Py_ssize_t i
        cdef long code
        codes = tuple(codes)
        if len(codes) > GV_MAX_RETRIABLE_CODES:
            raise ValueError(f"at most {GV_MAX_RETRIABLE_CODES} retriable status codes, not {len(codes)}")
        memset(&self.r, 0, sizeof(self.r))
        self.r.num_retries = _u32(num_retries, "num_retries")
        self.r.retry_on = _u32(retry_on, "retry_on")
        self.r.per_try_timeout_ms = _u32(per_try_timeout_ms, "per_try_timeout_ms")
        self.r.backoff_base_ms = _u32(backoff_base_ms, "backoff_base_ms")
        self.r.backoff_max_ms = _u32(backoff_max_ms, "backoff_max_ms")
        self.r.non_idempotent = 1 if non_idempotent else 0
        for i in range(len(codes)):
            code = codes[i]
            if code < 0 or code > 0xFFFF:
                raise ValueError(f"retriable status code {codes[i]!r} out of range")
            self.r.codes[i] = <uint16_t>code
        self.r.ncodes = <uint32_t>len(codes)

    @property
    def address(self):
        """Address of the gv_retry, for C; valid while this object lives."""
        return <uintptr_t>&self.r

    @property
    def num_retries(self):
        return self.r.num_retries

    @property
    def retry_on(self):
        return self.r.retry_on

    @property
    def per_try_timeout_ms(self):
        return self.r.per_try_timeout_ms

    @property
    def codes(self):
        return tuple([self.r.codes[i] for i in range(self.r.ncodes)])

    @property
    def non_idempotent(self):
        return self.r.non_idempotent != 0

    @property
    def backoff_base_ms(self):
        return self.r.backoff_base_ms

    @property
    def backoff_max_ms(self):
        return self.r.backoff_max_ms

    def __repr__(self):
        return (f"<RetryCfg num_retries={self.r.num_retries} retry_on={self.r.retry_on:#x} "
                f"per_try_timeout_ms={self.r.per_try_timeout_ms} codes={self.codes} "
                f"non_idempotent={self.r.non_idempotent != 0} backoff_base_ms={self.r.backoff_base_ms} "
                f"backoff_max_ms={self.r.backoff_max_ms}>")


# ---------------------------------------------------------------- the segment

@cython.final
cdef class GovernSegment:
    """The governance segment, created (manager) or attached (workers).

    create=True: shm_open(O_EXCL), sized for ncluster/nendpoint/nbucket slots,
    zero-filled, header written. Otherwise the existing segment is mapped
    read-write and its header checked; nonzero counts given must match it.
    Garbage collection unmaps but never unlinks: close(unlink=True) does.
    Addresses handed out (address, cluster_address, endpoint_address) are
    valid until close().
    """
    cdef void *_base
    cdef size_t _size
    cdef uint32_t _ncluster, _nendpoint, _nbucket
    cdef bytes _bname
    cdef readonly str name
    cdef bint _unlinked

    def __cinit__(self, str name, *, bint create=False, Py_ssize_t ncluster=0,
                  Py_ssize_t nendpoint=0, Py_ssize_t nbucket=0):
        cdef void *base = NULL
        cdef size_t size = 0
        cdef uint64_t need
        cdef int rc
        cdef const gv_hdr *h
        self.name = name
        self._bname = _encode_name(name)
        self._unlinked = True
        for what, n in (("ncluster", ncluster), ("nendpoint", nendpoint), ("nbucket", nbucket)):
            if n < 0 or n > U32_MAX:
                raise ValueError(f"{what} must be in 0..{U32_MAX}, not {n}")
        if create:
            need = gv_segment_bytes(<uint32_t>ncluster, <uint32_t>nendpoint, <uint32_t>nbucket)
            if need > <uint64_t>(<size_t>-1):
                raise ValueError(f"a segment of {need} bytes does not fit the address space")
            size = <size_t>need
            rc = fp_shm_create(self._bname, size, &base)
            if rc < 0:
                _raise(rc, name, "creating the governance segment")
            gv_segment_init(base, <uint32_t>ncluster, <uint32_t>nendpoint, <uint32_t>nbucket)
        else:
            rc = fp_shm_open(self._bname, 1, &base, &size)
            if rc < 0:
                _raise(rc, name, "opening the governance segment")
            if gv_segment_check(base, size) < 0:
                problem = _problem(base, size)
                fp_shm_unmap(base, size)
                raise ShmError(EINVAL, f"bad governance segment: {problem}", name)
            h = <const gv_hdr *>base
            if (ncluster and <uint32_t>ncluster != h.ncluster) or \
                    (nendpoint and <uint32_t>nendpoint != h.nendpoint) or \
                    (nbucket and <uint32_t>nbucket != h.nbucket):
                problem = (f"segment has {h.ncluster} clusters, {h.nendpoint} endpoints, "
                           f"{h.nbucket} buckets; expected {ncluster}, {nendpoint}, {nbucket}")
                fp_shm_unmap(base, size)
                raise ShmError(EINVAL, problem, name)
        h = <const gv_hdr *>base
        self._base = base
        self._size = size
        self._ncluster = h.ncluster
        self._nendpoint = h.nendpoint
        self._nbucket = h.nbucket
        self._unlinked = False          # an attacher may unlink too (a restarted manager)

    def __dealloc__(self):
        if self._base != NULL:
            fp_shm_unmap(self._base, self._size)
            self._base = NULL

    # -- slot lookups (raise on a closed segment or a slot out of range) --

    cdef inline int _open(self) except -1:
        if self._base == NULL:
            raise ValueError(f"GovernSegment {self.name!r} is closed")
        return 0

    cdef gv_cluster *_cluster(self, long long slot) except NULL:
        self._open()
        if slot < 0 or slot >= self._ncluster:
            raise IndexError(f"cluster slot {slot} out of range 0..{<long long>self._ncluster - 1}")
        return gv_cluster_at(self._base, <uint32_t>slot)

    cdef gv_endpoint *_endpoint(self, long long slot) except NULL:
        self._open()
        if slot < 0 or slot >= self._nendpoint:
            raise IndexError(f"endpoint slot {slot} out of range 0..{<long long>self._nendpoint - 1}")
        return gv_endpoint_at(self._base, <uint32_t>slot)

    cdef gv_bucket *_bucket(self, long long slot) except NULL:
        self._open()
        if slot < 0 or slot >= self._nbucket:
            raise IndexError(f"bucket slot {slot} out of range 0..{<long long>self._nbucket - 1}")
        return gv_bucket_at(self._base, <uint32_t>slot)

    # -- sizes and addresses --

    @property
    def ncluster(self):
        return self._ncluster

    @property
    def nendpoint(self):
        return self._nendpoint

    @property
    def nbucket(self):
        return self._nbucket

    @property
    def closed(self):
        return self._base == NULL

    @property
    def address(self):
        """The segment's base address, for the HTTP engine."""
        self._open()
        return <uintptr_t>self._base

    def cluster_address(self, long long slot):
        """Address of the gv_cluster in this slot; 0 when the slot is out of range."""
        self._open()
        if slot < 0 or slot >= self._ncluster:
            return 0
        return <uintptr_t>gv_cluster_at(self._base, <uint32_t>slot)

    def endpoint_address(self, long long slot):
        """Address of the gv_endpoint in this slot; 0 when the slot is out of range."""
        self._open()
        if slot < 0 or slot >= self._nendpoint:
            return 0
        return <uintptr_t>gv_endpoint_at(self._base, <uint32_t>slot)

    def bucket_address(self, long long slot):
        """Address of the gv_bucket in this slot; 0 when the slot is out of range."""
        self._open()
        if slot < 0 or slot >= self._nbucket:
            return 0
        return <uintptr_t>gv_bucket_at(self._base, <uint32_t>slot)

    # -- hot path: no Python allocation unless an argument is wrong --

    cpdef unsigned long long version(self, int cluster_slot) except? 0xFFFFFFFFFFFFFFFF:
        """The cluster's availability version: one 8-byte (acquire) load. When
        it moved, re-read available() for the cluster's endpoints."""
        return gvpy_version(self._cluster(cluster_slot))

    cpdef bint available(self, int ep_slot) except -1:
        """Usable for new requests: neither ejected nor failed by a health check."""
        return gv_endpoint_available(self._endpoint(ep_slot)) != 0

    cpdef long long rq_active(self, int ep_slot) except? -1:
        """Requests in flight to the endpoint, over every worker (least_request)."""
        return gvpy_ep_rq_active(self._endpoint(ep_slot))

    cpdef bint take(self, int bucket_slot, unsigned max_tokens, unsigned per_fill,
                    unsigned interval_ms) except -1:
        """One token from the bucket (Envoy's local rate limit, now on the
        monotonic clock): True allowed, False limited."""
        return gv_bucket_take(self._bucket(bucket_slot), max_tokens, per_fill, interval_ms,
                              gv_now_ms()) != 0

    # -- the manager's side and the admin's reads --

    def cluster_stats(self, long long slot):
        """Every gv_cluster field, by name."""
        cdef gv_cluster *c = self._cluster(slot)
        return {
            "version": c.version,
            "cx_active": c.cx_active,
            "rq_pending": c.rq_pending,
            "rq_active": c.rq_active,
            "rq_retry_active": c.rq_retry_active,
            "ejected": c.ejected,
            "cx_overflow": c.cx_overflow,
            "rq_pending_overflow": c.rq_pending_overflow,
            "rq_overflow": c.rq_overflow,
            "rq_retry_overflow": c.rq_retry_overflow,
            "rq_retry": c.rq_retry,
            "rq_retry_success": c.rq_retry_success,
            "ejections_total": c.ejections_total,
            "ejections_5xx": c.ejections_5xx,
            "ejections_gateway": c.ejections_gateway,
            "ejections_overflow": c.ejections_overflow,
        }

    def endpoint_stats(self, long long slot):
        """Every gv_endpoint field, by name (ejected and hc_failed: 0 or 1)."""
        cdef gv_endpoint *ep = self._endpoint(slot)
        return {
            "rq_active": ep.rq_active,
            "rq_total": ep.rq_total,
            "cons_5xx": ep.cons_5xx,
            "cons_gw": ep.cons_gw,
            "ejected": ep.ejected,
            "ejections": ep.ejections,
            "eject_until_ms": ep.eject_until_ms,
            "hc_failed": ep.hc_failed,
        }

    def bucket_stats(self, long long slot):
        """{"tokens", "allowed", "limited"}: tokens left after the last take
        (None: never used, i.e. full), requests let through and refused."""
        cdef gv_bucket *b = self._bucket(slot)
        cdef uint64_t state = gvpy_bucket_state(b)
        return {
            "tokens": None if state == 0 else <uint32_t>(state & 0xFFFFFF),
            "allowed": b.allowed,
            "limited": b.limited,
        }

    def set_health(self, long long cluster_slot, long long ep_slot, bint healthy):
        """Records the active health check's verdict; True when it changed
        (the cluster's version was bumped)."""
        cdef gv_cluster *c = self._cluster(cluster_slot)
        return gv_set_health(c, self._endpoint(ep_slot), healthy) != 0

    def uneject_due(self, long long cluster_slot, long long ep_slot, ClusterCfg cfg not None,
                    unsigned long long now_ms=0):
        """Ends the endpoint's ejection when its time is up (True: un-ejected,
        version bumped); otherwise decays its ejection multiplier when due.
        now_ms: CLOCK_MONOTONIC ms (0: now)."""
        cdef gv_cluster *c = self._cluster(cluster_slot)
        cdef gv_endpoint *ep = self._endpoint(ep_slot)
        return gv_uneject_due(c, ep, &cfg.c, now_ms if now_ms else gv_now_ms()) != 0

    @property
    def ledger_slots(self):
        """int64 slots of one worker's ledger (govern.h "per-worker ledger")."""
        self._open()
        return gv_ledger_slots(self._base)

    def reclaim(self, uintptr_t ledger):
        """The ledger's worker is gone: undo what it held (breaker counts,
        endpoint rq_active) and zero the ledger. ledger: its address (in the
        worker's counter region). Returns the holdings undone."""
        self._open()
        if ledger == 0:
            raise ValueError("no ledger address")
        return gv_reclaim(self._base, <int64_t *>ledger)

    def reset_cluster(self, long long slot):
        """Zeroes the slot (before it is handed to a new owner)."""
        gv_cluster_reset(self._cluster(slot))

    def reset_endpoint(self, long long slot):
        gv_endpoint_reset(self._endpoint(slot))

    def reset_bucket(self, long long slot):
        gv_bucket_reset(self._bucket(slot))

    @staticmethod
    def now_ms():
        """CLOCK_MONOTONIC in ms: the clock every time in the segment is on."""
        return gv_now_ms()

    def close(self, bint unlink=False):
        """Unmaps the segment (addresses handed out become invalid) and, with
        ``unlink``, removes its name. Idempotent."""
        cdef int rc
        if self._base != NULL:
            rc = fp_shm_unmap(self._base, self._size)
            self._base = NULL
            if rc < 0:
                _raise(rc, self.name, "unmapping the governance segment")
        if unlink and not self._unlinked:
            self._unlinked = True
            rc = fp_shm_unlink(self._bname)
            if rc < 0 and rc != -ENOENT:
                _raise(rc, self.name, "unlinking the governance segment")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = " closed" if self._base == NULL else ""
        return (f"<GovernSegment {self.name!r} ncluster={self._ncluster} nendpoint={self._nendpoint} "
                f"nbucket={self._nbucket}{state}>")
