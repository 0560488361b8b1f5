"""Traffic-governance state as metrics and as the admin /clusters page. Pure.

The manager reads the governance segment (csrc/govern.h) at scrape time
into ClusterState / BucketState values; everything here turns those into
Prometheus samples (metric names in stats/names.py) or Envoy's /clusters
text, and does no I/O.

What is rendered, as Envoy does it:
- every cluster: the overflow and retry counters, the in-flight gauges,
  circuit_breakers.default.{cx,rq_pending,rq,rq_retry}_open and
  remaining_{cx,pending,rq,retries}, membership_healthy and _total;
- a cluster with outlier_detection: its outlier_detection.* stats;
- a cluster with a health check: its health_check.* stats;
- every local rate-limit bucket: http_local_rate_limit.{enabled, enforced,
  rate_limited, ok} (all checked requests are enforced: no runtime fraction).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .names import (
    CLUSTER_HEALTHY,
    CLUSTER_MEMBERS,
    GV_CB_CX_OPEN,
    GV_CB_REMAINING_CX,
    GV_CB_REMAINING_PENDING,
    GV_CB_REMAINING_RETRIES,
    GV_CB_REMAINING_RQ,
    GV_CB_RQ_OPEN,
    GV_CB_RQ_PENDING_OPEN,
    GV_CB_RQ_RETRY_OPEN,
    GV_CX_OVERFLOW,
    GV_OD_EJECTIONS_ACTIVE,
    GV_OD_ENFORCED_5XX,
    GV_OD_ENFORCED_GATEWAY,
    GV_OD_ENFORCED_TOTAL,
    GV_OD_OVERFLOW,
    GV_RQ_ACTIVE,
    GV_RQ_ACTIVE_OVERFLOW,
    GV_RQ_PENDING_ACTIVE,
    GV_RQ_PENDING_OVERFLOW,
    GV_RQ_RETRY,
    GV_RQ_RETRY_OVERFLOW,
    GV_RQ_RETRY_SUCCESS,
    HC_ATTEMPT,
    HC_FAILURE,
    HC_HEALTHY,
    HC_NETWORK_FAILURE,
    HC_SUCCESS,
    RL_ENABLED,
    RL_ENFORCED,
    RL_OK,
    RL_RATE_LIMITED,
)
from .prometheus import Sample

HEALTHY = "healthy"
FAILED_ACTIVE_HC = "/failed_active_hc"
FAILED_OUTLIER_CHECK = "/failed_outlier_check"

# gv_cluster field -> counter (the segment's field names, GovernSegment.cluster_stats()).
_CLUSTER_COUNTERS = (
    (GV_CX_OVERFLOW, "cx_overflow"),
    (GV_RQ_PENDING_OVERFLOW, "rq_pending_overflow"),
    (GV_RQ_ACTIVE_OVERFLOW, "rq_overflow"),
    (GV_RQ_RETRY, "rq_retry"),
    (GV_RQ_RETRY_SUCCESS, "rq_retry_success"),
    (GV_RQ_RETRY_OVERFLOW, "rq_retry_overflow"),
)
_OUTLIER_COUNTERS = (
    (GV_OD_ENFORCED_TOTAL, "ejections_total"),
    (GV_OD_ENFORCED_5XX, "ejections_5xx"),
    (GV_OD_ENFORCED_GATEWAY, "ejections_gateway"),
    (GV_OD_OVERFLOW, "ejections_overflow"),
)
_HEALTH_COUNTERS = ((HC_ATTEMPT, "attempt"), (HC_SUCCESS, "success"), (HC_FAILURE, "failure"),
                    (HC_NETWORK_FAILURE, "network_failure"))


@dataclass(frozen=True, slots=True)
class HostState:
    """One endpoint of a cluster, as read from its gv_endpoint."""
    address: str          # "ip:port" ("[v6]:port")
    weight: int
    rq_active: int
    rq_total: int
    ejected: bool         # outlier detection
    hc_failed: bool       # active health check

    @property
    def available(self) -> bool:
        return not self.ejected and not self.hc_failed

    @property
    def health_flags(self) -> str:
        """Envoy's health_flags: "healthy", or each failed flag with its leading slash."""
        flags = (FAILED_ACTIVE_HC if self.hc_failed else "") + (FAILED_OUTLIER_CHECK if self.ejected else "")
        return flags or HEALTHY


@dataclass(frozen=True, slots=True)
class ClusterState:
    """One cluster: its gv_cluster fields, its thresholds and its hosts."""
    name: str
    counters: Mapping[str, int]             # every gv_cluster field by name
    breakers: Mapping[str, float]           # the table doc's "breakers"
    outlier: bool                           # outlier_detection configured
    health: Mapping[str, int] | None        # health-check counts (attempt, success, failure,
                                            # network_failure); None: no health check
    hosts: tuple[HostState, ...]


@dataclass(frozen=True, slots=True)
class BucketState:
    """One local rate-limit bucket: its owner's config path and gv_bucket counters."""
    route: str
    allowed: int
    limited: int


def retry_limit(breakers: Mapping[str, float], rq_active: int) -> int:
    """Concurrent retries the cluster admits now: max_retries, or with a retry
    budget the smaller of it and max(min_retry_concurrency, budget_percent of
    the requests in flight) (csrc/govern.h gv_retry_acquire)."""
    limit = int(breakers["max_retries"])
    pct = int(float(breakers.get("budget_percent") or 0) + 0.5)   # whole percent, half up, as ClusterCfg
    if pct > 0:
        budget = max(int(breakers.get("min_retry_concurrency") or 0), int(max(0, rq_active) * pct // 100))
        limit = min(limit, budget)
    return limit


def _breaker(limit: float, used: int) -> tuple[int, int]:
    """(open, remaining) of one threshold."""
    limit, used = int(limit), max(0, int(used))
    return (1 if used >= limit else 0), max(0, limit - used)


def cluster_samples(c: ClusterState) -> list[Sample]:
    label = {"cluster_name": c.name}
    v = c.counters
    out: list[Sample] = [(m, label, v[field]) for m, field in _CLUSTER_COUNTERS]
    out.append((GV_RQ_ACTIVE, label, max(0, v["rq_active"])))
    out.append((GV_RQ_PENDING_ACTIVE, label, max(0, v["rq_pending"])))
    b = c.breakers
    for open_m, left_m, limit, used in (
            (GV_CB_CX_OPEN, GV_CB_REMAINING_CX, b["max_connections"], v["cx_active"]),
            (GV_CB_RQ_PENDING_OPEN, GV_CB_REMAINING_PENDING, b["max_pending_requests"], v["rq_pending"]),
            (GV_CB_RQ_OPEN, GV_CB_REMAINING_RQ, b["max_requests"], v["rq_active"]),
            (GV_CB_RQ_RETRY_OPEN, GV_CB_REMAINING_RETRIES, retry_limit(b, v["rq_active"]), v["rq_retry_active"])):
        is_open, left = _breaker(limit, used)
        out.append((open_m, label, is_open))
        out.append((left_m, label, left))
    out.append((CLUSTER_HEALTHY, label, sum(1 for h in c.hosts if h.available)))
    out.append((CLUSTER_MEMBERS, label, len(c.hosts)))
    if c.outlier:
        out.append((GV_OD_EJECTIONS_ACTIVE, label, sum(1 for h in c.hosts if h.ejected)))
        out.extend((m, label, v[field]) for m, field in _OUTLIER_COUNTERS)
    if c.health is not None:
        out.extend((m, label, c.health.get(field, 0)) for m, field in _HEALTH_COUNTERS)
        out.append((HC_HEALTHY, label, sum(1 for h in c.hosts if not h.hc_failed)))
    return out


def bucket_samples(b: BucketState) -> list[Sample]:
    label = {"route": b.route}
    return [(RL_ENABLED, label, b.allowed + b.limited), (RL_ENFORCED, label, b.limited),
            (RL_RATE_LIMITED, label, b.limited), (RL_OK, label, b.allowed)]


def samples(clusters: Iterable[ClusterState], buckets: Iterable[BucketState] = ()) -> list[Sample]:
    """Every governance sample, clusters and buckets in the order given."""
    out: list[Sample] = []
    for c in clusters:
        out.extend(cluster_samples(c))
    for b in buckets:
        out.extend(bucket_samples(b))
    return out


def _threshold(v: float) -> str:
    return str(int(v))


def clusters_text(clusters: Iterable[ClusterState]) -> str:
    """Envoy's admin /clusters text: `cluster::key::value` lines for each
    cluster's thresholds, then `cluster::host::stat::value` lines per host."""
    lines = []
    for c in clusters:
        n = c.name
        b = c.breakers
        lines.append(f"{n}::observability_name::{n}")
        lines.append(f"{n}::default_priority::max_connections::{_threshold(b['max_connections'])}")
        lines.append(f"{n}::default_priority::max_pending_requests::{_threshold(b['max_pending_requests'])}")
        lines.append(f"{n}::default_priority::max_requests::{_threshold(b['max_requests'])}")
        lines.append(f"{n}::default_priority::max_retries::{_threshold(b['max_retries'])}")
        lines.append(f"{n}::added_via_api::false")
        for h in c.hosts:
            prefix = f"{n}::{h.address}::"
            lines.append(f"{prefix}rq_active::{max(0, h.rq_active)}")
            lines.append(f"{prefix}rq_total::{h.rq_total}")
            lines.append(f"{prefix}health_flags::{h.health_flags}")
            lines.append(f"{prefix}weight::{h.weight}")
    return "".join(line + "\n" for line in lines)


def host_statuses(c: ClusterState) -> list[dict]:
    """The hosts of a cluster for /clusters?format=json."""
    return [{"address": h.address, "weight": h.weight, "health_flags": h.health_flags,
             "failed_active_health_check": h.hc_failed, "failed_outlier_check": h.ejected,
             "rq_active": max(0, h.rq_active), "rq_total": h.rq_total} for h in c.hosts]
