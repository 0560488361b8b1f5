"""Circuit breakers: Envoy's cluster circuit_breakers (default priority). Pure.

    circuit_breakers:                        # every field optional
      max_connections: 4294967295            # upstream connections open, all workers together
      max_pending_requests: 4294967295       # requests waiting for a connection
      max_requests: 4294967295               # requests in flight
      max_retries: 4294967295                # retries in flight
      retry_budget: {budget_percent: 20.0, min_retry_concurrency: 3}   # absent: no budget

Istio sets every threshold to 2^32-1 (GV_UNLIMITED: no limit) unless a
DestinationRule says otherwise, so that is the default here. A retry
budget caps retries in flight at budget_percent of the requests in
flight, but always allows min_retry_concurrency (Envoy's defaults: 20%, 3).
The counts are shared by every worker (csrc/govern.h).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.schema import ConfigError
from . import UINT32_MAX, fields, integer, number

UNLIMITED = UINT32_MAX   # GV_UNLIMITED
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_MIN_RETRY_CONCURRENCY = 3

_THRESHOLDS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")


@dataclass(frozen=True, slots=True)
class Breakers:
    """Thresholds (UNLIMITED: none); budget_percent 0: no retry budget."""
    max_connections: int
    max_pending_requests: int
    max_requests: int
    max_retries: int
    budget_percent: float
    min_retry_concurrency: int

    def to_doc(self) -> dict:
        return {"max_connections": self.max_connections, "max_pending_requests": self.max_pending_requests,
                "max_requests": self.max_requests, "max_retries": self.max_retries,
                "budget_percent": self.budget_percent, "min_retry_concurrency": self.min_retry_concurrency}

    @classmethod
    def from_doc(cls, doc: dict) -> Breakers:
        return cls(doc["max_connections"], doc["max_pending_requests"], doc["max_requests"], doc["max_retries"],
                   float(doc["budget_percent"]), doc["min_retry_concurrency"])


ISTIO_DEFAULT = Breakers(UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED, 0.0, DEFAULT_MIN_RETRY_CONCURRENCY)


def parse_breakers(doc: Any, where: str) -> Breakers:
    """A cluster's circuit_breakers; None (absent) gives ISTIO_DEFAULT."""
    if doc is None:
        return ISTIO_DEFAULT
    fields(doc, where, {*_THRESHOLDS, "retry_budget"})
    limits = [integer(doc, key, where, UNLIMITED, 0, UINT32_MAX) for key in _THRESHOLDS]
    budget, min_concurrency = 0.0, DEFAULT_MIN_RETRY_CONCURRENCY
    if doc.get("retry_budget") is not None:
        bw = f"{where}.retry_budget"
        b = fields(doc["retry_budget"], bw, {"budget_percent", "min_retry_concurrency"})
        budget = number(b, "budget_percent", bw, DEFAULT_BUDGET_PERCENT, 0, 100)
        if budget == 0:
            # 0 would read as "no budget" downstream; Envoy's 0% means "min_retry_concurrency only".
            raise ConfigError(f"{bw}.budget_percent", "must be more than 0 (leave retry_budget out for no budget)")
        min_concurrency = integer(b, "min_retry_concurrency", bw, DEFAULT_MIN_RETRY_CONCURRENCY, 0, UINT32_MAX)
    return Breakers(*limits, budget, min_concurrency)


def engine_args(breakers: Breakers, outlier, nhosts: int) -> dict:
    """Keyword arguments of the engine's per-cluster config (govern.ClusterCfg,
    csrc/govern.h gv_cluster_cfg): the breakers, the outlier detection
    (policy.outlier.OutlierDetection, None: off) and the cluster's size."""
    od = outlier
    return {
        "max_connections": breakers.max_connections, "max_pending_requests": breakers.max_pending_requests,
        "max_requests": breakers.max_requests, "max_retries": breakers.max_retries,
        "budget_percent": breakers.budget_percent, "min_retry_concurrency": breakers.min_retry_concurrency,
        "od_enabled": od is not None,
        "consecutive_5xx": od.consecutive_5xx if od else 0,
        "consecutive_gateway_failure": od.consecutive_gateway_failure if od else 0,
        "base_ejection_ms": od.base_ejection_time_ms if od else 0,
        "max_ejection_ms": od.max_ejection_time_ms if od else 0,
        "max_ejection_percent": od.max_ejection_percent if od else 0,
        "nhosts": nhosts,
    }
