"""fastproxy._native.shm through its Python API: the table seqlock and the counters.

Every segment is named "/fastproxy-test-<pid>-..."; a fixture fails any test
that leaves one in /dev/shm (and removes it).
"""
import ctypes
import errno
import gc
import multiprocessing
import os
import time

import pytest

from fastproxy._native.shm import (
    CounterSegment,
    CounterView,
    ShmError,
    TableReader,
    TableWriter,
)
from tests.support.shm_segments import fresh_name, remove_test_leftovers


@pytest.fixture(autouse=True)
def no_leftovers():
    yield
    left = remove_test_leftovers()
    assert left == [], f"segments left in /dev/shm: {left}"


@pytest.fixture
def name():
    """A fresh segment name per call: name("table") -> "/fastproxy-test-<pid>-<n>-table"."""
    return fresh_name


def _mapped(seg_name):
    with open("/proc/self/maps") as f:
        return any(line.rstrip().removesuffix(" (deleted)").endswith("/dev/shm" + seg_name)
                   for line in f)


# ---------------------------------------------------------------- table

def test_nothing_published(name):
    n = name("table")
    with TableWriter(n, 64) as w, TableReader(n) as r:
        assert w.generation == 0
        assert r.generation() == 0
        assert r.read() == (0, b"")
        assert w.capacity == r.capacity == 64


@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(256)) * 4, b"\0" * 1000, b"y" * 4096])
def test_round_trip(name, payload):
    n = name("table")
    with TableWriter(n, 4096) as w, TableReader(n) as r:
        gen = w.publish(payload)
        assert gen == 2
        assert r.read() == (2, payload)


def test_publish_accepts_buffers(name):
    n = name("table")
    with TableWriter(n, 100) as w, TableReader(n) as r:
        assert w.publish(bytearray(b"abc")) == 2
        assert r.read() == (2, b"abc")
        assert w.publish(memoryview(b"0123456789")[2:5]) == 4
        assert r.read() == (4, b"234")


def test_generation_semantics(name):
    n = name("table")
    with TableWriter(n, 256) as w, TableReader(n) as r:
        seen = []
        for i in range(1, 11):
            payload = bytes([i]) * (i * 20)
            gen = w.publish(payload)
            assert gen == 2 * i                      # even, +2 per publish
            assert w.generation == r.generation() == gen
            assert r.read() == (gen, payload)
            seen.append(gen)
        # read() is repeatable and does not move the generation
        assert r.read() == r.read() == (20, bytes([10]) * 200)
        # a second reader agrees
        with TableReader(n) as r2:
            assert r2.read() == (20, bytes([10]) * 200)
        assert seen == sorted(set(seen))


def test_reader_sees_size_changes(name):
    """Shrinking and growing tables (read() sizes its result from the length)."""
    n = name("table")
    with TableWriter(n, 10000) as w, TableReader(n) as r:
        for size in (10000, 1, 5000, 0, 9999, 10000, 3):
            gen = w.publish(b"z" * size)
            assert r.read() == (gen, b"z" * size)


def test_too_big_names_sizes(name):
    n = name("table")
    with TableWriter(n, 100) as w, TableReader(n) as r:
        assert w.publish(b"a" * 100) == 2             # exactly capacity fits
        with pytest.raises(ValueError, match=r"101 bytes.*capacity of 100 bytes"):
            w.publish(b"a" * 101)
        assert w.generation == 2                     # the refused publish changed nothing
        assert r.read() == (2, b"a" * 100)


def test_writer_bad_capacity(name):
    with pytest.raises(ValueError):
        TableWriter(name(), 0)
    with pytest.raises(ValueError):
        TableWriter(name(), -5)
    with pytest.raises(ShmError) as ei:                # more than the system maps
        TableWriter(name(), 2**62)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(ValueError, match="too large"):  # more than a size_t holds
        TableWriter(name(), 2**63 - 1)
    with pytest.raises(OverflowError):
        TableWriter(name(), 2**64)


def test_writer_refuses_existing_segment(name):
    n = name("table")
    with TableWriter(n, 10):
        with pytest.raises(ShmError) as ei:
            TableWriter(n, 10)
        assert ei.value.errno == errno.EEXIST
        assert ei.value.filename == n
        assert isinstance(ei.value, OSError)


def test_reader_missing_segment(name):
    n = name("missing")
    with pytest.raises(ShmError) as ei:
        TableReader(n)
    assert ei.value.errno == errno.ENOENT
    assert ei.value.filename == n


def test_reader_rejects_other_segments(name):
    n = name("counters")
    with CounterSegment(n, 2, 8, create=True) as c:
        with pytest.raises(ShmError, match="not a table segment") as ei:
            TableReader(n)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(ShmError, match="not a counter segment"):
            with TableWriter(name("table"), 8) as w:
                CounterSegment(w.name)
        c.close(unlink=True)


def test_bad_layout_version_rejected(name):
    n = name("table")
    with TableWriter(n, 16):
        with open("/dev/shm" + n, "r+b") as f:         # layout_version: bytes 8..11
            f.seek(8)
            f.write((99).to_bytes(4, "little"))
        with pytest.raises(ShmError, match="layout version 99"):
            TableReader(n)


def test_segment_name_with_nul(name):
    with pytest.raises(ValueError):
        TableWriter(name() + "\0x", 10)


def test_close_is_idempotent_and_unlinks(name):
    n = name("table")
    w = TableWriter(n, 10)
    r = TableReader(n)
    w.publish(b"hi")
    w.close()
    w.close()
    assert w.closed
    assert not os.path.exists("/dev/shm" + n)
    # an open reader keeps its mapping: the table stays readable
    assert r.read() == (2, b"hi")
    r.close()
    r.close()
    for call in (lambda: w.publish(b"x"), lambda: w.generation, r.generation, r.read):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_close_without_unlink_then_unlink(name):
    n = name("table")
    w = TableWriter(n, 10)
    w.close(unlink=False)
    assert os.path.exists("/dev/shm" + n)
    with TableReader(n) as r:
        assert r.read() == (0, b"")
    w.close(unlink=True)
    assert not os.path.exists("/dev/shm" + n)


def test_garbage_collected_writer_unlinks(name):
    n = name("table")
    w = TableWriter(n, 10)
    assert os.path.exists("/dev/shm" + n)
    del w
    gc.collect()
    assert not os.path.exists("/dev/shm" + n)
    assert not _mapped(n)


# Torture: a writer publishing while readers in other processes hammer read().
# Publish i has generation 2(i+1); its length and its one repeated byte are
# functions of i, so each read is checked against the generation it reports.
# Big and tiny tables alternate: while a reader copies a big one, the writer
# can publish a tiny one and start overwriting the big one's slot, which is
# exactly the race the seqlock must catch.
CAP = 128 * 1024
PERIOD = 122                                  # lcm(2, 61)


def _shape(gen):
    k = (gen // 2 - 1) % PERIOD
    size = CAP - (k % 7) * 1000 if k % 2 == 0 else 1 + k % 13
    return k % 61 + 1, size                   # (byte, length)


def _hammer(seg_name, stop, ready, results):
    r = TableReader(seg_name)
    reads = torn = backwards = distinct = 0
    prev = 0
    ready.set()
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        gen, payload = r.read()
        reads += 1
        if gen < prev:
            backwards += 1
        if gen != prev:
            distinct += 1
        prev = gen
        if gen == 0:
            torn += payload != b""
            continue
        byte, size = _shape(gen)
        if gen % 2 or len(payload) != size or payload.count(byte) != size:
            torn += 1
    r.close()
    results.put((reads, torn, backwards, distinct))


def test_readers_never_see_torn_tables(name):
    n = name("table")
    ctx = multiprocessing.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in range(2)]
    payloads = {}
    for gen in range(2, 2 * PERIOD + 1, 2):
        byte, size = _shape(gen)
        payloads[(gen // 2 - 1) % PERIOD] = bytes([byte]) * size
    with TableWriter(n, CAP) as w:
        procs = [ctx.Process(target=_hammer, args=(n, stop, ready, results)) for ready in readies]
        for p in procs:
            p.start()
        try:
            for ready in readies:
                assert ready.wait(30), "reader did not start"
            t_end = time.monotonic() + 1.5
            i = 0
            while i < 5000 or time.monotonic() < t_end:
                assert w.publish(payloads[i % PERIOD]) == 2 * (i + 1)
                i += 1
        finally:
            stop.set()
            stats = [results.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    for reads, torn, backwards, distinct in stats:
        assert torn == 0, stats
        assert backwards == 0, stats
        assert reads > 100 and distinct > 10, stats     # they really raced the writer


# ---------------------------------------------------------------- counters

def test_counter_views(name):
    n = name("counters")
    with CounterSegment(n, nworkers=2, nslots=10, create=True) as c:
        assert (c.nworkers, c.nslots) == (2, 10)
        v = c.view(1)
        assert isinstance(v, CounterView)
        assert (v.worker, v.nslots) == (1, 10)
        assert [v.get(i) for i in range(10)] == [0] * 10
        v.add(0, 5)
        v.add(0, 7)
        v.add(9, 2**64 - 1)
        v.set(3, 42)
        assert (v.get(0), v.get(3), v.get(9)) == (12, 42, 2**64 - 1)
        v.add(9, 1)                                   # wraps like the C counter
        assert v.get(9) == 0
        assert c.view(0).get(0) == 0                  # regions are separate
        for bad in (-1, 10, 2**40):
            with pytest.raises(IndexError):
                v.add(bad, 1)
            with pytest.raises(IndexError):
                v.get(bad)
            with pytest.raises(IndexError):
                v.set(bad, 1)
        with pytest.raises(OverflowError):
            v.add(0, -1)
        for bad in (-1, 2):
            with pytest.raises(IndexError):
                c.view(bad)
        c.close(unlink=True)


def test_counter_address_is_slot_zero(name):
    n = name("counters")
    with CounterSegment(n, 3, 600, create=True) as c:
        views = [c.view(w) for w in range(3)]
        for v in views:
            assert v.address % 64 == 0
            arr = (ctypes.c_uint64 * 600).from_address(v.address)
            arr[0] += 3                               # what the relay does from C
            arr[599] = 11
            assert (v.get(0), v.get(599)) == (3, 11)
        # one page-aligned region per worker: header (64) + 600 slots -> 8192 bytes
        assert views[1].address - views[0].address == 8192
        assert views[2].address - views[1].address == 8192
        assert (views[0].address - 64) % 4096 == 0
        assert c.sum()[0] == 9 and c.sum()[599] == 33
        c.close(unlink=True)


def test_sum_and_worker_info(name):
    n = name("counters")
    with CounterSegment(n, 3, 5, create=True) as c:
        for w in range(3):
            v = c.view(w)
            for s in range(5):
                v.add(s, (w + 1) * (s + 1))
        assert c.sum() == [6 * (s + 1) for s in range(5)]
        assert c.worker_info(2) == {"pid": 0, "applied_generation": 0,
                                    "draining": False, "heartbeat": 0}
        c.set_worker_info(2, pid=1234, applied_generation=8, draining=True, heartbeat=5)
        assert c.worker_info(2) == {"pid": 1234, "applied_generation": 8,
                                    "draining": True, "heartbeat": 5}
        c.set_worker_info(2, draining=False)
        assert c.worker_info(2)["draining"] is False
        assert c.worker_info(2)["pid"] == 1234       # untouched fields stay
        v = c.view(1)
        v.set_applied_generation(42)
        v.set_draining(True)
        assert v.heartbeat() == 1 and v.heartbeat() == 2
        assert c.worker_info(1) == {"pid": 0, "applied_generation": 42,
                                    "draining": True, "heartbeat": 2}
        with pytest.raises(TypeError, match="bogus"):
            c.set_worker_info(1, pid=1, bogus=2)
        assert c.worker_info(1)["pid"] == 0           # nothing stored on error
        with pytest.raises(OverflowError):
            c.set_worker_info(1, pid=-1)
        with pytest.raises(IndexError):
            c.worker_info(3)

        c.reset_region(1)
        assert c.worker_info(1) == {"pid": 0, "applied_generation": 0,
                                    "draining": False, "heartbeat": 0}
        assert [c.view(1).get(s) for s in range(5)] == [0] * 5
        assert c.view(2).get(4) == 15                 # other regions untouched
        assert c.sum() == [3 * (s + 1) + 1 * (s + 1) for s in range(5)]
        c.close(unlink=True)


def test_zero_slots(name):
    n = name("counters")
    with CounterSegment(n, 1, 0, create=True) as c:
        assert c.sum() == []
        with pytest.raises(IndexError):
            c.view(0).add(0, 1)
        c.close(unlink=True)


def test_open_reads_sizes_from_header(name):
    n = name("counters")
    with CounterSegment(n, 4, 100, create=True) as c:
        c.view(3).add(99, 7)
        with CounterSegment(n) as o:
            assert (o.nworkers, o.nslots) == (4, 100)
            assert o.sum()[99] == 7
        with CounterSegment(n, 4, 100) as o:          # matching sizes are fine
            assert o.nslots == 100
        with pytest.raises(ShmError, match="4 workers x 100 slots"):
            CounterSegment(n, 5, 100)
        c.close(unlink=True)
    with pytest.raises(ShmError) as ei:
        CounterSegment(n)
    assert ei.value.errno == errno.ENOENT


def test_bad_counter_sizes(name):
    with pytest.raises(ValueError):
        CounterSegment(name(), 0, 10, create=True)
    with pytest.raises(ValueError):
        CounterSegment(name(), 2, -1, create=True)


def test_view_keeps_mapping_alive(name):
    n = name("counters")
    c = CounterSegment(n, 2, 4, create=True)
    v = c.view(0)
    v.add(1, 5)
    del c
    gc.collect()
    assert _mapped(n)
    v.add(1, 5)                                       # segment object lives through the view
    assert v.get(1) == 10
    CounterSegment(n).close(unlink=True)
    del v
    gc.collect()
    assert not _mapped(n)


def test_close_with_live_views(name):
    n = name("counters")
    c = CounterSegment(n, 2, 4, create=True)
    v = c.view(1)
    v.add(0, 1)
    addr = v.address
    c.close(unlink=True)
    c.close(unlink=True)                              # idempotent
    assert not os.path.exists("/dev/shm" + n)
    for call in (lambda: v.add(0, 1), lambda: v.get(0), lambda: v.set(0, 1), v.heartbeat,
                 lambda: v.set_draining(True), c.sum, lambda: c.view(0), lambda: c.worker_info(0)):
        with pytest.raises(ValueError, match="closed"):
            call()
    # ... but the mapping stays until the last view goes, so C code holding
    # the address never touches unmapped memory
    assert _mapped(n)
    assert ctypes.c_uint64.from_address(addr).value == 1
    del v
    gc.collect()
    assert not _mapped(n)


def _worker(seg_name, worker, rounds):
    c = CounterSegment(seg_name)
    v = c.view(worker)
    c.set_worker_info(worker, pid=os.getpid())
    for _ in range(rounds):
        for s in range(0, c.nslots, 3):
            v.add(s, worker + 1)
        v.heartbeat()
    v.set_applied_generation(100 + worker)
    del v
    c.close()


def test_counter_sum_across_three_processes(name):
    n = name("counters")
    ctx = multiprocessing.get_context("spawn")
    rounds = 2000
    with CounterSegment(n, 3, 50, create=True) as c:
        procs = [ctx.Process(target=_worker, args=(n, w, rounds)) for w in range(3)]
        for p in procs:
            p.start()
        prev = c.sum()
        while any(p.is_alive() for p in procs):
            cur = c.sum()
            assert all(a >= b for a, b in zip(cur, prev))  # never goes backwards
            prev = cur
            time.sleep(0.001)
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert c.sum() == [rounds * 6 if s % 3 == 0 else 0 for s in range(50)]
        for w, p in enumerate(procs):
            assert c.worker_info(w) == {"pid": p.pid, "applied_generation": 100 + w,
                                        "draining": False, "heartbeat": rounds}
        c.close(unlink=True)
