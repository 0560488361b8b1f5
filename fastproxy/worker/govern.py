"""The worker's view of traffic governance: which endpoint of a cluster gets a
request, and the native objects the HTTP engine enforces policy with.

The decisions are pure (fastproxy/policy/); the state they read is shared by
every worker in the governance segment (csrc/govern.h): endpoint health and
ejections, requests in flight per endpoint, circuit breakers, rate-limit
buckets. A ClusterGov rebuilds its balancer only when the cluster's
availability version moved, so a request to a watched cluster costs one
8-byte shared-memory load before the pick.
"""
from __future__ import annotations

from random import getrandbits

import orjson

from .._native.govern import ClusterCfg, GovernSegment, RetryCfg
from ..policy import lb
from ..policy.breakers import engine_args
from ..policy.retry import RetryPolicy


def signature(cluster) -> tuple:
    """What a ClusterGov is built from: equal signatures (a reload that left
    the cluster as it was) let the next table generation keep it."""
    return (cluster.slot, cluster.endpoints, orjson.dumps(cluster.lb_doc, option=orjson.OPT_SORT_KEYS),
            cluster.panic, cluster.breakers, cluster.outlier, cluster.health_check is not None)


class ClusterGov:
    """One cluster in this worker, kept across table generations while its
    signature() does not change."""

    __slots__ = ("cluster", "sig", "govern", "slot", "gcl", "cfg", "watch", "version", "balancer",
                 "hash_header", "hash_cookie", "hash_source", "hashed", "version_of", "eps", "policy", "opts", "panic",
                 "built")

    def __init__(self, cluster, govern: GovernSegment, sig: tuple):
        self.cluster = cluster
        self.sig = sig
        self.govern = govern
        self.slot = cluster.slot
        self.gcl = govern.cluster_address(cluster.slot)
        self.cfg = ClusterCfg(**engine_args(cluster.breakers, cluster.outlier, len(cluster.endpoints)))
        self.watch = cluster.outlier is not None or cluster.health_check is not None
        doc = cluster.lb_doc
        self.policy = doc["policy"]
        self.opts = doc
        self.panic = cluster.panic
        h = doc.get("hash") or {}
        self.hash_header = h["header"].lower().encode() if "header" in h else None
        self.hash_cookie = h["cookie"].encode() if "cookie" in h else None
        self.hash_source = bool(h.get("source_ip"))
        self.hashed = bool(h)
        self.version_of = govern.version      # bound once: read per request of a watched cluster
        # endpoint slot -> its shared state's address (the engine counts attempts there)
        self.eps = {ep.slot: govern.endpoint_address(ep.slot) for ep in cluster.endpoints}
        self.version = -1
        # balancer per chosen host set: a flapping host does not rebuild (a
        # Maglev table costs tens of ms) nor restart the rotation each time
        self.built: dict[tuple[int, ...], object] = {}
        self.balancer = None
        self.refresh()

    def refresh(self) -> None:
        g = self.govern
        self.version = g.version(self.slot)
        hosts = self.cluster.endpoints
        available = [g.available(ep.slot) for ep in hosts] if self.watch else [True] * len(hosts)
        chosen, _ = lb.select_hosts(hosts, available, self.panic)   # NONE: no host, 503 UH
        if not chosen:
            self.balancer = None
            return
        key = tuple(ep.slot for ep in chosen)
        b = self.built.get(key)
        if b is None:
            b = self.built[key] = lb.build(self.policy, chosen, self.opts, active=g.rq_active)
        self.balancer = b

    def pick(self, conn, headers):
        """The endpoint for a new request, or None: no healthy endpoint (503 UH)."""
        if self.watch and self.version_of(self.slot) != self.version:
            self.refresh()
        b = self.balancer
        if b is None:
            return None
        if self.hashed:
            return b.pick(self._key(conn, headers))
        return b.pick()

    def pick_other(self, tried: tuple[int, ...]):
        """An endpoint for a retry, avoiding the tried ones when it can (previous_hosts)."""
        if self.watch and self.version_of(self.slot) != self.version:
            self.refresh()
        b = self.balancer
        if b is None:
            return None
        # a fresh key: a consistent-hash retry spreads over the other hosts
        # instead of every retry walking the ring from one point
        return b.pick_other(tried, getrandbits(64))

    def _key(self, conn, headers) -> int:
        if self.hash_header is not None:
            v = headers.get(self.hash_header) if headers is not None else None
        elif self.hash_cookie is not None:
            v = _cookie(headers.get(b"cookie") if headers is not None else None, self.hash_cookie)
        else:
            v = conn.peer.encode() if conn is not None and conn.peer else None
        # no key in the request: a random one (Envoy picks at random then)
        return lb.hash_key(v) if v is not None else getrandbits(64)


def _cookie(header: bytes | None, name: bytes) -> bytes | None:
    """The value of cookie `name` in a Cookie field (RFC 6265 §4.2.1), or None."""
    if not header:
        return None
    for part in header.split(b";"):
        k, sep, v = part.strip().partition(b"=")
        if sep and k == name:
            return v
    return None


def retry_cfg(policy: RetryPolicy | None) -> RetryCfg | None:
    """The engine's form of a route's retry policy."""
    if policy is None:
        return None
    return RetryCfg(num_retries=policy.num_retries, retry_on=policy.retry_on,
                    per_try_timeout_ms=policy.per_try_timeout_ms, codes=tuple(policy.codes),
                    non_idempotent=policy.non_idempotent, backoff_base_ms=policy.backoff_base_ms,
                    backoff_max_ms=policy.backoff_max_ms)
