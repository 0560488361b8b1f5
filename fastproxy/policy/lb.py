"""Load balancers: which endpoint of a cluster gets the next request. Pure.

A worker calls select_hosts() with the endpoints' availability (health and
outlier ejection, read from the governance segment) to get the set to balance
over, build()s a Balancer for that set once, and calls pick() per request.
Envoy's policies (cluster lb_policy):

    ROUND_ROBIN    weighted, smooth: one cycle holds each host weight/gcd times,
                   interleaved (weights 3,1: a a b a), from a random start so
                   workers do not move in step
    LEAST_REQUEST  equal weights: the fewest active requests among choice_count
                   random hosts (P2C). Weights differ: Envoy's earliest-deadline
                   schedule, each host's weight divided by (active + 1)
                   (active_request_bias 1.0) when it is scheduled again
    RANDOM         weighted random
    RING_HASH      ketama ring of points proportional to weight; a key goes to
                   the first point at or after it
    MAGLEV         Maglev lookup table (prime size), filled by weight

key is a 64-bit hash of the request's hash_policy input (hash_key); only the
hash policies read it. pick_other() is Envoy's previous_hosts retry predicate.
"""
from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from heapq import heapify, heapreplace
from itertools import accumulate, cycle, islice
from math import gcd

ROUND_ROBIN = "ROUND_ROBIN"
LEAST_REQUEST = "LEAST_REQUEST"
RANDOM = "RANDOM"
RING_HASH = "RING_HASH"
MAGLEV = "MAGLEV"
POLICIES = (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV)

# Envoy's defaults for the opts build() reads
DEFAULT_CHOICE_COUNT = 2
DEFAULT_RING_MIN = 1024
DEFAULT_RING_MAX = 8388608
DEFAULT_MAGLEV_SIZE = 65537

# select_hosts() states
NORMAL = "normal"
PANIC = "panic"
NONE = "none"

# pick_other(): the first choice plus Istio's host_selection_retry_max_attempts (5)
SELECT_ATTEMPTS = 6

# A round-robin cycle longer than this (weights whose sum over their gcd is
# large) is scheduled per pick instead of precomputed, to bound memory.
RR_CYCLE_LIMIT = 1 << 16

_M64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Endpoint:
    """slot: the endpoint's slot in the governance shared-memory segment."""
    ip: str
    port: int
    weight: int
    slot: int


def hash_key(value: bytes) -> int:
    """A 64-bit hash of value, the same in every process and version (unlike
    hash(), which is salted per process): workers must agree on where a key
    goes, and a rolling restart must not move every session."""
    return int.from_bytes(blake2b(value, digest_size=8).digest(), "little")


def select_hosts(hosts: Sequence[Endpoint], available: Sequence[bool],
                 panic_threshold: int) -> tuple[tuple[Endpoint, ...], str]:
    """The hosts to balance over and why: NORMAL (the available ones), PANIC
    (all of them: fewer than panic_threshold percent are available, Envoy's
    healthy_panic_threshold; 0 never panics) or NONE (none available, or no
    hosts: the caller answers 503 UH)."""
    if len(available) != len(hosts):
        raise ValueError(f"{len(available)} availability flags for {len(hosts)} hosts")
    up = tuple(h for h, ok in zip(hosts, available, strict=True) if ok)
    if not up:
        return (), NONE
    if len(up) == len(hosts):
        return tuple(hosts), NORMAL
    if len(up) * 100 < panic_threshold * len(hosts):
        return tuple(hosts), PANIC
    return up, NORMAL


def _idle(slot: int) -> int:
    return 0


class Balancer:
    """One per cluster and host set, per worker; pick() mutates only the
    balancer's own position (round robin, schedule)."""

    __slots__ = ("_scan", "hosts", "policy")

    def __init__(self, policy: str, hosts: tuple[Endpoint, ...]):
        self.policy = policy
        self.hosts = hosts
        self._scan = 0

    def pick(self, key: int = 0) -> Endpoint:
        raise NotImplementedError

    def _again(self, key: int, attempt: int) -> Endpoint:
        """The attempt-th choice for key (0: pick's). The random and rotating
        policies just pick again; the hash policies look further along."""
        return self.pick(key)

    def pick_other(self, tried: Collection[int], key: int = 0) -> Endpoint:
        """A host whose slot is not in tried when there is one, else pick(key)."""
        if not tried:
            return self.pick(key)
        for attempt in range(SELECT_ATTEMPTS):
            host = self._again(key, attempt)
            if host.slot not in tried:
                return host
        # Unlucky draws, or nearly every host tried: look at each in turn,
        # starting one further on each time so no host is everyone's fallback.
        hosts = self.hosts
        n = len(hosts)
        start = self._scan % n
        self._scan = start + 1
        for i in range(start, start + n):
            host = hosts[i % n]
            if host.slot not in tried:
                return host
        return self.pick(key)


class NoHosts(Balancer):
    """build() of an empty host list: the caller answers 503 UH instead of
    picking (select_hosts said NONE), so a pick here is a caller bug."""

    __slots__ = ()

    def pick(self, key: int = 0) -> Endpoint:
        raise LookupError(f"{self.policy} balancer has no hosts: select_hosts() said {NONE!r}, answer 503 UH")

    def pick_other(self, tried: Collection[int], key: int = 0) -> Endpoint:
        return self.pick(key)


class Single(Balancer):
    """One host: every policy picks it (no draw, no ring, no active count)."""

    __slots__ = ("_host",)

    def __init__(self, policy: str, hosts: tuple[Endpoint, ...]):
        super().__init__(policy, hosts)
        self._host = hosts[0]

    def pick(self, key: int = 0) -> Endpoint:
        return self._host

    def pick_other(self, tried: Collection[int], key: int = 0) -> Endpoint:
        return self._host


class RoundRobin(Balancer):
    """A precomputed smooth cycle (see _smooth_cycle), walked from a random start."""

    __slots__ = ("_next",)

    def __init__(self, hosts: tuple[Endpoint, ...], g: int, rand: Callable[[], float]):
        """g: the weights' gcd."""
        super().__init__(ROUND_ROBIN, hosts)
        order = _smooth_cycle([h.weight // g for h in hosts])
        # itertools.cycle: the walk costs one C call per pick
        self._next = cycle([hosts[i] for i in order]).__next__
        for _ in islice(order, int(rand() * len(order))):
            self._next()

    def pick(self, key: int = 0) -> Endpoint:
        return self._next()


def _weights_gcd(hosts: tuple[Endpoint, ...]) -> int:
    g = 0
    for h in hosts:
        g = gcd(g, h.weight)
    return g


def _smooth_cycle(weights: list[int]) -> list[int]:
    """Host indexes over one cycle: host i appears weights[i] times, its k-th
    turn at the middle of the k-th of its weights[i] equal shares of the cycle
    ((k + 1/2) / w, Webster's rounding), so turns interleave: 3,1 -> a a b a."""
    turns = sorted(((2 * k + 1) / (2 * w), i) for i, w in enumerate(weights) for k in range(w))
    return [i for _, i in turns]


class Scheduled(Balancer):
    """Earliest deadline first, Envoy's weighted scheduler: the host with the
    earliest deadline goes next and is rescheduled (active + 1) * max_weight /
    weight later, active read at that moment (LEAST_REQUEST with unequal
    weights), or with active always 0 (ROUND_ROBIN whose cycle is too long)."""

    __slots__ = ("_active", "_cost", "_heap")

    def __init__(self, policy: str, hosts: tuple[Endpoint, ...], active: Callable[[int], int],
                 rand: Callable[[], float]):
        super().__init__(policy, hosts)
        top = max(h.weight for h in hosts)
        # Costs relative to the heaviest host are >= 1, so deadlines stay far
        # from float resolution for as long as a process lives.
        self._cost = cost = tuple(top / h.weight for h in hosts)
        self._active = active
        # First turns at half a period, as _smooth_cycle: interleaved from the start.
        self._heap = heap = [(c / 2, i) for i, c in enumerate(cost)]
        heapify(heap)
        for _ in range(int(rand() * len(hosts))):
            deadline, i = heap[0]
            heapreplace(heap, (deadline + cost[i], i))

    def pick(self, key: int = 0) -> Endpoint:
        heap = self._heap
        deadline, i = heap[0]
        host = self.hosts[i]
        heapreplace(heap, (deadline + (self._active(host.slot) + 1) * self._cost[i], i))
        return host


class LeastRequest(Balancer):
    """Equal weights: of choice_count hosts drawn at random (with replacement,
    as Envoy), the one with the fewest active requests; ties go to the first
    drawn. A host busier than all others gets a request only when every draw
    lands on it."""

    __slots__ = ("_active", "_more", "_n", "_pad", "_rand")

    def __init__(self, hosts: tuple[Endpoint, ...], choice_count: int, active: Callable[[int], int],
                 rand: Callable[[], float]):
        super().__init__(LEAST_REQUEST, hosts)
        # rand() * n can round up to n itself; the extra entry absorbs it
        self._pad = hosts + hosts[-1:]
        self._n = len(hosts)
        self._more = range(choice_count - 2)   # draws after the first two (usually none)
        self._active = active
        self._rand = rand

    def pick(self, key: int = 0) -> Endpoint:
        hosts = self._pad
        n = self._n
        rand = self._rand
        active = self._active
        best = hosts[int(rand() * n)]
        other = hosts[int(rand() * n)]
        least = active(best.slot)
        a = active(other.slot)
        if a < least:
            best = other
            least = a
        if self._more:
            for _ in self._more:
                other = hosts[int(rand() * n)]
                a = active(other.slot)
                if a < least:
                    best = other
                    least = a
        return best


class Random(Balancer):
    """Weighted random: a uniform draw over the cumulative weights."""

    __slots__ = ("_cum", "_last", "_rand", "_total")

    def __init__(self, hosts: tuple[Endpoint, ...], rand: Callable[[], float]):
        super().__init__(RANDOM, hosts)
        # floats: a float draw compares faster with floats than with ints
        self._cum = [float(c) for c in accumulate(h.weight for h in hosts)]
        self._total = self._cum[-1]
        self._last = len(hosts) - 1   # bisect's hi: a draw rounding up to total stays in range
        self._rand = rand

    def pick(self, key: int = 0) -> Endpoint:
        return self.hosts[bisect_right(self._cum, self._rand() * self._total, 0, self._last)]


class RingHash(Balancer):
    """Ketama ring: host h owns points hash_key(b"ip:port_i") for i below its
    point count (_ring_counts); a key goes to the owner of the first point >= key,
    wrapping past the last."""

    __slots__ = ("_owners", "_points", "_size")

    def __init__(self, hosts: tuple[Endpoint, ...], ring_min: int, ring_max: int):
        super().__init__(RING_HASH, hosts)
        ring = sorted((hash_key(f"{h.ip}:{h.port}_{i}".encode()), n)
                      for n, (h, count) in enumerate(zip(hosts, _ring_counts(hosts, ring_min, ring_max), strict=True))
                      for i in range(count))
        self._points = [p for p, _ in ring]
        self._size = len(ring)
        # owners[size] = owners[0]: a key past the last point wraps with no branch
        self._owners = tuple(hosts[n] for _, n in ring) + (hosts[ring[0][1]],)

    def pick(self, key: int = 0) -> Endpoint:
        return self._owners[bisect_left(self._points, key)]

    def _again(self, key: int, attempt: int) -> Endpoint:
        # Envoy: the attempt-th point after the key's, clockwise.
        return self._owners[(bisect_left(self._points, key) + attempt) % self._size]


def _ring_counts(hosts: tuple[Endpoint, ...], ring_min: int, ring_max: int) -> list[int]:
    """Points per host: ceil(weight * 2**e). e is the smallest exponent that
    gives the lightest host a point of its own and the ring ring_min points in
    all, lowered while the ring is over ring_max (down to one point per host).

    Why not Envoy's exact scale (ring_min spread over the normalized weights):
    it changes every host's count on any change of the host set, so hosts
    that stayed trade keys. A power-of-two scale over the raw weights changes
    only when the total weight crosses a power-of-two multiple of ring_min
    (e.g. 8 -> 7 equal hosts at 1024) or the lightest weight changes, so
    removing or adding a host normally moves only that host's keys."""
    weights = [h.weight for h in hosts]

    def total(e: int) -> int:
        if e >= 0:
            return sum(weights) << e
        return sum(-(-w >> -e) for w in weights)

    e = 1 - min(weights).bit_length()   # 2**-e <= the lightest weight
    while total(e) < ring_min:
        e += 1
    while total(e) > ring_max and total(e) > len(hosts):
        e -= 1
    if e >= 0:
        return [w << e for w in weights]
    return [-(-w >> -e) for w in weights]


class Maglev(Balancer):
    """Google's Maglev table (Eisenbud et al., NSDI 2016) as Envoy fills it:
    each host walks its own permutation of the table's slots (offset and skip
    from two hashes of "ip:port") and claims the next free one on each of its
    turns; a host of weight w takes a turn in w / max_weight of the rounds."""

    __slots__ = ("_size", "_table")

    def __init__(self, hosts: tuple[Endpoint, ...], size: int):
        super().__init__(MAGLEV, hosts)
        self._table = tuple(hosts[i] for i in _maglev_fill(hosts, size))
        self._size = size

    def pick(self, key: int = 0) -> Endpoint:
        return self._table[key % self._size]

    def _again(self, key: int, attempt: int) -> Endpoint:
        # Envoy: a different pseudo-random slot per attempt.
        if attempt:
            key = _mix64(key + attempt * 0x9E3779B97F4A7C15)
        return self._table[key % self._size]


def _maglev_fill(hosts: tuple[Endpoint, ...], size: int) -> list[int]:
    cursor = []   # each host's next candidate slot: (offset + skip * j) % size
    skips = []
    for h in hosts:
        d = blake2b(f"{h.ip}:{h.port}".encode(), digest_size=16).digest()
        cursor.append(int.from_bytes(d[:8], "little") % size)
        skips.append(int.from_bytes(d[8:], "little") % (size - 1) + 1)
    weights = [h.weight for h in hosts]
    top = max(weights)
    due = [0] * len(hosts)   # a host takes a turn once round * weight reaches due
    table = [-1] * size
    filled = 0
    rnd = 0
    while filled < size:
        rnd += 1
        for i, w in enumerate(weights):
            if rnd * w < due[i]:
                continue
            due[i] += top
            c = cursor[i]
            skip = skips[i]
            while table[c] >= 0:
                c += skip
                if c >= size:
                    c -= size
            table[c] = i
            c += skip
            cursor[i] = c - size if c >= size else c
            filled += 1
            if filled == size:
                break
    return table


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a 64-bit value to a well-spread 64-bit value."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def build(policy: str, hosts: Sequence[Endpoint], opts: dict, active: Callable[[int], int] | None = None,
          rand: Callable[[], float] = random.random) -> Balancer:
    """A balancer of policy over hosts. opts: the table's lb document (keys
    choice_count, ring_min, ring_max, maglev_size; absent ones take Envoy's
    defaults). active(slot): requests in flight to that endpoint, for
    LEAST_REQUEST (None: always 0). rand: uniform draws in [0, 1).
    ValueError for what config validation should have refused."""
    if policy not in POLICIES:
        raise ValueError(f"unknown lb_policy {policy!r} (expected one of: {', '.join(POLICIES)})")
    hosts = tuple(hosts)
    for h in hosts:
        if h.weight < 1:
            raise ValueError(f"endpoint {h.ip}:{h.port}: weight must be >= 1, got {h.weight}")
    choice_count = opts.get("choice_count", DEFAULT_CHOICE_COUNT)
    ring_min = opts.get("ring_min", DEFAULT_RING_MIN)
    ring_max = opts.get("ring_max", DEFAULT_RING_MAX)
    maglev_size = opts.get("maglev_size", DEFAULT_MAGLEV_SIZE)
    if policy == LEAST_REQUEST and choice_count < 2:
        raise ValueError(f"choice_count must be >= 2, got {choice_count}")
    if policy == RING_HASH and not 1 <= ring_min <= ring_max:
        raise ValueError(f"need 1 <= ring_min <= ring_max, got {ring_min} and {ring_max}")
    if policy == MAGLEV and not _is_prime(maglev_size):
        # a composite size leaves permutations that never reach some slots
        raise ValueError(f"maglev_size must be a prime, got {maglev_size}")
    if active is None:
        active = _idle
    if not hosts:
        return NoHosts(policy, hosts)
    if len(hosts) == 1:
        return Single(policy, hosts)
    if policy == ROUND_ROBIN:
        g = _weights_gcd(hosts)
        if sum(h.weight for h in hosts) // g <= RR_CYCLE_LIMIT:
            return RoundRobin(hosts, g, rand)
        return Scheduled(ROUND_ROBIN, hosts, _idle, rand)
    if policy == LEAST_REQUEST:
        if all(h.weight == hosts[0].weight for h in hosts):
            return LeastRequest(hosts, choice_count, active, rand)
        return Scheduled(LEAST_REQUEST, hosts, active, rand)
    if policy == RANDOM:
        return Random(hosts, rand)
    if policy == RING_HASH:
        return RingHash(hosts, ring_min, ring_max)
    return Maglev(hosts, maglev_size)
