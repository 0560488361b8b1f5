"""The manager's governance logic against a fake segment: outlier reviews on
each cluster's interval, release of endpoints that left the table, the
snapshot read, and the health checker's reconcile / verdict flips (with a
scripted probe, no sockets)."""
import asyncio

import pytest

from fastproxy.manager.governance import ORPHAN_GRACE_MS, Governance, cluster_cfg_args
from fastproxy.manager.health import HealthChecker, parse_status_line

UNLIMITED = 2 ** 32 - 1
BREAKERS = {"max_connections": UNLIMITED, "max_pending_requests": UNLIMITED, "max_requests": UNLIMITED,
            "max_retries": UNLIMITED, "budget_percent": 0.0, "min_retry_concurrency": 3}
OUTLIER = {"consecutive_5xx": 5, "consecutive_gateway_failure": 5, "interval_ms": 1000,
           "base_ejection_time_ms": 30000, "max_ejection_time_ms": 300000, "max_ejection_percent": 10}


class FakeSegment:
    def __init__(self):
        self.endpoints: dict[int, dict] = {}
        self.unejects: list[tuple] = []
        self.health: list[tuple] = []
        self.due_result = False

    def endpoint_stats(self, slot):
        return self.endpoints.setdefault(slot, {"rq_active": 0, "rq_total": 0, "ejected": 0, "hc_failed": 0,
                                                "eject_until_ms": 0})

    def cluster_stats(self, slot):
        return {"slot": slot}

    def bucket_stats(self, slot):
        return {"tokens": 0, "allowed": slot * 10, "limited": slot}

    def uneject_due(self, cslot, ep, cfg, now_ms=0):
        self.unejects.append((cslot, ep, now_ms))
        st = self.endpoint_stats(ep)
        if st["ejected"] and now_ms >= st["eject_until_ms"]:
            st["ejected"] = 0
            return True
        return False

    def set_health(self, cslot, ep, healthy):
        self.health.append((cslot, ep, healthy))
        st = self.endpoint_stats(ep)
        changed = st["hc_failed"] != (0 if healthy else 1)
        st["hc_failed"] = 0 if healthy else 1
        return changed

    @staticmethod
    def now_ms():
        return 0


def cluster(slot, endpoints, outlier=None, health_check=None):
    return {"slot": slot, "endpoints": endpoints, "breakers": BREAKERS, "outlier": outlier,
            "health_check": health_check, "block": slot * 16}


def table(**clusters):
    return {"clusters": clusters, "rate_limit_slots": {"vs[0]": 2, "vs[0].http[0]": 1}}


def test_cluster_cfg_args_from_the_doc():
    args = cluster_cfg_args(cluster(1, [["10.0.0.1", 80, 1, 0], ["10.0.0.2", 80, 1, 1]], OUTLIER))
    assert args["od_enabled"] is True and args["nhosts"] == 2
    assert (args["base_ejection_ms"], args["max_ejection_ms"], args["max_ejection_percent"]) == (30000, 300000, 10)
    plain = cluster_cfg_args(cluster(1, [], None))
    assert plain["od_enabled"] is False and plain["consecutive_5xx"] == 0 and plain["nhosts"] == 0


def test_reviews_run_once_per_interval():
    seg = FakeSegment()
    g = Governance(seg)
    g.apply(table(a=cluster(1, [["10.0.0.1", 80, 1, 0], ["10.0.0.2", 80, 1, 1]], OUTLIER),
                  b=cluster(2, [["10.0.0.3", 80, 1, 2]])), now_ms=0)
    g.sweep(999)
    assert seg.unejects == []
    g.sweep(1000)
    assert seg.unejects == [(1, 0, 1000), (1, 1, 1000)]   # cluster b has no outlier detection
    g.sweep(1500)
    assert len(seg.unejects) == 2
    seg.endpoints[1].update(ejected=1, eject_until_ms=1800)
    assert g.sweep(2000) == 1 and seg.endpoints[1]["ejected"] == 0


def test_a_reload_keeps_the_schedule_of_an_unchanged_interval():
    seg = FakeSegment()
    g = Governance(seg)
    doc = table(a=cluster(1, [["10.0.0.1", 80, 1, 0]], OUTLIER))
    g.apply(doc, now_ms=0)
    g.apply(doc, now_ms=900)
    g.sweep(1000)
    assert seg.unejects == [(1, 0, 1000)]
    g.apply(table(a=cluster(1, [["10.0.0.1", 80, 1, 0]], {**OUTLIER, "interval_ms": 5000})), now_ms=1100)
    g.sweep(6099)
    assert len(seg.unejects) == 1
    g.sweep(6100)
    assert len(seg.unejects) == 2


@pytest.mark.parametrize("next_doc", [
    table(a=cluster(1, [["10.0.0.1", 80, 1, 0]], OUTLIER)),            # endpoint removed
    table(a=cluster(1, [["10.0.0.1", 80, 1, 0], ["10.0.0.2", 80, 1, 1]])),   # outlier detection removed
    table(),                                                             # cluster removed
])
def test_an_ejected_endpoint_leaving_the_reviews_is_released_at_once(next_doc):
    seg = FakeSegment()
    g = Governance(seg)
    g.apply(table(a=cluster(1, [["10.0.0.1", 80, 1, 0], ["10.0.0.2", 80, 1, 1]], OUTLIER)), now_ms=0)
    seg.endpoint_stats(1).update(ejected=1, eject_until_ms=90_000)
    g.apply(next_doc, now_ms=100)
    assert g.sweep(200) == 1
    # released with its own end time, so its decay clock stays meaningful
    assert (1, 1, 90_000) in seg.unejects and seg.endpoints[1]["ejected"] == 0
    g.sweep(200 + ORPHAN_GRACE_MS)
    assert 1 not in g.orphans


def test_a_re_added_endpoint_is_reviewed_again_not_released():
    seg = FakeSegment()
    g = Governance(seg)
    full = table(a=cluster(1, [["10.0.0.1", 80, 1, 0], ["10.0.0.2", 80, 1, 1]], OUTLIER))
    g.apply(full, now_ms=0)
    g.apply(table(a=cluster(1, [["10.0.0.1", 80, 1, 0]], OUTLIER)), now_ms=10)
    assert 1 in g.orphans
    g.apply(full, now_ms=20)
    assert g.orphans == {}


def test_snapshot_reads_hosts_and_buckets():
    seg = FakeSegment()
    g = Governance(seg, health_counts=lambda name: {"attempt": 3} if name == "a" else None)
    hc = {"kind": "tcp", "interval_ms": 100, "timeout_ms": 50, "healthy_threshold": 1, "unhealthy_threshold": 1,
          "path": "", "host": None, "expected": [[200, 201]]}
    g.apply(table(a=cluster(1, [["10.0.0.1", 80, 2, 0], ["2001:db8::1", 81, 1, 1]], OUTLIER, hc),
                  b=cluster(2, [])), now_ms=0)
    seg.endpoint_stats(1).update(ejected=1, rq_total=4)
    a, b = g.snapshot()
    assert (a.name, a.counters, a.outlier, a.health) == ("a", {"slot": 1}, True, {"attempt": 3})
    assert [(h.address, h.weight, h.ejected, h.rq_total) for h in a.hosts] == [
        ("10.0.0.1:80", 2, False, 0), ("[2001:db8::1]:81", 1, True, 4)]
    assert (b.name, b.outlier, b.health, b.hosts) == ("b", False, None, ())
    assert [(x.route, x.allowed, x.limited) for x in g.buckets()] == [("vs[0]", 20, 2), ("vs[0].http[0]", 10, 1)]


@pytest.mark.parametrize("line, status", [
    (b"HTTP/1.1 200 OK\r\n", 200),
    (b"HTTP/1.0 503 Service Unavailable\r\n", 503),
    (b"HTTP/1.1 204\r\n", 204),
    (b"HTTP/2 200\r\n", None),
    (b"HTTP/1.1 20 OK\r\n", None),
    (b"SSH-2.0-OpenSSH\r\n", None),
    (b"", None),
])
def test_status_line(line, status):
    assert parse_status_line(line) == status


def _hc(interval_ms=10, healthy=2, unhealthy=2):
    return {"kind": "http", "interval_ms": interval_ms, "timeout_ms": 50, "healthy_threshold": healthy,
            "unhealthy_threshold": unhealthy, "path": "/healthz", "host": None, "expected": [[200, 201]]}


def test_health_checker_flips_after_the_thresholds_and_reconciles():
    seg = FakeSegment()
    verdicts = {("10.0.0.1", 80): True, ("10.0.0.2", 80): True}
    seen = []

    async def fake_probe(ip, port, check, default_host):
        seen.append((ip, port, default_host))
        ok = verdicts[(ip, port)]
        return ok, not ok

    async def scenario():
        hcheck = HealthChecker(seg, probe=fake_probe)
        doc = table(a=cluster(1, [["10.0.0.1", 80, 1, 0], ["10.0.0.2", 80, 1, 1]], None, _hc()))
        hcheck.apply(doc)
        assert sorted(seg.health) == [(1, 0, True), (1, 1, True)]   # stale verdicts cleared at start
        seg.health.clear()
        await asyncio.sleep(0.15)
        assert seg.health == [] and ("10.0.0.1", 80, "a") in seen   # Host defaults to the cluster name
        verdicts[("10.0.0.2", 80)] = False
        await _until(lambda: seg.health == [(1, 1, False)])
        counts = hcheck.counts_of("a")
        assert counts["failure"] >= 2 and counts["network_failure"] == counts["failure"]
        assert counts["attempt"] == counts["success"] + counts["failure"]
        verdicts[("10.0.0.2", 80)] = True
        await _until(lambda: seg.health == [(1, 1, False), (1, 1, True)])
        # a reload that keeps the endpoints keeps their tasks; one that drops a failed one clears it
        task = hcheck.targets[("a", "10.0.0.1", 80)].task
        hcheck.apply(doc)
        assert hcheck.targets[("a", "10.0.0.1", 80)].task is task
        verdicts[("10.0.0.2", 80)] = False
        await _until(lambda: seg.health[-1] == (1, 1, False))
        hcheck.apply(table(a=cluster(1, [["10.0.0.1", 80, 1, 0]], None, _hc())))
        assert seg.health[-1] == (1, 1, True) and ("a", "10.0.0.2", 80) not in hcheck.targets
        # a changed check keeps the verdict and the task
        hcheck.apply(table(a=cluster(1, [["10.0.0.1", 80, 1, 0]], None, _hc(interval_ms=20, healthy=5))))
        t = hcheck.targets[("a", "10.0.0.1", 80)]
        assert t.task is task and t.check.interval_ms == 20 and t.state.healthy_threshold == 5
        hcheck.apply(table(a=cluster(1, [["10.0.0.1", 80, 1, 0]])))   # health check removed
        assert hcheck.targets == {}
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        await hcheck.close()

    asyncio.run(scenario())


async def _until(cond, timeout=2.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)
