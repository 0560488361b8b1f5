"""The manager's side of the governance segment (csrc/govern.h), except health checks.

- Outlier un-ejection. Workers eject endpoints (gv_outlier_report); only the
  manager brings them back. As Envoy's outlier detector does on its interval
  timer, every outlier_detection.interval_ms each endpoint of the cluster is
  reviewed (GovernSegment.uneject_due): an ejection whose time is up ends,
  and the ejection-time multiplier of a host that stayed in decays.
- Endpoints that leave the table (or whose cluster drops outlier detection)
  would otherwise stay ejected for good, still counted in the cluster's
  ejected total: they are released at once, as Envoy forgets a removed host.
- The read side of /stats and /clusters: snapshot() reads every cluster and
  endpoint of the published table into stats.govern values.

sweep() and snapshot() are synchronous and take the time as an argument, so
they are tested with a fake segment; run() is the asyncio tick around them.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .._native.govern import ClusterCfg
from ..config.schema import hostport
from ..policy.breakers import Breakers, engine_args
from ..policy.outlier import OutlierDetection
from ..stats.govern import BucketState, ClusterState, HostState

log = logging.getLogger("fastproxy.manager")

TICK_S = 0.1                 # how often due clusters are looked for
ORPHAN_GRACE_MS = 30_000     # a released endpoint is watched this long (a worker on the old
                             # table may still eject it) before it is forgotten


def cluster_cfg_args(cluster: Mapping) -> dict:
    """ClusterCfg keyword arguments for a table document's cluster."""
    od = cluster.get("outlier")
    return engine_args(Breakers.from_doc(cluster["breakers"]), OutlierDetection.from_doc(od) if od else None,
                       len(cluster["endpoints"]))


@dataclass
class _Swept:
    """A cluster with outlier detection: what its review needs."""
    slot: int
    cfg: ClusterCfg
    interval_ms: int
    endpoints: tuple[int, ...]
    due_ms: int = 0


@dataclass
class _Orphan:
    """An endpoint no review covers any more: released if it is ejected."""
    cluster_slot: int
    cfg: ClusterCfg
    since_ms: int


@dataclass
class Governance:
    segment: object                                  # GovernSegment (or a fake in tests)
    health_counts: Callable[[str], Mapping | None] = lambda name: None
    doc: dict | None = None
    swept: dict[str, _Swept] = field(default_factory=dict)
    orphans: dict[int, _Orphan] = field(default_factory=dict)   # endpoint slot ->

    # -- reconcile ----------------------------------------------------------------------

    def apply(self, doc: dict, now_ms: int) -> None:
        """Takes a newly published table: reviews start, move or stop with it."""
        before = {ep: (s.slot, s.cfg) for s in self.swept.values() for ep in s.endpoints}
        swept: dict[str, _Swept] = {}
        for name, c in doc["clusters"].items():
            od = c.get("outlier")
            if od is None:
                continue
            eps = tuple(dict.fromkeys(e[3] for e in c["endpoints"]))   # a repeated address: one review
            old = self.swept.get(name)
            # An unchanged interval keeps its schedule; a new cluster is first reviewed one interval from now.
            due = old.due_ms if old is not None and old.interval_ms == od["interval_ms"] else now_ms + od["interval_ms"]
            swept[name] = _Swept(c["slot"], ClusterCfg(**cluster_cfg_args(c)), od["interval_ms"], eps, due)
        kept = {ep for s in swept.values() for ep in s.endpoints}
        for ep, (cslot, cfg) in before.items():
            if ep not in kept:
                self.orphans[ep] = _Orphan(cslot, cfg, now_ms)
        for ep in kept:
            self.orphans.pop(ep, None)
        self.swept = swept
        self.doc = doc

    # -- the review -----------------------------------------------------------------------

    def sweep(self, now_ms: int) -> int:
        """Reviews every cluster whose interval is due, and releases orphans.
        Returns how many endpoints came back."""
        back = 0
        seg = self.segment
        for name, s in self.swept.items():
            if now_ms < s.due_ms:
                continue
            s.due_ms = now_ms + s.interval_ms
            for ep in s.endpoints:
                if seg.uneject_due(s.slot, ep, s.cfg, now_ms):
                    back += 1
                    log.info("outlier detection: cluster %s endpoint slot %d un-ejected", name, ep)
        for ep, o in list(self.orphans.items()):
            st = seg.endpoint_stats(ep)
            if st["ejected"]:
                # Due now whatever its ejection time: the end time passed to
                # uneject_due is the ejection's own, so the decay clock stays sane.
                if seg.uneject_due(o.cluster_slot, ep, o.cfg, max(now_ms, st["eject_until_ms"])):
                    back += 1
            elif now_ms - o.since_ms >= ORPHAN_GRACE_MS:
                del self.orphans[ep]
        return back

    async def run(self) -> None:
        """The manager's review tick, for its whole life (cancelled on exit)."""
        now_ms = self.segment.now_ms
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.sweep(now_ms())
            except Exception:  # a bug here must not stop the reviews for good
                log.exception("outlier review failed")

    # -- the read side ----------------------------------------------------------------------

    def snapshot(self) -> list[ClusterState]:
        """Every cluster of the published table, read from the segment now."""
        seg = self.segment
        out = []
        for name, c in (self.doc or {}).get("clusters", {}).items():
            hosts = []
            for ip, port, weight, ep in c["endpoints"]:
                st = seg.endpoint_stats(ep)
                hosts.append(HostState(hostport(ip, port), weight, st["rq_active"], st["rq_total"],
                                       bool(st["ejected"]), bool(st["hc_failed"])))
            health = None
            if c.get("health_check") is not None:
                health = self.health_counts(name) or {}
            out.append(ClusterState(name, seg.cluster_stats(c["slot"]), c["breakers"], c.get("outlier") is not None,
                                    health, tuple(hosts)))
        return out

    def buckets(self) -> list[BucketState]:
        """Every local rate-limit bucket of the published table."""
        seg = self.segment
        out = []
        for key, slot in sorted((self.doc or {}).get("rate_limit_slots", {}).items()):
            st = seg.bucket_stats(slot)
            out.append(BucketState(key, st["allowed"], st["limited"]))
        return out
