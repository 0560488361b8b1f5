"""Issue 5, acceptance 2: circuit breakers hold across both workers.

100 concurrent slow requests (each on its own connection, so SO_REUSEPORT
spreads them over the 2 workers) against `circuit_breakers: {max_requests:
10}`: the upstream itself never sees more than 10 in flight; every other
request is answered 503 with `x-fastproxy-overloaded: true` and flag UO,
and the overflow counter equals the number of those 503s. A per-worker
breaker would let up to 20 through."""
import http.client
import threading
import time

from tests.support.governed_proxy import (
    HOST, flags_of, gov_cluster, gov_route, gov_vs, metric_name, start_governed)
from tests.support.http_upstreams import HttpUpstream
from tests.support.polling import poll_until

CONCURRENT = 100
SLOW_MS = 1500


def _burst(port: int, n: int, path: str) -> list[tuple[int, dict, bytes] | str]:
    """n requests at once, each on its own connection (all connected first,
    then released together); (status, headers, body) or the error each."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(n)]
    for c in conns:
        c.connect()
    gate = threading.Barrier(n)
    results: list = [None] * n

    def one(i):
        c = conns[i]
        try:
            gate.wait(timeout=10)
            c.request("GET", f"{path}&i={i}", headers={"Host": HOST})
            resp = c.getresponse()
            body = resp.read()
            results[i] = (resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            results[i] = repr(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_max_requests_10_holds_across_two_workers(start_proxy, tmp_path):
    with HttpUpstream("slow") as up:
        gp = start_governed(start_proxy, tmp_path,
                            [gov_cluster("backend", up, circuit_breakers={"max_requests": 10})],
                            [gov_vs(HOST, gov_route("backend"))])
        assert len(gp.admin.workers()) == 2
        t0 = time.monotonic()
        results = _burst(gp.port, CONCURRENT, f"/_/delay?ms={SLOW_MS}")
        elapsed = time.monotonic() - t0
        errors = [r for r in results if not isinstance(r, tuple)]
        assert not errors, errors[:5]
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]

        assert up.max_in_flight <= 10, f"the upstream saw {up.max_in_flight} requests in flight at once"
        assert up.max_in_flight == 10, f"only {up.max_in_flight} in flight: the burst never reached the limit"
        assert elapsed < SLOW_MS / 1000 * 3, f"the burst took {elapsed:.1f}s"
        # Each 200 is one upstream request (nothing retried), each other answer a local 503 UO.
        assert len(ok) == up.snapshot()[1] == len(up.records), (len(ok), up.snapshot())
        for status, headers, body in refused:
            assert status == 503, (status, headers, body[:200])
            assert headers.get("x-fastproxy-overloaded") == "true", headers
            assert body.strip(), "a 503 UO without a reason"
        assert len(ok) + len(refused) == CONCURRENT
        assert len(refused) >= CONCURRENT - 20, f"only {len(refused)} refused of {CONCURRENT}"

        overflow = metric_name("GV_RQ_ACTIVE_OVERFLOW")
        poll_until(lambda: gp.metrics().value(overflow, cluster_name="backend") == len(refused), timeout=5,
                   message=f"{overflow} == {len(refused)}")
        lines = gp.wait_log_lines(CONCURRENT)
        uo = [l for l in lines if "UO" in flags_of(l)]
        assert len(uo) == len(refused) and all(l["response_code"] == 503 for l in uo), \
            [(l["response_code"], l["response_flags"]) for l in lines][:20]

        # Every acquire was released: the breaker is closed and serves again.
        poll_until(lambda: gp.metric("GV_RQ_ACTIVE", cluster_name="backend") == 0, timeout=5,
                   message="upstream_rq_active back to 0")
        m = gp.metrics()
        assert m.value(metric_name("GV_CB_RQ_OPEN"), cluster_name="backend") == 0
        assert m.value(metric_name("GV_CB_REMAINING_RQ"), cluster_name="backend") == 10
        again = _burst(gp.port, 10, "/_/delay?ms=10")
        assert [r[0] for r in again] == [200] * 10, again


def test_breaker_open_gauge_while_at_the_limit(start_proxy, tmp_path):
    """While max_requests requests are in flight the rq_open gauge is 1 and
    remaining_rq is 0; a request then gets 503 UO at once, not after a wait."""
    with HttpUpstream("slow") as up:
        gp = start_governed(start_proxy, tmp_path,
                            [gov_cluster("backend", up, circuit_breakers={"max_requests": 3})],
                            [gov_vs(HOST, gov_route("backend"))])
        holders = [threading.Thread(target=_burst, args=(gp.port, 1, "/_/delay?ms=2000")) for _ in range(3)]
        for t in holders:
            t.start()
        try:
            poll_until(lambda: up.in_flight == 3, timeout=5, message="3 requests in flight upstream")
            m = gp.metrics()
            assert m.value(metric_name("GV_CB_RQ_OPEN"), cluster_name="backend") == 1
            assert m.value(metric_name("GV_CB_REMAINING_RQ"), cluster_name="backend") == 0
            assert m.value(metric_name("GV_RQ_ACTIVE"), cluster_name="backend") == 3
            t0 = time.monotonic()
            [(status, headers, _)] = _burst(gp.port, 1, "/_/delay?ms=1")
            assert status == 503 and headers.get("x-fastproxy-overloaded") == "true", (status, headers)
            assert time.monotonic() - t0 < 0.5
        finally:
            for t in holders:
                t.join(timeout=10)
        assert up.max_in_flight == 3


def test_max_connections_caps_upstream_connections_across_workers(start_proxy, tmp_path):
    """max_connections 4, 30 concurrent slow requests: the upstream never has
    more than 4 requests in flight (HTTP/1: one per connection); the others
    wait for a connection (pending) or are refused 503 UO."""
    with HttpUpstream("slow") as up:
        gp = start_governed(start_proxy, tmp_path,
                            [gov_cluster("backend", up, circuit_breakers={"max_connections": 4})],
                            [gov_vs(HOST, gov_route("backend"))],
                            # a worker's idle pooled connection holds one of the 4: let it go soon
                            upstream_idle_timeout_ms=100)
        results = _burst(gp.port, 30, "/_/delay?ms=200")
        errors = [r for r in results if not isinstance(r, tuple)]
        assert not errors, errors[:5]
        assert up.max_in_flight <= 4, f"the upstream saw {up.max_in_flight} in flight with max_connections 4"
        for status, headers, body in results:
            assert status == 200 or (status == 503 and headers.get("x-fastproxy-overloaded") == "true"), \
                (status, headers, body[:200])
        assert sum(1 for r in results if r[0] == 200) >= 4
