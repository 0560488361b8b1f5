"""Issue 5, acceptance 5 (traffic side): active health checks steer traffic.

Each endpoint's own request log (tests/support/request_clock.py, health
checks kept apart) is the truth:
- an endpoint whose /healthz starts failing (unhealthy_threshold 1,
  interval 200 ms) gets no traffic later than 2 intervals after, and gets
  traffic again once healthy_threshold (2) checks passed - not after one;
- with healthy_panic_threshold 0 and every endpoint failing its checks,
  requests get 503 with flag UH and reach no endpoint;
- with the default panic threshold (50%), 1 healthy endpoint of 3 (33%)
  puts the cluster in panic: traffic goes to all 3 again.
The health-check flags and stats themselves are test_health_checks.py's."""
import time

from tests.support.governed_proxy import HOST, flags_of, gov_cluster, gov_route, gov_vs, start_governed
from tests.support.http_upstreams import HttpUpstream, get
from tests.support.load_clients import LoadClients, describe
from tests.support.polling import poll_until
from tests.support.ports import free_port
from tests.support.request_clock import RequestClock

INTERVAL = 0.200
HEALTH = [{"interval_ms": 200, "timeout_ms": 150, "unhealthy_threshold": 1, "healthy_threshold": 2,
           "http_health_check": {"path": "/healthz"}}]
SLACK = 0.100      # a request already on its way, and scheduling


class _Three:
    def __init__(self):
        self.clocks = {n: RequestClock() for n in ("a", "b", "c")}
        self.ups = {n: HttpUpstream(n, on_record=self.clocks[n]) for n in self.clocks}

    def __enter__(self):
        for up in self.ups.values():
            up.start()
        return self

    def __exit__(self, *exc):
        for up in self.ups.values():
            up.stop()


def _checked(start_proxy, tmp_path, three: _Three, **cluster_policy):
    return start_governed(start_proxy, tmp_path,
                          [gov_cluster("backend", *three.ups.values(), health_checks=HEALTH, **cluster_policy)],
                          [gov_vs(HOST, gov_route("backend", retries={"attempts": 0}))])


def test_failing_endpoint_leaves_within_2_intervals_and_returns_after_healthy_threshold(start_proxy, tmp_path):
    with _Three() as three:
        gp = _checked(start_proxy, tmp_path, three)
        c, clock = three.ups["c"], three.clocks["c"]
        poll_until(lambda: clock.health_checks() >= 2, timeout=5, message="health checks reaching c")
        with LoadClients(gp.port, 3, total=50_000, seconds=20) as load:
            poll_until(lambda: all(k.count() >= 20 for k in three.clocks.values()), timeout=5,
                       message="traffic on all three endpoints")
            t_fail = time.monotonic()
            c.health_status = 503
            time.sleep(2 * INTERVAL + SLACK + 0.8)       # out, then 0.8 s of load to prove it stays out
            last = clock.last()
            t_heal = time.monotonic()
            assert last is not None and last - t_fail <= 2 * INTERVAL + SLACK, \
                f"c still got traffic {(last - t_fail) * 1000:.0f} ms after its health check failed"
            assert clock.count(since=t_fail + 2 * INTERVAL + SLACK) == 0
            c.health_status = None
            back = poll_until(lambda: clock.first(t_heal), timeout=3, message="traffic on c after it healed")
        assert not load.failures(), describe(load.failures())
        took = back - t_heal
        # 2 passing checks 200 ms apart: never after one check, and within ~3 intervals.
        assert INTERVAL - 0.05 <= took <= 3 * INTERVAL + SLACK, \
            f"c got traffic {took * 1000:.0f} ms after healing (healthy_threshold 2, interval 200 ms)"
        # a and b carried the load meanwhile
        assert three.clocks["a"].count(since=t_fail + 0.5, until=t_heal) > 20
        assert three.clocks["b"].count(since=t_fail + 0.5, until=t_heal) > 20


def test_no_healthy_endpoint_is_503_uh(start_proxy, tmp_path):
    with _Three() as three:
        gp = _checked(start_proxy, tmp_path, three, common_lb_config={"healthy_panic_threshold": 0})
        assert get(gp.port, "/ok", HOST).status == 200
        for up in three.ups.values():
            up.health_status = 503
        poll_until(lambda: get(gp.port, "/probe", HOST).status == 503, timeout=3,
                   message="503 once every endpoint failed its health check")
        t0 = time.monotonic()
        for i in range(10):
            resp = get(gp.port, f"/uh/{i}", HOST)
            assert resp is not None and resp.status == 503 and resp.header("X-Upstream") is None, resp
            assert resp.body.strip()
        assert all(k.count(since=t0) == 0 for k in three.clocks.values())
        lines = gp.wait_log_lines(10, where=lambda l: l["path"].startswith("/uh/"))
        assert all(l["response_code"] == 503 and "UH" in flags_of(l) for l in lines), lines
        # and back
        for up in three.ups.values():
            up.health_status = None
        poll_until(lambda: get(gp.port, "/again", HOST).status == 200, timeout=3,
                   message="200 once the endpoints passed their checks again")


def test_panic_below_50_percent_healthy_sends_traffic_to_all(start_proxy, tmp_path):
    with _Three() as three:
        gp = _checked(start_proxy, tmp_path, three)
        b, c = three.ups["b"], three.ups["c"]
        ka, kb, kc = (three.clocks[n] for n in "abc")
        with LoadClients(gp.port, 3, total=50_000, seconds=20) as load:
            # 2 of 3 healthy (67%): c gets nothing.
            c.health_status = 503
            time.sleep(2 * INTERVAL + SLACK)
            t1 = time.monotonic()
            time.sleep(0.6)
            t2 = time.monotonic()
            assert kc.count(since=t1, until=t2) == 0, "c got traffic while unhealthy (67% healthy, no panic)"
            assert ka.count(since=t1, until=t2) > 10 and kb.count(since=t1, until=t2) > 10
            # 1 of 3 healthy (33% < 50%): panic, every endpoint takes traffic again.
            b.health_status = 503
            time.sleep(2 * INTERVAL + SLACK)
            t3 = time.monotonic()
            time.sleep(0.6)
            t4 = time.monotonic()
            counts = [k.count(since=t3, until=t4) for k in (ka, kb, kc)]
            assert all(n > 10 for n in counts), f"in panic each endpoint should get traffic: {counts}"
        assert not load.failures(), describe(load.failures())


def test_tcp_health_check_keeps_traffic_off_a_dead_endpoint(start_proxy, tmp_path):
    """tcp_health_check: an endpoint nothing listens on fails its connect
    check and is left out, so requests stop paying a connect failure (and a
    retry) for it: the cluster's connect-failure counter stops growing."""
    dead = f"127.0.0.1:{free_port()}"
    with HttpUpstream("a") as a:
        hc = [{"interval_ms": 200, "timeout_ms": 150, "unhealthy_threshold": 1, "healthy_threshold": 2,
               "tcp_health_check": {}}]
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", a, dead, health_checks=hc)],
                            [gov_vs(HOST, gov_route("backend"))])      # Istio's default retries: connect-failure
        fails = "fastproxy_cluster_upstream_cx_connect_fail_total"
        time.sleep(2 * INTERVAL + SLACK)
        before = gp.metrics().value_or_zero(fails, cluster_name="backend")
        load = LoadClients(gp.port, 2, total=200, seconds=30).run()
        assert not load.failures(), describe(load.failures())
        assert load.upstreams()["a"] == 200
        assert gp.metrics().value_or_zero(fails, cluster_name="backend") == before, \
            "requests still tried the endpoint whose TCP health check fails"
