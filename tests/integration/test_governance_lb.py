"""Issue 5, acceptance 6 (end to end): load balancing through 2 workers.

- least_request (power of two choices over the requests in flight, shared
  by the workers) sends a slow endpoint a smaller share than round_robin
  does, under the same concurrent load;
- ring_hash on a header: one header value always reaches the same host,
  from either worker; removing 1 of 3 hosts by a live reload keeps the
  keys of the other two where they were (the >= 99% property itself is
  tests/unit/test_policy_lb.py's); maglev is consistent too;
- endpoint weights split round_robin traffic in proportion.
"""
import itertools
import threading
from collections import Counter, defaultdict

import pytest

from tests.support.governed_proxy import HOST, gov_cluster, gov_route, gov_vs, start_governed
from tests.support.http_upstreams import HttpUpstream
from tests.support.load_clients import LoadClients, describe

SLOW_MS = 40
CLIENTS = 12
REQUESTS = 600


def _share_of_slow(start_proxy, tmp_path, policy: str, **extra) -> float:
    with HttpUpstream("f1") as f1, HttpUpstream("f2") as f2, HttpUpstream("slow", delay_ms=SLOW_MS) as slow:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", f1, f2, slow, lb_policy=policy, **extra)],
                            [gov_vs(HOST, gov_route("backend"))], name=policy.lower())
        load = LoadClients(gp.port, CLIENTS, total=REQUESTS, seconds=40).run()
        assert not load.failures(), describe(load.failures())
        answered = load.upstreams()
        assert sum(answered.values()) == REQUESTS, answered
        print(f"{policy}: {dict(answered)}")
        return answered["slow"] / REQUESTS


def test_least_request_sends_less_to_a_slow_endpoint_than_round_robin(start_proxy, tmp_path):
    rr = _share_of_slow(start_proxy, tmp_path, "ROUND_ROBIN")
    lr = _share_of_slow(start_proxy, tmp_path, "LEAST_REQUEST", least_request_lb_config={"choice_count": 2})
    assert 0.25 <= rr <= 0.42, f"round_robin gave the slow endpoint {rr:.0%}, expected about a third"
    assert lr < rr / 2, f"least_request gave the slow endpoint {lr:.0%}, round_robin {rr:.0%}"


def _route_keys(port: int, keys: list[str], rounds: int) -> dict[str, Counter]:
    """Each key sent `rounds` times, from different client connections
    (spread over both workers): key -> Counter of the hosts that answered."""
    seen: dict[str, Counter] = defaultdict(Counter)
    tickets = itertools.count()
    lock = threading.Lock()

    def make(client, index):
        # Each key exactly `rounds` times, len(keys) requests apart: whichever
        # of the 6 connections is free then sends it.
        with lock:
            key = keys[next(tickets) % len(keys)]
        return "GET", f"/k/{key}", {"x-user": key}, None

    load = LoadClients(port, 6, total=len(keys) * rounds, seconds=40, request=make).run()
    assert not load.failures(), describe(load.failures())
    for o in load.snapshot():
        seen[o.path.rsplit("/", 1)[1]][o.upstream] += 1
    return seen


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_consistent_hash_on_a_header(start_proxy, tmp_path, policy):
    keys = [f"user-{i}" for i in range(300)]
    with HttpUpstream("a") as a, HttpUpstream("b") as b, HttpUpstream("c") as c:
        gp = start_governed(start_proxy, tmp_path,
                            [gov_cluster("backend", a, b, c, lb_policy=policy, hash_policy={"header": "x-user"})],
                            [gov_vs(HOST, gov_route("backend"))])
        seen = _route_keys(gp.port, keys, 3)
        split = {k: v for k, v in seen.items() if len(v) != 1}
        assert not split, f"{len(split)} keys reached more than one host: {dict(list(split.items())[:5])}"
        owner = {k: next(iter(v)) for k, v in seen.items()}
        spread = Counter(owner.values())
        assert len(spread) == 3 and min(spread.values()) >= 30, f"300 keys hashed onto {dict(spread)}"
        if policy != "RING_HASH":
            return

        # Remove c by a live reload: a's and b's keys stay; c's move to a or b.
        doc = gp.doc
        doc["clusters"] = [gov_cluster("backend", a, b, lb_policy=policy, hash_policy={"header": "x-user"})]
        gp.apply(doc, via="post")
        after = _route_keys(gp.port, keys, 1)
        assert all(after[k].total() == 1 for k in keys)
        moved = [k for k, o in owner.items() if o != "c" and set(after[k]) != {o}]
        kept = sum(1 for o in owner.values() if o != "c")
        assert len(moved) <= kept // 100, \
            f"{len(moved)} of {kept} keys of the remaining hosts moved: {moved[:10]}"
        assert all(set(after[k]) <= {"a", "b"} for k in keys)


def test_weights_split_round_robin_traffic(start_proxy, tmp_path):
    with HttpUpstream("heavy") as heavy, HttpUpstream("light") as light:
        gp = start_governed(start_proxy, tmp_path,
                            [gov_cluster("backend", heavy, light, weights=[3, 1])],
                            [gov_vs(HOST, gov_route("backend"))])
        load = LoadClients(gp.port, 4, total=800, seconds=30).run()
        assert not load.failures(), describe(load.failures())
        share = load.upstreams()["heavy"] / 800
        assert 0.70 <= share <= 0.80, f"weights 3:1 gave heavy {share:.0%}"


@pytest.mark.parametrize("policy", ["RANDOM", "LEAST_REQUEST"])
def test_other_policies_reach_every_endpoint(start_proxy, tmp_path, policy):
    with HttpUpstream("a") as a, HttpUpstream("b") as b, HttpUpstream("c") as c:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", a, b, c, lb_policy=policy)],
                            [gov_vs(HOST, gov_route("backend"))])
        load = LoadClients(gp.port, 4, total=600, seconds=30).run()
        assert not load.failures(), describe(load.failures())
        answered = load.upstreams()
        assert all(answered[n] >= 100 for n in "abc"), f"{policy}: {dict(answered)}"
