"""Load balancers (fastproxy.policy.lb): proportions, consistency, retries, panic.

Every random source is seeded: rand is a random.Random(seed).random, and
`active` is a dict the test owns (what the worker reads from shared memory).
"""
import os
import random
import subprocess
import sys
from collections import Counter
from math import gcd
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastproxy.policy import lb
from fastproxy.policy.lb import Endpoint, build, hash_key, select_hosts

REPO = Path(__file__).resolve().parents[2]


def endpoints(*weights: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"10.0.0.{i + 1}", 8080, w, 100 + i) for i, w in enumerate(weights))


def seeded(seed: int = 7):
    return random.Random(seed).random


def shares(balancer, picks: int, keys=None) -> dict[int, float]:
    """Fraction of picks per endpoint slot."""
    if keys is None:
        counts = Counter(balancer.pick().slot for _ in range(picks))
    else:
        counts = Counter(balancer.pick(k).slot for k in keys)
        picks = len(keys)
    return {slot: n / picks for slot, n in counts.items()}


KEYS = [hash_key(f"user-{i}".encode()) for i in range(10_000)]


# ---------------------------------------------------------------- ROUND_ROBIN

def test_round_robin_interleaves_3_1():
    a, b = endpoints(3, 1)
    rr = build("ROUND_ROBIN", (a, b), {}, rand=lambda: 0.0)
    assert [rr.pick() for _ in range(8)] == [a, a, b, a] * 2


def test_round_robin_equal_weights_alternate():
    a, b = endpoints(5, 5)   # gcd: a cycle of 2, not 10
    rr = build("ROUND_ROBIN", (a, b), {}, rand=lambda: 0.0)
    assert [rr.pick() for _ in range(6)] == [a, b] * 3


@given(st.lists(st.integers(1, 40), min_size=1, max_size=8), st.floats(0, 0.999))
def test_round_robin_exact_over_one_cycle_and_smooth(weights, start):
    hosts = endpoints(*weights)
    rr = build("ROUND_ROBIN", hosts, {}, rand=lambda: start)
    g = 0
    for w in weights:
        g = gcd(g, w)
    cycle_len = sum(weights) // g
    seq = [rr.pick().slot for _ in range(2 * cycle_len)]
    for h in hosts:
        assert seq[:cycle_len].count(h.slot) == h.weight // g
        assert seq[cycle_len:] == seq[:cycle_len]
    # Smooth: from the cycle's start (start=0 only), every prefix holds each
    # host within 2 of its exact share; a blocky a,a,a,b order would not.
    if start == 0:
        for h in hosts:
            seen = 0
            for m, slot in enumerate(seq[:cycle_len], 1):
                seen += slot == h.slot
                assert abs(seen - m * h.weight / sum(weights)) < 2


def test_round_robin_random_start_differs_between_workers():
    hosts = endpoints(1, 1, 1, 1, 1, 1, 1, 1)
    firsts = {build("ROUND_ROBIN", hosts, {}, rand=seeded(s)).pick().slot for s in range(20)}
    assert len(firsts) > 3


def test_round_robin_long_cycle_is_scheduled_and_exact():
    a, b = endpoints(70_000, 30_001)   # gcd 1: a 100,001-entry cycle is not precomputed
    rr = build("ROUND_ROBIN", (a, b), {}, rand=seeded())
    assert isinstance(rr, lb.Scheduled)
    counts = Counter(rr.pick().slot for _ in range(100_001))
    assert abs(counts[a.slot] - 70_000) <= 1 and abs(counts[b.slot] - 30_001) <= 1


# ---------------------------------------------------------------- RANDOM

def test_random_weighted_proportions():
    hosts = endpoints(1, 2, 3, 4)
    got = shares(build("RANDOM", hosts, {}, rand=seeded()), 200_000)
    for h in hosts:
        assert got[h.slot] == pytest.approx(h.weight / 10, abs=0.005)


def test_random_draw_at_the_top_edge_stays_in_range():
    hosts = endpoints(1, 1, 1)
    r = build("RANDOM", hosts, {}, rand=lambda: 0.9999999999999999)
    assert r.pick() == hosts[-1]


# ---------------------------------------------------------------- LEAST_REQUEST

def test_least_request_equal_weights_idle_is_uniform():
    hosts = endpoints(1, 1, 1, 1, 1)
    active = {h.slot: 0 for h in hosts}
    got = shares(build("LEAST_REQUEST", hosts, {"choice_count": 2}, active.__getitem__, seeded()), 100_000)
    for h in hosts:
        assert got[h.slot] == pytest.approx(0.2, abs=0.006)


def test_least_request_avoids_a_busy_host_more_than_round_robin():
    hosts = endpoints(*[1] * 10)
    active = {h.slot: 0 for h in hosts}
    active[hosts[0].slot] = 50
    lr = shares(build("LEAST_REQUEST", hosts, {"choice_count": 2}, active.__getitem__, seeded()), 100_000)
    rr = shares(build("ROUND_ROBIN", hosts, {}, rand=seeded()), 100_000)
    busy = hosts[0].slot
    assert rr[busy] == pytest.approx(0.1, abs=1e-4)
    # P2C: only when both draws land on it, (1/10)**2
    assert lr.get(busy, 0) == pytest.approx(0.01, abs=0.002)


def test_least_request_more_choices_avoid_the_busy_host_harder():
    hosts = endpoints(*[1] * 4)
    active = {h.slot: 0 for h in hosts}
    active[hosts[0].slot] = 9
    got = shares(build("LEAST_REQUEST", hosts, {"choice_count": 3}, active.__getitem__, seeded()), 100_000)
    assert got.get(hosts[0].slot, 0) == pytest.approx(4 ** -3, abs=0.003)


def test_least_request_picks_the_least_loaded_of_the_draws():
    hosts = endpoints(1, 1)
    active = {hosts[0].slot: 3, hosts[1].slot: 1}
    draws = iter([0.1, 0.9])   # host 0 then host 1
    lr = build("LEAST_REQUEST", hosts, {}, active.__getitem__, lambda: next(draws))
    assert lr.pick() == hosts[1]


def test_least_request_unequal_weights_idle_follow_the_weights():
    hosts = endpoints(1, 2, 3, 4)
    active = {h.slot: 0 for h in hosts}
    lr = build("LEAST_REQUEST", hosts, {}, active.__getitem__, seeded())
    counts = Counter(lr.pick().slot for _ in range(10_000))
    for h in hosts:
        assert abs(counts[h.slot] - 1000 * h.weight) <= 2


def test_least_request_unequal_weights_divided_by_active_plus_one():
    a, b = endpoints(3, 1)
    active = {a.slot: 2, b.slot: 0}   # 3 / (2 + 1) == 1 / (0 + 1)
    lr = build("LEAST_REQUEST", (a, b), {}, active.__getitem__, seeded())
    counts = Counter(lr.pick().slot for _ in range(10_000))
    assert abs(counts[a.slot] - 5000) <= 2


def test_least_request_unequal_weights_busy_host_gets_less_than_round_robin():
    hosts = endpoints(2, 1, 1, 1, 1)
    active = {h.slot: 0 for h in hosts}
    active[hosts[0].slot] = 5
    lr = shares(build("LEAST_REQUEST", hosts, {}, active.__getitem__, seeded()), 60_000)
    rr = shares(build("ROUND_ROBIN", hosts, {}, rand=seeded()), 60_000)
    assert rr[hosts[0].slot] == pytest.approx(2 / 6, abs=1e-3)
    # effective weight 2 / 6 against four hosts of 1
    assert lr[hosts[0].slot] == pytest.approx((2 / 6) / (2 / 6 + 4), abs=2e-3)


def test_least_request_sees_active_change_between_picks():
    a, b = endpoints(2, 1)
    active = {a.slot: 0, b.slot: 0}
    lr = build("LEAST_REQUEST", (a, b), {}, active.__getitem__, seeded())
    counts = Counter()
    for _ in range(3000):   # requests never finish: each pick loads its host
        h = lr.pick()
        active[h.slot] += 1
        counts[h.slot] += 1
    assert 0.3 < counts[b.slot] / 3000 < 0.5   # pushed toward even, against weight 1/3


def test_least_request_without_active_counts_as_idle():
    hosts = endpoints(1, 1, 1)
    got = shares(build("LEAST_REQUEST", hosts, {}, None, seeded()), 30_000)
    assert all(v == pytest.approx(1 / 3, abs=0.01) for v in got.values())


# ---------------------------------------------------------------- RING_HASH

def test_ring_hash_is_deterministic_across_builds():
    hosts = endpoints(*[1] * 10)
    one, two = build("RING_HASH", hosts, {}), build("RING_HASH", tuple(reversed(hosts)), {})
    assert all(one.pick(k) == two.pick(k) for k in KEYS[:2000])


@pytest.mark.parametrize("removed", range(10))
def test_ring_hash_removing_one_host_keeps_every_other_key(removed):
    hosts = endpoints(*[1] * 10)
    before = build("RING_HASH", hosts, {})
    after = build("RING_HASH", hosts[:removed] + hosts[removed + 1:], {})
    kept = [k for k in KEYS if before.pick(k) != hosts[removed]]
    stayed = sum(before.pick(k) == after.pick(k) for k in kept)
    assert stayed / len(kept) >= 0.99
    assert stayed == len(kept)   # this ring's scale did not change: all of them


def test_ring_hash_adding_a_host_moves_keys_only_to_it():
    hosts = endpoints(*[1] * 10)
    before = build("RING_HASH", hosts[:9], {})
    after = build("RING_HASH", hosts, {})
    for k in KEYS:
        assert after.pick(k) in (before.pick(k), hosts[9])


def test_ring_hash_weights_and_size():
    hosts = endpoints(1, 2, 1)
    ring = build("RING_HASH", hosts, {"ring_min": 1024, "ring_max": 8388608})
    assert 1024 <= len(ring._points) < 2048
    got = shares(ring, 0, KEYS)
    for h in hosts:
        assert got[h.slot] == pytest.approx(h.weight / 4, abs=0.05)


def test_ring_hash_respects_ring_max_and_gives_every_host_a_point():
    hosts = endpoints(1, 1000)
    assert lb._ring_counts(hosts, 1024, 8388608) == [2, 2000]   # 1001 < 1024: doubled
    assert sum(lb._ring_counts(hosts, 64, 256)) <= 256
    assert min(lb._ring_counts(hosts, 64, 256)) == 1


def test_ring_hash_lookup_is_first_point_at_or_after_the_key_and_wraps():
    hosts = endpoints(1, 1, 1)
    ring = build("RING_HASH", hosts, {"ring_min": 8})
    points, owners = ring._points, ring._owners
    assert ring.pick(points[3]) == owners[3]
    assert ring.pick(points[3] + 1) == owners[4]
    assert ring.pick(points[-1] + 1) == owners[0]
    assert ring.pick(0) == owners[0]


# ---------------------------------------------------------------- MAGLEV

def test_maglev_table_follows_the_weights():
    hosts = endpoints(1, 2, 3, 4)
    mg = build("MAGLEV", hosts, {"maglev_size": 65537})
    counts = Counter(h.slot for h in mg._table)
    for h in hosts:
        assert counts[h.slot] / 65537 == pytest.approx(h.weight / 10, abs=0.002)
    got = shares(mg, 0, KEYS)
    for h in hosts:
        assert got[h.slot] == pytest.approx(h.weight / 10, abs=0.02)


def test_maglev_removing_one_of_ten_moves_few_keys():
    hosts = endpoints(*[1] * 10)
    before = build("MAGLEV", hosts, {})
    moved = []
    for removed in range(10):
        after = build("MAGLEV", hosts[:removed] + hosts[removed + 1:], {})
        kept = [k for k in KEYS if before.pick(k) != hosts[removed]]
        moved.append(sum(before.pick(k) != after.pick(k) for k in kept) / len(kept))
    print(f"maglev: keys of the 9 remaining hosts that moved: max {max(moved):.2%}, "
          f"mean {sum(moved) / len(moved):.2%}")
    assert max(moved) < 0.02


def test_maglev_lookup_is_key_mod_size():
    hosts = endpoints(1, 1, 1)
    mg = build("MAGLEV", hosts, {"maglev_size": 7})
    assert [mg.pick(k) for k in range(7, 14)] == list(mg._table)
    assert {h.slot for h in mg._table} == {h.slot for h in hosts}


def test_maglev_size_must_be_prime():
    with pytest.raises(ValueError, match="maglev_size"):
        build("MAGLEV", endpoints(1), {"maglev_size": 65536})


# ---------------------------------------------------------------- pick_other

@pytest.mark.parametrize("policy", lb.POLICIES)
def test_pick_other_avoids_tried_slots(policy):
    hosts = endpoints(1, 2, 1, 3, 1)
    active = {h.slot: 0 for h in hosts}
    bal = build(policy, hosts, {"ring_min": 64, "maglev_size": 251}, active.__getitem__, seeded())
    for key in KEYS[:200]:
        first = bal.pick(key)
        assert bal.pick_other({first.slot}, key) != first
        last = hosts[key % 5]
        tried = {h.slot for h in hosts if h is not last}
        assert bal.pick_other(tried, key) == last
        # everything tried: any host, as pick()
        assert bal.pick_other({h.slot for h in hosts}, key) in hosts
        assert bal.pick_other((), key).slot in active


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_pick_other_is_consistent_for_a_key(policy):
    hosts = endpoints(*[1] * 6)
    one, two = build(policy, hosts, {"maglev_size": 1009}), build(policy, hosts, {"maglev_size": 1009})
    for key in KEYS[:300]:
        tried = {one.pick(key).slot}
        assert one.pick_other(tried, key) == two.pick_other(tried, key)


def test_pick_other_scan_does_not_always_fall_back_to_the_same_host():
    hosts = endpoints(*[1] * 4)
    stuck = build("RANDOM", hosts, {}, rand=lambda: 0.0)   # every draw: host 0
    tried = {hosts[0].slot, hosts[1].slot}
    # the draws all fail; the scan's start rotates, reaching both untried hosts
    got = Counter(stuck.pick_other(tried).slot for _ in range(8))
    assert set(got) == {hosts[2].slot, hosts[3].slot}


# ---------------------------------------------------------------- select_hosts

def test_select_hosts_normal_panic_none():
    hosts = endpoints(1, 1, 1, 1)
    assert select_hosts(hosts, [True] * 4, 50) == (hosts, "normal")
    assert select_hosts(hosts, [True, False, True, True], 50) == ((hosts[0], hosts[2], hosts[3]), "normal")
    # exactly 50% available is not fewer than 50%
    assert select_hosts(hosts, [True, False, True, False], 50) == ((hosts[0], hosts[2]), "normal")
    assert select_hosts(hosts, [False, False, True, False], 50) == (hosts, "panic")
    assert select_hosts(hosts, [False] * 4, 50) == ((), "none")
    assert select_hosts((), (), 50) == ((), "none")


def test_select_hosts_threshold_zero_never_panics_and_100_always_does():
    hosts = endpoints(1, 1, 1, 1)
    assert select_hosts(hosts, [False, False, False, True], 0) == ((hosts[3],), "normal")
    assert select_hosts(hosts, [True, True, True, False], 100) == (hosts, "panic")
    assert select_hosts(hosts, [False] * 4, 0) == ((), "none")


def test_select_hosts_refuses_mismatched_lengths():
    with pytest.raises(ValueError):
        select_hosts(endpoints(1, 1), [True], 50)


# ---------------------------------------------------------------- build, empty, hash_key

@pytest.mark.parametrize("policy", lb.POLICIES)
def test_empty_hosts_build_but_pick_says_why(policy):
    bal = build(policy, (), {})
    assert bal.hosts == ()
    with pytest.raises(LookupError, match="no hosts"):
        bal.pick(1)
    with pytest.raises(LookupError, match="no hosts"):
        bal.pick_other({1}, 1)


def test_build_refuses_bad_input():
    with pytest.raises(ValueError, match="lb_policy"):
        build("LEAST_CONN", endpoints(1), {})
    with pytest.raises(ValueError, match="weight"):
        build("ROUND_ROBIN", endpoints(0), {})
    with pytest.raises(ValueError, match="choice_count"):
        build("LEAST_REQUEST", endpoints(1), {"choice_count": 1})
    with pytest.raises(ValueError, match="ring_min"):
        build("RING_HASH", endpoints(1), {"ring_min": 10, "ring_max": 5})


@pytest.mark.parametrize("policy", lb.POLICIES)
def test_every_policy_reports_itself_and_its_hosts(policy):
    hosts = endpoints(1, 1, 2)
    bal = build(policy, list(hosts), {})
    assert bal.policy == policy and bal.hosts == hosts
    assert bal.pick(KEYS[0]) in hosts


def test_hash_key_is_64_bit_and_pinned():
    assert hash_key(b"") == hash_key(b"")
    assert 0 <= hash_key(b"x-user: alice") < 1 << 64
    # Pinned: a change would move every session at the next rolling restart.
    assert hash_key(b"fastproxy") == 9719142371913084667


def test_hash_key_same_in_other_processes():
    code = "from fastproxy.policy.lb import hash_key; print(hash_key(b'session-42'), hash_key(b''))"
    outs = {subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert outs == {f"{hash_key(b'session-42')} {hash_key(b'')}\n"}


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV"])
def test_one_host_is_always_picked_without_a_draw(policy):
    only = Endpoint("10.0.0.1", 80, 3, 7)

    def no_draw():
        raise AssertionError("a one-host balancer drew a random number")

    b = build(policy, [only], {}, active=lambda slot: 99, rand=no_draw)
    assert {b.pick(k) for k in range(50)} == {only}
    assert b.pick_other({7}) is only     # nothing else to try
