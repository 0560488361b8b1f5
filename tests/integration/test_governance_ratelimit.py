"""Issue 5, acceptance 7: local rate limits hold across both workers.

A token bucket `{maxTokens: N, tokensPerFill: N, fillInterval: 1s}` is
refilled at each multiple of the fill interval on CLOCK_MONOTONIC
(csrc/govern.h, gv_bucket_take), the clock behind time.monotonic(). Clients
on several connections (so both workers) send as fast as they can for
~3.5 s; for every whole second window in between, the 200s are N +- 1 in
total. A request whose send and answer fall in different windows could
belong to either; the bounds count it on both sides (certain <= N + 1,
certain + straddling >= N - 1). Every other answer is 429 with flag RL.
Also: one bucket for a whole virtual service (shared by its routes), and
a route without a limit next to a limited one."""
import math
import time
from collections import Counter

from tests.support.governed_proxy import HOST, flags_of, gov_cluster, gov_route, gov_vs, metric_name, start_governed
from tests.support.http_upstreams import HttpUpstream, get
from tests.support.load_clients import LoadClients, Outcome, describe, plain_get
from tests.support.polling import poll_until

N = 50
CLIENTS = 6


def _per_window(outcomes: list[Outcome], interval: float = 1.0):
    """(window index -> 200s certainly in it, window index -> 200s straddling
    into it) for the whole windows strictly inside the run."""
    first = math.floor(min(o.sent for o in outcomes) / interval) + 1
    last = math.floor(max(o.done for o in outcomes) / interval) - 1
    certain, straddle = Counter(), Counter()
    for o in outcomes:
        if o.status != 200:
            continue
        ws, wd = math.floor(o.sent / interval), math.floor(o.done / interval)
        if ws == wd:
            certain[ws] += 1
        else:
            for w in range(ws, wd + 1):
                straddle[w] += 1
    return range(first, last + 1), certain, straddle


def _assert_n_per_window(outcomes: list[Outcome], n: int) -> None:
    windows, certain, straddle = _per_window(outcomes)
    assert len(windows) >= 2, f"only {len(windows)} whole windows"
    table = [(w, certain[w], straddle[w]) for w in windows]
    for w, c, s in table:
        assert c <= n + 1 and c + s >= n - 1, f"window {w}: {c} certain + {s} straddling 200s, limit {n}: {table}"


def _all_log_lines(gp, requests: int) -> list[dict]:
    """The access log once it accounts for every request (a line written or
    counted as dropped)."""
    def settled():
        lines = gp.log_lines()
        dropped = gp.metrics().value_or_zero("fastproxy_access_log_dropped_total")
        return lines if len(lines) + dropped >= requests else None
    return poll_until(settled, timeout=10, message=f"{requests} access log lines written or dropped")


def _next_window(interval: float = 1.0) -> None:
    """Sleeps into the next fill window (just past its start)."""
    now = time.monotonic()
    time.sleep(math.floor(now / interval) * interval + interval + 0.01 - now)


def test_route_bucket_allows_n_per_second_across_workers(start_proxy, tmp_path):
    with HttpUpstream("up") as up:
        bucket = {"maxTokens": N, "tokensPerFill": N, "fillInterval": "1s"}
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)],
                            [gov_vs(HOST, gov_route("backend", name="limited", localRateLimit=bucket))])
        load = LoadClients(gp.port, CLIENTS, total=40_000, seconds=3.5).run()
        outcomes = load.snapshot()
        statuses = Counter(o.status for o in outcomes)
        assert set(statuses) <= {200, 429}, (statuses, describe([o for o in outcomes if o.status not in (200, 429)]))
        assert statuses[429] > 5 * statuses[200], f"the clients were not fast enough to test a limit: {statuses}"
        _assert_n_per_window(outcomes, N)
        assert up.snapshot()[1] == statuses[200], "a limited request reached the upstream"
        lines = _all_log_lines(gp, len(outcomes))
        rl = [l for l in lines if l["response_code"] == 429]
        assert rl and all("RL" in flags_of(l) for l in rl), rl[:3]
        assert all(l["response_code"] == 429 for l in lines if "RL" in flags_of(l))
        if len(lines) == len(outcomes):
            assert len(rl) == statuses[429]
        enforced = metric_name("RL_ENFORCED")
        poll_until(lambda: gp.metrics().value(enforced) == statuses[429], timeout=5,
                   message=f"{enforced} == {statuses[429]}")


def test_virtual_service_bucket_is_shared_by_its_routes(start_proxy, tmp_path):
    m = 40
    with HttpUpstream("up") as up:
        vs_bucket = {"maxTokens": m, "tokensPerFill": m, "fillInterval": "1s"}
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)],
                            [gov_vs(HOST,
                                    gov_route("backend", name="a", match=[{"uri": {"prefix": "/a"}}]),
                                    gov_route("backend", name="b", match=[{"uri": {"prefix": "/b"}}]),
                                    localRateLimit=vs_bucket),
                             gov_vs("free.local", gov_route("backend"))])

        def alternate(client, index):
            return "GET", f"/{'ab'[index % 2]}/{client}", {}, None

        load = LoadClients(gp.port, CLIENTS, total=40_000, seconds=3.2, request=alternate)
        free = LoadClients(gp.port, 1, total=300, seconds=3.2, host="free.local", request=plain_get("/free/"))
        load.start()
        free.start()
        load.join()
        free.join()
        outcomes = load.snapshot()
        statuses = Counter(o.status for o in outcomes)
        assert set(statuses) <= {200, 429}, statuses
        _assert_n_per_window(outcomes, m)
        by_route = Counter(o.path[1] for o in outcomes if o.status == 200)
        assert by_route["a"] > m and by_route["b"] > m, f"both routes drew on the one bucket: {by_route}"
        # A virtual service without a limit is not limited.
        assert not free.failures(), describe(free.failures())


def test_route_and_virtual_service_buckets_both_apply(start_proxy, tmp_path):
    """A route's own bucket (10/s) under a virtual service's (1000/s): the
    smaller wins for that route; a sibling route gets the VS bucket only."""
    with HttpUpstream("up") as up:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)],
                            [gov_vs(HOST,
                                    gov_route("backend", name="tight", match=[{"uri": {"prefix": "/tight"}}],
                                              localRateLimit={"maxTokens": 10, "tokensPerFill": 10,
                                                              "fillInterval": "1s"}),
                                    gov_route("backend", name="rest"),
                                    localRateLimit={"maxTokens": 1000, "tokensPerFill": 1000,
                                                    "fillInterval": "1s"})])
        tight = LoadClients(gp.port, 3, total=40_000, seconds=3.2, request=plain_get("/tight/")).run()
        _assert_n_per_window(tight.snapshot(), 10)
        _next_window()      # the tight load drew on the VS bucket too: start on a full one
        rest = LoadClients(gp.port, 2, total=200, seconds=10, request=plain_get("/rest/")).run()
        assert not rest.failures(), describe(rest.failures())


def test_a_direct_response_route_is_rate_limited_too(start_proxy, tmp_path):
    """localRateLimit applies to every route kind, not only those that
    proxy: a directResponse (and its virtual host) draws on the bucket."""
    with HttpUpstream("up") as up:
        direct = {"directResponse": {"status": 200, "body": {"string": "ok\n"}},
                  "localRateLimit": {"maxTokens": 3, "tokensPerFill": 3, "fillInterval": "1h"}}
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)], [gov_vs(HOST, direct)])
        statuses = [get(gp.port, f"/d/{i}", HOST).status for i in range(6)]
        assert statuses == [200, 200, 200, 429, 429, 429], statuses
        assert up.snapshot()[1] == 0
