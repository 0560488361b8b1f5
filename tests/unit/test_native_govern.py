"""fastproxy._native.govern through its Python API: the governance segment,
ClusterCfg and RetryCfg.

Every segment is named "/fastproxy-test-<pid>-<n>-govern"; a fixture fails
any test that leaves one in /dev/shm (and removes it). What a worker's C
engine does to the segment (report an outcome, acquire a breaker) is done
here through ctypes on the very functions the wrapper links (csrc/govern.c
is compiled into the module), on the addresses the wrapper hands out.
"""
import ctypes
import errno
import gc
import math
import multiprocessing
import os
import time

import pytest

from fastproxy._native import govern as gvmod
from fastproxy._native.govern import (
    MAX_RETRIABLE_CODES,
    UNLIMITED,
    ClusterCfg,
    GovernSegment,
    RetryCfg,
)
from fastproxy._native.shm import ShmError, TableWriter
from tests.support.shm_segments import fresh_name, remove_test_leftovers

CLUSTER_FIELDS = ("version", "cx_active", "rq_pending", "rq_active", "rq_retry_active", "ejected",
                  "cx_overflow", "rq_pending_overflow", "rq_overflow", "rq_retry_overflow", "rq_retry",
                  "rq_retry_success", "ejections_total", "ejections_5xx", "ejections_gateway",
                  "ejections_overflow")
ENDPOINT_FIELDS = ("rq_active", "rq_total", "cons_5xx", "cons_gw", "ejected", "ejections",
                   "eject_until_ms", "hc_failed")

GV_5XX, GV_GATEWAY = 1, 2
GV_RETRY_5XX, GV_RETRY_STATUS_CODES = 0x01, 0x40
GV_ATTEMPT_STATUS = 4

# A fill interval of ~46 days: no refill happens while a test runs.
NEVER_MS = 4_000_000_000


# ---------------------------------------------------------------- harness

@pytest.fixture(autouse=True)
def no_leftovers():
    yield
    left = remove_test_leftovers()
    assert left == [], f"segments left in /dev/shm: {left}"


@pytest.fixture
def name():
    """A fresh segment name per call: "/fastproxy-test-<pid>-<n>-govern"."""
    return lambda: fresh_name("govern")


@pytest.fixture
def seg(name):
    """A created segment (4 clusters, 8 endpoints, 4 buckets), always unlinked."""
    s = GovernSegment(name(), create=True, ncluster=4, nendpoint=8, nbucket=4)
    try:
        yield s
    finally:
        s.close(unlink=True)


@pytest.fixture(scope="module")
def clib():
    """csrc/govern.c as linked into the module, for what only C callers do."""
    lib = ctypes.CDLL(gvmod.__file__)
    p, i, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64
    for fn, args, res in (
            ("gv_outlier_report", (p, p, p, i, u64), i),
            ("gv_rq_acquire", (p, p), i),
            ("gv_rq_release", (p,), None),
            ("gv_retry_acquire", (p, p), i),
            ("gv_retry_wanted", (p, i, i), i),
            ("gv_backoff_ms", (p, ctypes.c_uint32, u64), ctypes.c_uint32)):
        f = getattr(lib, fn)
        f.argtypes, f.restype = args, res
    return lib


def cluster_cfg(**kw):
    args = dict(max_connections=UNLIMITED, max_pending_requests=UNLIMITED, max_requests=UNLIMITED,
                max_retries=UNLIMITED, budget_percent=0.0, min_retry_concurrency=0, od_enabled=False,
                consecutive_5xx=0, consecutive_gateway_failure=0, base_ejection_ms=0, max_ejection_ms=0,
                max_ejection_percent=0, nhosts=0)
    args.update(kw)
    return ClusterCfg(**args)


def od_cfg(**kw):
    args = dict(od_enabled=True, consecutive_5xx=3, consecutive_gateway_failure=0, base_ejection_ms=1000,
                max_ejection_ms=10_000, max_ejection_percent=100, nhosts=8)
    args.update(kw)
    return cluster_cfg(**args)


def eject(clib, s, cslot, eslot, cfg, now_ms):
    """Reports failures, as a worker would, until the endpoint is ejected."""
    for _ in range(cfg.consecutive_5xx):
        got = clib.gv_outlier_report(s.cluster_address(cslot), s.endpoint_address(eslot), cfg.address,
                                     GV_5XX, now_ms)
    assert got == 1


# ---------------------------------------------------------------- the segment

def test_create_attach_unlink(name):
    n = name()
    s = GovernSegment(n, create=True, ncluster=3, nendpoint=5, nbucket=2)
    try:
        assert os.path.exists("/dev/shm" + n)
        assert (s.name, s.ncluster, s.nendpoint, s.nbucket, s.closed) == (n, 3, 5, 2, False)
        assert os.path.getsize("/dev/shm" + n) == 4096 + 3 * 128 + 5 * 64 + 2 * 64
        with GovernSegment(n) as w:                      # a worker: sizes from the header
            assert (w.ncluster, w.nendpoint, w.nbucket) == (3, 5, 2)
            assert w.address != s.address                # its own mapping, the same memory
            assert s.set_health(0, 4, False)
            assert not w.available(4)
            assert w.version(0) == 1
        with GovernSegment(n, ncluster=3, nendpoint=5, nbucket=2) as w:
            assert w.nbucket == 2
        with pytest.raises(ShmError) as e:
            GovernSegment(n, ncluster=4)                 # counts given must match
        assert e.value.errno == errno.EINVAL and "expected 4" in str(e.value)
        with pytest.raises(ShmError) as e:
            GovernSegment(n, create=True, ncluster=1)
        assert e.value.errno == errno.EEXIST
    finally:
        s.close(unlink=True)
    assert not os.path.exists("/dev/shm" + n)
    s.close(unlink=True)                                 # idempotent
    with pytest.raises(ShmError) as e:
        GovernSegment(n)
    assert e.value.errno == errno.ENOENT and e.value.filename == n


def test_close_without_unlink_and_gc(name):
    n = name()
    s = GovernSegment(n, create=True, ncluster=1)
    s.close()
    assert s.closed and os.path.exists("/dev/shm" + n)  # the manager unlinks explicitly
    for call in (lambda: s.version(0), lambda: s.available(0), lambda: s.rq_active(0),
                 lambda: s.take(0, 1, 1, 1), lambda: s.cluster_stats(0), lambda: s.address,
                 lambda: s.cluster_address(0), lambda: s.reset_cluster(0)):
        with pytest.raises(ValueError, match="closed"):
            call()
    w = GovernSegment(n)
    del w
    gc.collect()                                         # collection unmaps, never unlinks
    assert os.path.exists("/dev/shm" + n)
    GovernSegment(n).close(unlink=True)
    assert not os.path.exists("/dev/shm" + n)


def test_not_a_governance_segment(name):
    n = name()
    with TableWriter(n, 4096):
        with pytest.raises(ShmError, match="not a governance segment") as e:
            GovernSegment(n)
        assert e.value.errno == errno.EINVAL
    # a header claiming more slots than the segment holds
    with GovernSegment(n, create=True, ncluster=1, nendpoint=1, nbucket=1) as s:
        ctypes.c_uint32.from_address(s.address + 20).value = 1000   # gv_hdr.nbucket
        with pytest.raises(ShmError, match="do not fit") as e:
            GovernSegment(n)
        assert e.value.errno == errno.EINVAL
        s.close(unlink=True)


def test_bad_arguments(name):
    with pytest.raises(ValueError):
        GovernSegment(name(), create=True, ncluster=-1)
    with pytest.raises(ValueError):
        GovernSegment(name(), create=True, nbucket=2**32)
    with pytest.raises(ValueError, match="NUL"):
        GovernSegment("/fastproxy-test-\0x", create=True)


def test_layout_and_addresses(seg):
    base = seg.address
    assert base % 4096 == 0
    for i in range(4):
        assert seg.cluster_address(i) == base + 4096 + 128 * i
    for i in range(8):
        assert seg.endpoint_address(i) == base + 4096 + 4 * 128 + 64 * i
    for bad in (4, -1, 2**40):
        assert seg.cluster_address(bad) == 0
    assert seg.endpoint_address(8) == 0
    assert seg.endpoint_address(-1) == 0


def test_slots_out_of_range(seg):
    cfg = cluster_cfg()
    for call in (lambda: seg.version(4), lambda: seg.version(-1), lambda: seg.available(8),
                 lambda: seg.rq_active(8), lambda: seg.take(4, 1, 1, 1), lambda: seg.cluster_stats(4),
                 lambda: seg.endpoint_stats(8), lambda: seg.bucket_stats(4), lambda: seg.reset_cluster(4),
                 lambda: seg.reset_endpoint(-1), lambda: seg.reset_bucket(4),
                 lambda: seg.set_health(0, 8, True), lambda: seg.set_health(4, 0, True),
                 lambda: seg.uneject_due(0, 8, cfg)):
        with pytest.raises(IndexError, match="out of range"):
            call()


def test_stats_start_at_zero(seg):
    assert seg.cluster_stats(3) == dict.fromkeys(CLUSTER_FIELDS, 0)
    assert seg.endpoint_stats(7) == dict.fromkeys(ENDPOINT_FIELDS, 0)
    assert seg.bucket_stats(3) == {"tokens": None, "allowed": 0, "limited": 0}
    assert list(seg.cluster_stats(0)) == list(CLUSTER_FIELDS)
    assert list(seg.endpoint_stats(0)) == list(ENDPOINT_FIELDS)
    assert seg.version(0) == 0 and seg.available(0) and seg.rq_active(0) == 0


def test_stats_read_every_field(seg):
    # each field gets a distinct value at its C offset
    for k, field in enumerate(CLUSTER_FIELDS):
        ctypes.c_int64.from_address(seg.cluster_address(2) + 8 * k).value = 100 + k
    assert seg.cluster_stats(2) == {f: 100 + k for k, f in enumerate(CLUSTER_FIELDS)}
    assert seg.version(2) == 100
    ep = seg.endpoint_address(5)
    ctypes.c_int64.from_address(ep).value = -3          # rq_active: a signed count
    ctypes.c_uint64.from_address(ep + 8).value = 2**64 - 1
    for off, v in ((16, 7), (20, 8), (24, 1), (28, 9), (40, 1)):
        ctypes.c_uint32.from_address(ep + off).value = v
    ctypes.c_uint64.from_address(ep + 32).value = 123456789
    assert seg.endpoint_stats(5) == {"rq_active": -3, "rq_total": 2**64 - 1, "cons_5xx": 7, "cons_gw": 8,
                                     "ejected": 1, "ejections": 9, "eject_until_ms": 123456789,
                                     "hc_failed": 1}
    assert seg.rq_active(5) == -3
    assert not seg.available(5)
    seg.reset_endpoint(5)
    seg.reset_cluster(2)
    assert seg.endpoint_stats(5) == dict.fromkeys(ENDPOINT_FIELDS, 0)
    assert seg.cluster_stats(2) == dict.fromkeys(CLUSTER_FIELDS, 0)


def test_now_ms():
    a = GovernSegment.now_ms()
    assert abs(a - time.monotonic() * 1000) < 50        # CLOCK_MONOTONIC, in ms
    time.sleep(0.02)
    assert GovernSegment.now_ms() - a >= 19


# ---------------------------------------------------------------- health, ejection

def test_set_health_bumps_version(seg):
    assert seg.set_health(1, 3, True) is False           # healthy already: nothing moves
    assert seg.version(1) == 0
    assert seg.set_health(1, 3, False) is True
    assert seg.version(1) == 1 and not seg.available(3)
    assert seg.endpoint_stats(3)["hc_failed"] == 1
    assert seg.set_health(1, 3, False) is False
    assert seg.version(1) == 1
    assert seg.set_health(1, 3, True) is True
    assert seg.version(1) == 2 and seg.available(3)
    assert seg.version(0) == 0                           # other clusters untouched


def test_uneject_due(seg, clib):
    cfg = od_cfg(base_ejection_ms=1000, max_ejection_ms=10_000)
    t0 = 5_000_000
    eject(clib, seg, 1, 2, cfg, t0)
    st = seg.endpoint_stats(2)
    assert (st["ejected"], st["ejections"], st["eject_until_ms"], st["cons_5xx"]) == (1, 1, t0 + 1000, 0)
    assert not seg.available(2)
    assert seg.cluster_stats(1)["ejected"] == 1 and seg.version(1) == 1
    assert seg.uneject_due(1, 2, cfg, t0 + 999) is False
    assert seg.uneject_due(1, 2, cfg, t0 + 1000) is True
    assert seg.available(2) and seg.version(1) == 2
    assert seg.cluster_stats(1)["ejected"] == 0
    assert seg.uneject_due(1, 2, cfg, t0 + 1000) is False
    # ejected again: twice as long; then the multiplier decays, one step per
    # review, once base_ejection_ms passed after the ejection's end
    eject(clib, seg, 1, 2, cfg, t0 + 5000)
    assert seg.endpoint_stats(2)["eject_until_ms"] == t0 + 7000
    assert seg.uneject_due(1, 2, cfg, t0 + 7000) is True
    assert seg.endpoint_stats(2)["ejections"] == 2
    assert seg.uneject_due(1, 2, cfg, t0 + 7999) is False
    assert seg.endpoint_stats(2)["ejections"] == 2
    assert seg.uneject_due(1, 2, cfg, t0 + 8000) is False
    assert seg.endpoint_stats(2)["ejections"] == 1
    assert seg.uneject_due(1, 2, cfg, t0 + 9000) is False
    assert seg.endpoint_stats(2)["ejections"] == 0
    assert seg.version(1) == 4                           # decay moves no availability


def test_uneject_due_default_clock(seg, clib):
    cfg = od_cfg(base_ejection_ms=1, max_ejection_ms=1)
    eject(clib, seg, 0, 0, cfg, GovernSegment.now_ms())
    time.sleep(0.01)
    assert seg.uneject_due(0, 0, cfg) is True            # now_ms=0: the monotonic clock now


def test_ejection_cap_through_cfg(seg, clib):
    # 25% of 8 hosts: two at once; the third is counted as an overflow
    cfg = od_cfg(consecutive_5xx=1, max_ejection_percent=25, nhosts=8)
    eject(clib, seg, 0, 0, cfg, 1000)
    eject(clib, seg, 0, 1, cfg, 1000)
    assert clib.gv_outlier_report(seg.cluster_address(0), seg.endpoint_address(2), cfg.address, GV_5XX, 1000) == 0
    st = seg.cluster_stats(0)
    assert (st["ejected"], st["ejections_total"], st["ejections_5xx"], st["ejections_overflow"]) == (2, 2, 2, 1)
    assert [seg.available(i) for i in range(4)] == [False, False, True, True]


# ---------------------------------------------------------------- rate limit

def test_take_and_bucket_stats(seg):
    assert [seg.take(2, 3, 1, NEVER_MS) for _ in range(5)] == [True, True, True, False, False]
    assert seg.bucket_stats(2) == {"tokens": 0, "allowed": 3, "limited": 2}
    assert seg.bucket_stats(1) == {"tokens": None, "allowed": 0, "limited": 0}
    seg.reset_bucket(2)
    assert seg.bucket_stats(2) == {"tokens": None, "allowed": 0, "limited": 0}
    assert seg.take(2, 10, 1, NEVER_MS)
    assert seg.bucket_stats(2)["tokens"] == 9


def test_take_refills_on_the_clock(seg):
    assert seg.take(0, 1, 1, 20)
    # a fill comes within 20 ms (two to be safe on a loaded machine)
    deadline = time.monotonic() + 5
    while not seg.take(0, 1, 1, 20):
        assert time.monotonic() < deadline
        time.sleep(0.005)


def _taker(seg_name, slot, n, max_tokens, go, out):
    s = GovernSegment(seg_name)
    go.wait(30)
    allowed = sum(1 for _ in range(n) if s.take(slot, max_tokens, 1, NEVER_MS))
    s.close()
    out.put(allowed)


def test_two_processes_share_a_bucket(seg):
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    n, max_tokens = 50_000, 30_000
    procs = [ctx.Process(target=_taker, args=(seg.name, 3, n, max_tokens, go, out)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        go.set()
        got = [out.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    assert sum(got) == max_tokens                        # exactly the bucket, however shared
    assert seg.bucket_stats(3) == {"tokens": 0, "allowed": max_tokens, "limited": 2 * n - max_tokens}


def _flip_health(seg_name, cslot, eslot):
    with GovernSegment(seg_name) as s:
        s.set_health(cslot, eslot, False)


def test_another_process_moves_the_version(seg):
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_flip_health, args=(seg.name, 2, 6))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert seg.version(2) == 1 and not seg.available(6)


# ---------------------------------------------------------------- configuration

def _cfg_words(cfg):
    return list((ctypes.c_uint32 * 13).from_address(cfg.address))


def test_cluster_cfg_struct():
    cfg = ClusterCfg(max_connections=1, max_pending_requests=2, max_requests=3, max_retries=4,
                     budget_percent=20.0, min_retry_concurrency=6, od_enabled=True, consecutive_5xx=8,
                     consecutive_gateway_failure=9, base_ejection_ms=10, max_ejection_ms=11,
                     max_ejection_percent=12, nhosts=13)
    assert _cfg_words(cfg) == [1, 2, 3, 4, 20, 6, 1, 8, 9, 10, 11, 12, 13]
    assert (cfg.max_connections, cfg.max_pending_requests, cfg.max_requests, cfg.max_retries) == (1, 2, 3, 4)
    assert (cfg.budget_percent, cfg.min_retry_concurrency, cfg.od_enabled) == (20, 6, True)
    assert (cfg.consecutive_5xx, cfg.consecutive_gateway_failure) == (8, 9)
    assert (cfg.base_ejection_ms, cfg.max_ejection_ms, cfg.max_ejection_percent, cfg.nhosts) == (10, 11, 12, 13)
    assert cfg.address == cfg.address and cfg.address != cluster_cfg().address
    assert "max_requests=3" in repr(cfg)
    assert _cfg_words(cluster_cfg())[:4] == [UNLIMITED] * 4
    assert cluster_cfg(od_enabled=0).od_enabled is False


@pytest.mark.parametrize("pct, whole", [(0.0, 0), (0.4, 0), (0.5, 1), (20.0, 20), (20.49, 20), (20.5, 21),
                                        (33.3, 33), (100.0, 100), (250, 250)])
def test_budget_percent_rounds_to_whole(pct, whole):
    assert cluster_cfg(budget_percent=pct).budget_percent == whole


def test_cluster_cfg_refuses():
    for bad in (-1, 2**32, "3", None, 1.5):
        with pytest.raises(ValueError, match="max_requests"):
            cluster_cfg(max_requests=bad)
    for bad in (-0.1, math.nan, 2.0**33):
        with pytest.raises(ValueError, match="budget_percent"):
            cluster_cfg(budget_percent=bad)
    assert cluster_cfg(nhosts=4.0).nhosts == 4            # a whole number that went through JSON
    assert cluster_cfg(nhosts=2**32 - 1).nhosts == 2**32 - 1
    with pytest.raises(TypeError):
        ClusterCfg(max_connections=1)                    # every field is required
    with pytest.raises(TypeError):
        ClusterCfg(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)   # keywords only


def test_breakers_through_cfg(seg, clib):
    cfg = cluster_cfg(max_requests=2)
    c = seg.cluster_address(1)
    assert [clib.gv_rq_acquire(c, cfg.address) for _ in range(3)] == [1, 1, 0]
    st = seg.cluster_stats(1)
    assert (st["rq_active"], st["rq_overflow"]) == (2, 1)
    clib.gv_rq_release(c)
    clib.gv_rq_release(c)
    # a budget of 20% (rounded from 19.6) of 10 in flight, at least 1
    budget = cluster_cfg(budget_percent=19.6, min_retry_concurrency=1)
    ctypes.c_int64.from_address(c + 24).value = 10       # rq_active
    assert [clib.gv_retry_acquire(c, budget.address) for _ in range(3)] == [1, 1, 0]
    st = seg.cluster_stats(1)
    assert (st["rq_retry_active"], st["rq_retry"], st["rq_retry_overflow"]) == (2, 2, 1)


def test_retry_cfg_struct(clib):
    r = RetryCfg(num_retries=3, retry_on=GV_RETRY_5XX | GV_RETRY_STATUS_CODES, per_try_timeout_ms=500,
                 codes=(409, 429), non_idempotent=True, backoff_base_ms=10, backoff_max_ms=100)
    words = list((ctypes.c_uint32 * 7).from_address(r.address))
    codes = list((ctypes.c_uint16 * 8).from_address(r.address + 28))
    assert words == [3, 0x41, 500, 10, 100, 1, 2]
    assert codes == [409, 429, 0, 0, 0, 0, 0, 0]
    assert (r.num_retries, r.retry_on, r.per_try_timeout_ms, r.codes, r.non_idempotent) == \
        (3, 0x41, 500, (409, 429), True)
    assert (r.backoff_base_ms, r.backoff_max_ms) == (10, 100)
    assert clib.gv_retry_wanted(r.address, GV_ATTEMPT_STATUS, 429) == 1
    assert clib.gv_retry_wanted(r.address, GV_ATTEMPT_STATUS, 418) == 0
    assert clib.gv_retry_wanted(r.address, GV_ATTEMPT_STATUS, 502) == 1
    assert all(clib.gv_backoff_ms(r.address, 2, d) <= 30 for d in range(0, 2**64, 2**58))
    assert "codes=(409, 429)" in repr(r)


def test_retry_cfg_defaults_and_limits():
    r = RetryCfg(num_retries=2, retry_on=0x08, per_try_timeout_ms=0)
    assert (r.codes, r.non_idempotent, r.backoff_base_ms, r.backoff_max_ms) == ((), False, 25, 250)
    full = RetryCfg(num_retries=1, retry_on=0x40, per_try_timeout_ms=0, codes=range(500, 508))
    assert full.codes == tuple(range(500, 508)) and MAX_RETRIABLE_CODES == 8
    with pytest.raises(ValueError, match="at most 8"):
        RetryCfg(num_retries=1, retry_on=0x40, per_try_timeout_ms=0, codes=range(500, 509))
    with pytest.raises(ValueError):
        RetryCfg(num_retries=1, retry_on=0x40, per_try_timeout_ms=0, codes=(70000,))
    with pytest.raises(ValueError, match="num_retries"):
        RetryCfg(num_retries=-1, retry_on=0, per_try_timeout_ms=0)
    with pytest.raises(TypeError):
        RetryCfg(retry_on=0, per_try_timeout_ms=0)
