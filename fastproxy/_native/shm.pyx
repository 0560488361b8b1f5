# cython: language_level=3
"""Thin wrappers over csrc/shmtable.c: the routing-table and counter segments.

The manager owns both segments: it creates them (TableWriter, and
CounterSegment(create=True)), publishes tables and sums counters. Each worker
opens them (TableReader, CounterSegment) and writes only its own counter
region through a CounterView. Layout and memory ordering are documented in
csrc/shmtable.h and csrc/shmtable.c.

Every failure raises: ShmError (an OSError carrying errno and the segment
name) for what the system or the segment refused, ValueError for a closed
object or an oversized table, IndexError for a worker or slot out of range.
Objects are not thread-safe; each process uses its own from one thread.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.errno cimport E2BIG, EINVAL, ENOENT
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from posix.types cimport pid_t
from posix.unistd cimport getpid

import os

# shm.pxd (the extern declarations of shmtable.h) is included implicitly.

cdef extern from *:
    """
    /* Single-copy-atomic access to one shared uint64, as fp_counter_add does. */
    static inline uint64_t fp_pyshm_load(const uint64_t *p)
    { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void fp_pyshm_store(uint64_t *p, uint64_t v)
    { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    /* Pairs with the writer's release store of a series KEY. */
    static inline uint64_t fp_pyshm_load_acquire(const uint64_t *p)
    { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    """
    uint64_t _load "fp_pyshm_load" (const uint64_t *p) nogil
    uint64_t _load_acquire "fp_pyshm_load_acquire" (const uint64_t *p) nogil
    void _store "fp_pyshm_store" (uint64_t *p, uint64_t v) nogil


class ShmError(OSError):
    """A segment could not be created, opened, checked or unmapped.

    ``errno`` and ``strerror`` say why; ``filename`` is the segment name.
    """


cdef int _raise(int rc, str name, str what=None) except -1:
    """Raises ShmError for a negative errno returned by shmtable.c."""
    cdef int err = -rc
    msg = os.strerror(err) if what is None else f"{what}: {os.strerror(err)}"
    raise ShmError(err, msg, name)


cdef bytes _encode_name(str name):
    cdef bytes b = os.fsencode(name)
    if b"\0" in b:
        raise ValueError(f"segment name contains NUL: {name!r}")
    return b


cdef str _table_problem(const void *base, size_t size):
    """Why fp_table_check refused a mapping, in words (for the error message)."""
    cdef const fp_table_hdr *h = <const fp_table_hdr *>base
    if size < FP_SHM_HEADER_BYTES:
        return f"segment is {size} bytes, smaller than its header"
    if h.magic != FP_TABLE_MAGIC:
        return f"not a table segment (magic {h.magic:#x})"
    if h.layout_version != FP_SHM_LAYOUT_VERSION:
        return f"layout version {h.layout_version}, this build reads {FP_SHM_LAYOUT_VERSION}"
    return f"capacity {h.capacity} does not fit a segment of {size} bytes"


cdef str _counters_problem(const void *base, size_t size):
    cdef const fp_counters_hdr *h = <const fp_counters_hdr *>base
    if size < FP_SHM_HEADER_BYTES:
        return f"segment is {size} bytes, smaller than its header"
    if h.magic != FP_COUNTERS_MAGIC:
        return f"not a counter segment (magic {h.magic:#x})"
    if h.layout_version != FP_SHM_LAYOUT_VERSION:
        return f"layout version {h.layout_version}, this build reads {FP_SHM_LAYOUT_VERSION}"
    return (f"{h.nworkers} workers x {h.nslots} slots (region {h.region_bytes} bytes) "
            f"do not fit a segment of {size} bytes")


# ---------------------------------------------------------------- table

@cython.final
cdef class TableWriter:
    """The manager's side of the routing-table segment.

    Creates the segment (it must not exist) and owns it: close() and garbage
    collection in the creating process unlink it.
    """
    cdef void *_base
    cdef size_t _size
    cdef size_t _capacity
    cdef bytes _bname
    cdef readonly str name
    cdef bint _unlinked
    cdef pid_t _owner

    def __cinit__(self, str name, Py_ssize_t capacity):
        cdef void *base = NULL
        cdef size_t size
        cdef int rc
        self.name = name
        self._bname = _encode_name(name)
        self._unlinked = True              # nothing to unlink until created
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, not {capacity}")
        size = fp_table_segment_size(<size_t>capacity)
        if size == 0:
            raise ValueError(f"capacity {capacity} is too large")
        rc = fp_shm_create(self._bname, size, &base)
        if rc < 0:
            _raise(rc, name, "creating the table segment")
        self._base = base
        self._size = size
        self._capacity = <size_t>capacity
        self._unlinked = False
        self._owner = getpid()
        rc = fp_table_init(base, size, <size_t>capacity)
        if rc < 0:
            self.close(True)
            _raise(rc, name, "initialising the table segment")

    def __dealloc__(self):
        if self._base != NULL:
            fp_shm_unmap(self._base, self._size)
            self._base = NULL
        if not self._unlinked and self._owner == getpid():
            fp_shm_unlink(self._bname)

    cdef inline int _check_open(self) except -1:
        if self._base == NULL:
            raise ValueError(f"TableWriter {self.name!r} is closed")
        return 0

    def publish(self, data):
        """Copies ``data`` into the inactive slot and publishes it; returns
        the new (even) generation. ``data`` is any contiguous byte buffer."""
        cdef const unsigned char[::1] view = data
        cdef Py_ssize_t n = view.shape[0]
        cdef const void *p = &view[0] if n > 0 else NULL
        cdef int64_t gen
        self._check_open()
        if <size_t>n > self._capacity:
            raise ValueError(f"table of {n} bytes exceeds the segment capacity "
                             f"of {self._capacity} bytes ({self.name})")
        gen = fp_table_publish(self._base, p, <size_t>n)
        if gen < 0:
            _raise(<int>gen, self.name, "publishing the table")
        return gen

    @property
    def generation(self):
        """The generation last published (0: nothing yet)."""
        self._check_open()
        return fp_table_generation(self._base)

    @property
    def capacity(self):
        """Bytes per slot: the largest table publish() accepts."""
        return self._capacity

    @property
    def closed(self):
        return self._base == NULL

    def close(self, bint unlink=True):
        """Unmaps the segment and, unless ``unlink`` is false, removes its
        name. Idempotent; a later close(unlink=True) still unlinks."""
        cdef int rc
        if self._base != NULL:
            rc = fp_shm_unmap(self._base, self._size)
            self._base = NULL
            if rc < 0:
                _raise(rc, self.name, "unmapping the table segment")
        if unlink and not self._unlinked:
            self._unlinked = True
            rc = fp_shm_unlink(self._bname)
            if rc < 0 and rc != -ENOENT:
                _raise(rc, self.name, "unlinking the table segment")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._base == NULL else f"generation={self.generation}"
        return f"<TableWriter {self.name!r} capacity={self._capacity} {state}>"


@cython.final
cdef class TableReader:
    """A worker's read-only view of the routing-table segment."""
    cdef const void *_base
    cdef size_t _size
    cdef size_t _capacity
    cdef readonly str name

    def __cinit__(self, str name):
        cdef void *base = NULL
        cdef size_t size = 0
        cdef int rc
        cdef bytes bname = _encode_name(name)
        self.name = name
        rc = fp_shm_open(bname, 0, &base, &size)
        if rc < 0:
            _raise(rc, name, "opening the table segment")
        if fp_table_check(base, size) < 0:
            problem = _table_problem(base, size)
            fp_shm_unmap(base, size)
            raise ShmError(EINVAL, f"bad table segment: {problem}", name)
        self._base = base
        self._size = size
        self._capacity = <size_t>(<const fp_table_hdr *>base).capacity

    def __dealloc__(self):
        if self._base != NULL:
            fp_shm_unmap(<void *>self._base, self._size)

    cpdef unsigned long long generation(self) except? 0xFFFFFFFFFFFFFFFF:
        """The published generation: one acquire load. Compare it with the
        generation read() returned to know whether to read again."""
        if self._base == NULL:
            raise ValueError(f"TableReader {self.name!r} is closed")
        return fp_table_generation(self._base)

    def read(self):
        """(generation, payload) of the published table; (0, b"") if nothing
        has been published. Never returns a half-written table."""
        cdef const fp_table_hdr *h = <const fp_table_hdr *>self._base
        cdef uint64_t gen = 0
        cdef size_t hint
        cdef int64_t n
        cdef bytes buf
        if h == NULL:
            raise ValueError(f"TableReader {self.name!r} is closed")
        # Size the result from the current length. If a bigger table lands
        # meanwhile the read says E2BIG and the retry uses the full capacity,
        # which always fits.
        hint = <size_t>_load(&h.length[_load(&h.active) & 1])
        if hint > self._capacity:
            hint = self._capacity
        while True:
            buf = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>hint)
            n = fp_table_read(self._base, PyBytes_AS_STRING(buf), hint, &gen)
            if n >= 0:
                break
            if n == -E2BIG and hint < self._capacity:
                hint = self._capacity
                continue
            _raise(<int>n, self.name, "reading the table")
        if gen == 0:
            return (0, b"")
        if <size_t>n < hint:
            buf = buf[:n]
        return (gen, buf)

    @property
    def capacity(self):
        return self._capacity

    @property
    def closed(self):
        return self._base == NULL

    def close(self):
        """Unmaps the segment. Idempotent."""
        cdef int rc
        if self._base != NULL:
            rc = fp_shm_unmap(<void *>self._base, self._size)
            self._base = NULL
            if rc < 0:
                _raise(rc, self.name, "unmapping the table segment")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._base == NULL else f"generation={self.generation()}"
        return f"<TableReader {self.name!r} {state}>"


# ---------------------------------------------------------------- counters

cdef tuple _WORKER_FIELDS = ("pid", "applied_generation", "draining", "heartbeat")


cdef class CounterSegment:
    """The per-worker counter regions.

    CounterSegment(name, nworkers, nslots, create=True) creates and initialises
    the segment (manager); CounterSegment(name) opens it and takes the sizes
    from its header (workers, and a restarted manager). Nonzero sizes given
    to an open must match the header.

    The mapping stays alive while any CounterView of it exists, so a view's
    ``address`` handed to C stays valid for the view's lifetime; after close()
    the views refuse further calls.
    """
    cdef void *_base
    cdef size_t _size
    cdef uint32_t _nworkers
    cdef uint64_t _nslots
    cdef size_t _region_bytes
    cdef bytes _bname
    cdef readonly str name
    cdef bint _closed
    cdef bint _unlinked
    cdef Py_ssize_t _nviews

    def __cinit__(self, str name, Py_ssize_t nworkers=0, Py_ssize_t nslots=0, bint create=False):
        cdef void *base = NULL
        cdef size_t size = 0
        cdef int rc
        cdef const fp_counters_hdr *h
        self.name = name
        self._bname = _encode_name(name)
        self._unlinked = True
        self._closed = True
        if create:
            if nworkers <= 0 or nworkers > 0xFFFFFFFF:
                raise ValueError(f"nworkers must be in 1..2**32-1, not {nworkers}")
            if nslots < 0:
                raise ValueError(f"nslots must be >= 0, not {nslots}")
            size = fp_counters_segment_size(<uint32_t>nworkers, <uint64_t>nslots)
            if size == 0:
                raise ValueError(f"{nworkers} workers x {nslots} slots is too large")
            rc = fp_shm_create(self._bname, size, &base)
            if rc < 0:
                _raise(rc, name, "creating the counter segment")
            self._unlinked = False
            rc = fp_counters_init(base, size, <uint32_t>nworkers, <uint64_t>nslots)
            if rc < 0:
                fp_shm_unmap(base, size)
                fp_shm_unlink(self._bname)
                self._unlinked = True
                _raise(rc, name, "initialising the counter segment")
        else:
            rc = fp_shm_open(self._bname, 1, &base, &size)
            if rc < 0:
                _raise(rc, name, "opening the counter segment")
            if fp_counters_check(base, size) < 0:
                problem = _counters_problem(base, size)
                fp_shm_unmap(base, size)
                raise ShmError(EINVAL, f"bad counter segment: {problem}", name)
            h = <const fp_counters_hdr *>base
            if (nworkers and <uint64_t>nworkers != h.nworkers) or \
                    (nslots and <uint64_t>nslots != h.nslots):
                problem = (f"segment has {h.nworkers} workers x {h.nslots} slots, "
                           f"expected {nworkers} x {nslots}")
                fp_shm_unmap(base, size)
                raise ShmError(EINVAL, problem, name)
        h = <const fp_counters_hdr *>base
        self._base = base
        self._size = size
        self._nworkers = h.nworkers
        self._nslots = h.nslots
        self._region_bytes = <size_t>h.region_bytes
        self._closed = False
        self._unlinked = False      # an opener may unlink too (a restarted manager)

    def __dealloc__(self):
        # No view is alive (each holds a reference to us).
        if self._base != NULL:
            fp_shm_unmap(self._base, self._size)

    cdef int _check_open(self) except -1:
        if self._closed:
            raise ValueError(f"CounterSegment {self.name!r} is closed")
        return 0

    cdef int _check_worker(self, Py_ssize_t worker) except -1:
        self._check_open()
        if worker < 0 or <uint64_t>worker >= self._nworkers:
            raise IndexError(f"worker {worker} out of range 0..{self._nworkers - 1}")
        return 0

    cdef int _unmap(self) except -1:
        cdef int rc
        if self._base != NULL:
            rc = fp_shm_unmap(self._base, self._size)
            self._base = NULL
            if rc < 0:
                _raise(rc, self.name, "unmapping the counter segment")
        return 0

    cdef void _view_gone(self) noexcept:
        self._nviews -= 1
        if self._closed and self._nviews == 0 and self._base != NULL:
            fp_shm_unmap(self._base, self._size)
            self._base = NULL

    @property
    def nworkers(self):
        return self._nworkers

    @property
    def nslots(self):
        return self._nslots

    @property
    def closed(self):
        return self._closed

    def view(self, Py_ssize_t worker):
        """The CounterView of one worker's region."""
        cdef CounterView v
        self._check_worker(worker)
        v = CounterView.__new__(CounterView)
        v._seg = self
        v._hdr = fp_counters_worker(self._base, <uint32_t>worker)
        v._slots = fp_counters_slots(self._base, <uint32_t>worker)
        v._nslots = <Py_ssize_t>self._nslots
        v._worker = worker
        self._nviews += 1
        return v

    def sum(self, Py_ssize_t n=-1):
        """Per-slot sums over all workers: a list of the first n slots (all nslots by default)."""
        cdef Py_ssize_t i
        cdef uint64_t *out
        self._check_open()
        if n < 0 or n > <Py_ssize_t>self._nslots:
            n = <Py_ssize_t>self._nslots
        out = <uint64_t *>PyMem_Malloc(<size_t>(n if n > 0 else 1) * sizeof(uint64_t))
        if out == NULL:
            raise MemoryError()
        try:
            fp_counters_sum(self._base, out, <uint64_t>n)
            return [out[i] for i in range(n)]
        finally:
            PyMem_Free(out)

    def worker_info(self, Py_ssize_t worker):
        """The worker's header: {"pid", "applied_generation", "draining" (bool), "heartbeat"}."""
        cdef fp_worker_hdr *w
        self._check_worker(worker)
        w = fp_counters_worker(self._base, <uint32_t>worker)
        return {
            "pid": _load(&w.pid),
            "applied_generation": _load(&w.applied_generation),
            "draining": _load(&w.draining) != 0,
            "heartbeat": _load(&w.heartbeat),
        }

    def set_worker_info(self, Py_ssize_t worker, **fields):
        """Stores the given header fields (keys as worker_info returns)."""
        cdef fp_worker_hdr *w
        cdef uint64_t values[4]
        cdef int i
        self._check_worker(worker)
        unknown = set(fields).difference(_WORKER_FIELDS)
        if unknown:
            raise TypeError(f"unknown worker field(s): {', '.join(sorted(unknown))}")
        # Convert everything first, so a bad value stores nothing.
        for i, key in enumerate(_WORKER_FIELDS):
            if key in fields:
                v = fields[key]
                values[i] = (1 if v else 0) if key == "draining" else v
        w = fp_counters_worker(self._base, <uint32_t>worker)
        if "pid" in fields:
            _store(&w.pid, values[0])
        if "applied_generation" in fields:
            _store(&w.applied_generation, values[1])
        if "draining" in fields:
            _store(&w.draining, values[2])
        if "heartbeat" in fields:
            _store(&w.heartbeat, values[3])

    def reset_region(self, Py_ssize_t worker):
        """Zeroes the worker's header and every counter (e.g. before a
        replacement worker takes the region over)."""
        cdef uint64_t *p
        cdef size_t i, n = self._region_bytes // sizeof(uint64_t)
        self._check_worker(worker)
        p = <uint64_t *>fp_counters_worker(self._base, <uint32_t>worker)
        for i in range(n):
            _store(&p[i], 0)

    def close(self, bint unlink=False):
        """Closes the segment and, with ``unlink``, removes its name.
        Idempotent. The mapping itself goes when the last view does."""
        cdef int rc
        if not self._closed:
            self._closed = True
            if self._nviews == 0:
                self._unmap()
        if unlink and not self._unlinked:
            self._unlinked = True
            rc = fp_shm_unlink(self._bname)
            if rc < 0 and rc != -ENOENT:
                _raise(rc, self.name, "unlinking the counter segment")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = " closed" if self._closed else ""
        return (f"<CounterSegment {self.name!r} nworkers={self._nworkers} "
                f"nslots={self._nslots}{state}>")


@cython.final
@cython.no_gc_clear
cdef class CounterView:
    """One worker's region: its counters and its header. Only that worker
    writes it. Made by CounterSegment.view(); keeps the mapping alive."""
    cdef CounterSegment _seg
    cdef fp_worker_hdr *_hdr
    cdef uint64_t *_slots
    cdef Py_ssize_t _nslots
    cdef Py_ssize_t _worker

    def __cinit__(self):
        self._seg = None

    def __dealloc__(self):
        if self._seg is not None:
            self._seg._view_gone()

    cdef inline int _check(self, Py_ssize_t slot) except -1:
        if self._seg is None or self._seg._closed:
            raise ValueError("CounterView of a closed CounterSegment")
        if <size_t>slot >= <size_t>self._nslots:
            raise IndexError(f"slot {slot} out of range 0..{self._nslots - 1}")
        return 0

    cpdef void add(self, Py_ssize_t slot, unsigned long long n) except *:
        """Adds n to a counter (single writer: this worker)."""
        self._check(slot)
        fp_counter_add(&self._slots[slot], n)

    cpdef unsigned long long get(self, Py_ssize_t slot) except? 0xFFFFFFFFFFFFFFFF:
        self._check(slot)
        return _load(&self._slots[slot])

    cpdef void set(self, Py_ssize_t slot, unsigned long long v) except *:
        self._check(slot)
        _store(&self._slots[slot], v)

    def series(self, Py_ssize_t base, Py_ssize_t count, Py_ssize_t width):
        """The used series of a series area (see stats/names.py): for i in
        0..count-1 while the slot base + i*width (the KEY) is nonzero, a tuple
        of the width slots of series i, KEY first. The KEY is read with an
        acquire load, so the rest of a series seen is the writer's, not stale."""
        cdef Py_ssize_t i, j, at
        cdef uint64_t key
        cdef list out = []
        if width < 1 or base < 0 or count < 0:
            raise ValueError("series: base and count must be >= 0, width >= 1")
        if count > 0 and <size_t>(base + count * width) > <size_t>self._nslots:
            raise IndexError(f"series area {base}+{count}x{width} beyond {self._nslots} slots")
        self._check(0)
        for i in range(count):
            at = base + i * width
            key = _load_acquire(&self._slots[at])
            if key == 0:
                break
            out.append((key,) + tuple([_load(&self._slots[at + j]) for j in range(1, width)]))
        return out

    @property
    def address(self):
        """Address of slot 0 (a uint64_t array of nslots) for C code such as
        the relay; valid while this view is alive."""
        if self._seg is None:
            raise ValueError("CounterView not made by CounterSegment.view()")
        return <uintptr_t>self._slots

    @property
    def worker(self):
        return self._worker

    @property
    def nslots(self):
        return self._nslots

    def set_applied_generation(self, unsigned long long gen):
        """Records the table generation whose listeners this worker has bound."""
        self._check_header()
        _store(&self._hdr.applied_generation, gen)

    def set_draining(self, bint flag):
        self._check_header()
        _store(&self._hdr.draining, 1 if flag else 0)

    def heartbeat(self):
        """Bumps the heartbeat; returns its new value."""
        cdef uint64_t v
        self._check_header()
        v = _load(&self._hdr.heartbeat) + 1
        _store(&self._hdr.heartbeat, v)
        return v

    cdef int _check_header(self) except -1:
        if self._seg is None or self._seg._closed:
            raise ValueError("CounterView of a closed CounterSegment")
        return 0

    def __repr__(self):
        return f"<CounterView worker={self._worker} nslots={self._nslots}>"
