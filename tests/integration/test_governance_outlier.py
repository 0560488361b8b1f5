"""Issue 5, acceptance 1: one of 3 endpoints answers 503 to everything.

With Istio's default retry policy (no `retries` on the route: 2 attempts on
connect-failure, refused-stream and 503) 10,000 requests through 2 workers
see no client error, and outlier detection with Envoy's defaults
(`outlier_detection: {}`: consecutive_5xx 5, base ejection 30 s) ejects the
failing endpoint, which then receives no request at all for the rest of the
run (counted by the upstream itself)."""
import time

from tests.support.governed_proxy import HOST, gov_cluster, gov_route, gov_vs, metric_name, start_governed
from tests.support.http_upstreams import HttpUpstream
from tests.support.load_clients import LoadClients, describe
from tests.support.polling import poll_until
from tests.support.request_clock import RequestClock

TOTAL = 10_000
PHASE1 = 400          # enough to eject: the bad endpoint gets about a third of the first tries
CLIENTS = 8


def test_failing_endpoint_is_retried_around_then_ejected_and_gets_nothing(start_proxy, tmp_path):
    with HttpUpstream("a") as a, HttpUpstream("b") as b, HttpUpstream("bad", fail_with=503) as bad:
        gp = start_governed(start_proxy, tmp_path,
                            [gov_cluster("backend", a, b, bad, outlier_detection={})],
                            [gov_vs(HOST, gov_route("backend"))])
        # Phase 1: until the ejection. All of it finishes (every request sent to
        # `bad` got its answer) before the count is taken.
        first = LoadClients(gp.port, 4, total=PHASE1, seconds=30).run()
        assert not first.failures(), describe(first.failures())
        poll_until(lambda: gp.metric("GV_OD_EJECTIONS_ACTIVE", cluster_name="backend") == 1, timeout=5,
                   message="outlier_detection_ejections_active == 1 for backend")
        bad_before = bad.snapshot()[1]
        assert bad_before >= 5, f"the failing endpoint got {bad_before} requests; it cannot have been ejected"
        # Envoy's /clusters text: the host is flagged, and its attempt count is what it saw.
        hosts = _clusters_text(gp, "backend")
        assert "failed_outlier_check" in hosts[bad.address]["health_flags"], hosts
        assert int(hosts[bad.address]["rq_total"]) == bad_before, hosts[bad.address]
        assert hosts[a.address]["health_flags"] == "healthy", hosts

        # Phase 2: the rest of the 10,000 while `bad` is ejected (30 s base ejection time).
        t0 = time.monotonic()
        second = LoadClients(gp.port, CLIENTS, total=TOTAL - PHASE1, seconds=25).run()
        elapsed = time.monotonic() - t0
        assert second.count() == TOTAL - PHASE1, f"only {second.count()} requests in {elapsed:.1f}s"
        assert not second.failures(), describe(second.failures())
        assert bad.snapshot()[1] == bad_before, (
            f"the ejected endpoint received {bad.snapshot()[1] - bad_before} requests during its ejection")

        # Bytes and counters: every request was answered once by a or b, and
        # every request `bad` saw was a first try that a retry answered.
        answered = first.upstreams() + second.upstreams()
        assert set(answered) <= {"a", "b"} and sum(answered.values()) == TOTAL, answered
        assert a.snapshot()[1] + b.snapshot()[1] == TOTAL
        assert len(a.records) + len(b.records) == TOTAL
        assert all(r["method"] == "GET" for r in bad.records)
        poll_until(lambda: gp.metric("GV_RQ_RETRY", cluster_name="backend") == bad_before, timeout=5,
                   message=f"upstream_rq_retry == {bad_before} (one per 503 from the failing endpoint)")
        m = gp.metrics()
        assert m.value(metric_name("GV_OD_ENFORCED_TOTAL"), cluster_name="backend") == 1
        assert m.value(metric_name("GV_OD_EJECTIONS_ACTIVE"), cluster_name="backend") == 1
        assert m.value(metric_name("CLUSTER_HEALTHY"), cluster_name="backend") == 2


def _clusters_text(gp, cluster: str) -> dict[str, dict[str, str]]:
    """GET /clusters (Envoy's text form: cluster::host::stat::value): host -> {stat: value}."""
    status, body = gp.admin.get("/clusters")
    assert status == 200, body[:300]
    hosts: dict[str, dict[str, str]] = {}
    for line in body.decode().splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster:
            hosts.setdefault(parts[1], {})[parts[2]] = parts[3]
    return hosts


def test_ejection_is_shared_by_both_workers(start_proxy, tmp_path):
    """After the ejection, fresh connections (spread over both workers by
    SO_REUSEPORT) never reach the ejected endpoint: the ejection is in
    shared memory, not one worker's view."""
    with HttpUpstream("a") as a, HttpUpstream("b") as b, HttpUpstream("bad", fail_with=503) as bad:
        gp = start_governed(start_proxy, tmp_path,
                            [gov_cluster("backend", a, b, bad, outlier_detection={"consecutive_5xx": 3})],
                            [gov_vs(HOST, gov_route("backend"))])
        warm = LoadClients(gp.port, 2, total=60, seconds=20).run()
        assert not warm.failures(), describe(warm.failures())
        poll_until(lambda: gp.metric("GV_OD_EJECTIONS_ACTIVE", cluster_name="backend") == 1, timeout=5,
                   message="the failing endpoint ejected")
        before = bad.snapshot()[1]
        # 40 one-request connections (new connection each: both workers take some).
        fresh = LoadClients(gp.port, 40, total=40, seconds=20).run()
        assert not fresh.failures(), describe(fresh.failures())
        assert bad.snapshot()[1] == before
        assert len(gp.admin.workers()) == 2


def test_ejection_time_grows_with_each_ejection(start_proxy, tmp_path):
    """A host that fails for good is ejected, let back after
    base_ejection_time, fails again at once, and is ejected for 2x, then
    3x as long: the gaps in its own request log grow by the base each time
    (plus up to one interval, when the manager looks)."""
    base, interval = 0.300, 0.100
    clock = RequestClock()
    with HttpUpstream("a") as a, HttpUpstream("b") as b, \
            HttpUpstream("bad", fail_with=503, on_record=clock) as bad:
        od = {"consecutive_5xx": 3, "interval_ms": 100, "base_ejection_time_ms": 300,
              "max_ejection_time_ms": 10000, "max_ejection_percent": 50}
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", a, b, bad, outlier_detection=od)],
                            [gov_vs(HOST, gov_route("backend"))])
        with LoadClients(gp.port, 3, total=100_000, seconds=10) as load:
            gaps = poll_until(lambda: _gaps(clock.traffic, 0.2, want=3), timeout=8,
                              message="three ejections of the failing host")
        assert not load.failures(), describe(load.failures())
        assert bad.snapshot()[1] >= 9
        shown = [round(g * 1000) for g in gaps]
        print(f"ejection gaps (ms): {shown}")
        for k, gap in enumerate(gaps[:3], start=1):
            assert base * k - 0.05 <= gap <= base * k + interval + 0.15, \
                f"ejection {k} lasted {gap * 1000:.0f} ms, expected {base * k * 1000:.0f} ms (+1 interval): {shown}"
        assert gp.metric("GV_OD_ENFORCED_TOTAL", cluster_name="backend") >= 3


def _gaps(times: list[float], least: float, want: int) -> list[float] | None:
    """The pauses longer than `least` between successive arrivals, once there
    are `want` of them (None before)."""
    times = list(times)
    gaps = [b - a for a, b in zip(times, times[1:]) if b - a > least]
    return gaps if len(gaps) >= want else None


def test_max_ejection_percent_caps_the_hosts_out(start_proxy, tmp_path):
    """2 of 4 hosts fail; max_ejection_percent 25 lets only 1 out: the other
    keeps getting (retried) traffic and each refused ejection is counted."""
    with HttpUpstream("a") as a, HttpUpstream("b") as b, HttpUpstream("bad1", fail_with=503) as bad1, \
            HttpUpstream("bad2", fail_with=503) as bad2:
        od = {"consecutive_5xx": 3, "max_ejection_percent": 25}
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", a, b, bad1, bad2, outlier_detection=od)],
                            [gov_vs(HOST, gov_route("backend"))])
        load = LoadClients(gp.port, 4, total=400, seconds=30).run()
        # Istio's default retry policy: 2 retries on 503, on other hosts.
        assert not load.failures(), describe(load.failures())
        m = gp.metrics()
        assert m.value(metric_name("GV_OD_EJECTIONS_ACTIVE"), cluster_name="backend") == 1
        assert m.value(metric_name("GV_OD_OVERFLOW"), cluster_name="backend") >= 1
        before = (bad1.snapshot()[1], bad2.snapshot()[1])
        LoadClients(gp.port, 4, total=200, seconds=30).run()
        after = (bad1.snapshot()[1], bad2.snapshot()[1])
        grew = [x > y for x, y in zip(after, before)]
        assert sorted(grew) == [False, True], f"exactly one failing host should still get traffic: {before} -> {after}"


def test_gateway_failures_eject_by_consecutive_gateway_failure(start_proxy, tmp_path):
    """consecutive_gateway_failure counts 502/503/504 only: a host answering
    500 stays in, a host answering 502 goes out."""
    with HttpUpstream("a") as a, HttpUpstream("e500", fail_with=500) as e500, \
            HttpUpstream("e502", fail_with=502) as e502:
        od = {"consecutive_5xx": 100000, "consecutive_gateway_failure": 3}
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", a, e500, e502, outlier_detection=od)],
                            [gov_vs(HOST, gov_route("backend", retries={"attempts": 0}))])
        LoadClients(gp.port, 2, total=90, seconds=30).run()
        poll_until(lambda: gp.metric("GV_OD_ENFORCED_GATEWAY", cluster_name="backend") == 1, timeout=5,
                   message="one ejection by consecutive_gateway_failure")
        counts = (e500.snapshot()[1], e502.snapshot()[1])
        load = LoadClients(gp.port, 2, total=90, seconds=30).run()
        assert e502.snapshot()[1] == counts[1], "the 502 host got traffic while ejected"
        assert e500.snapshot()[1] > counts[0], "the 500 host was ejected (500 is not a gateway failure)"
        assert load.statuses()[502] == 0
        assert gp.metric("GV_OD_EJECTIONS_ACTIVE", cluster_name="backend") == 1
