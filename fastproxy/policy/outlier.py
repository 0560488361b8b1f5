"""Outlier detection: Envoy's cluster outlier_detection (passive health). Pure.

    outlier_detection:                 # absent: none. Every field optional (Envoy's defaults):
      consecutive_5xx: 5               # 5xx in a row (local-origin failures count) ejects; 0: off
      consecutive_gateway_failure: 5   # 502/503/504 or local-origin failures in a row ejects; 0: off
      interval_ms: 10000               # how often ejections are reviewed (un-ejection)
      base_ejection_time_ms: 30000     # an ejection lasts this times the host's ejection count
      max_ejection_time_ms: 300000     # ... but no longer than this
      max_ejection_percent: 10         # of the cluster's hosts (one is always allowed)

As Envoy: a missing max_ejection_time_ms is the larger of 300 s and
base_ejection_time_ms; a given one must not be below the base. The
decisions themselves are csrc/govern.h gv_outlier_report / gv_uneject_due.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.schema import ConfigError
from . import UINT32_MAX, fields, integer

_KEYS = ("consecutive_5xx", "consecutive_gateway_failure", "interval_ms", "base_ejection_time_ms",
         "max_ejection_time_ms", "max_ejection_percent")
DEFAULT_MAX_EJECTION_TIME_MS = 300_000


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    interval_ms: int = 10_000
    base_ejection_time_ms: int = 30_000
    max_ejection_time_ms: int = DEFAULT_MAX_EJECTION_TIME_MS
    max_ejection_percent: int = 10

    def to_doc(self) -> dict:
        return {k: getattr(self, k) for k in _KEYS}

    @classmethod
    def from_doc(cls, doc: dict) -> OutlierDetection:
        return cls(**{k: doc[k] for k in _KEYS})


def parse_outlier(doc: Any, where: str) -> OutlierDetection:
    fields(doc, where, set(_KEYS))
    d = OutlierDetection()
    base = integer(doc, "base_ejection_time_ms", where, d.base_ejection_time_ms, 1, UINT32_MAX)
    max_time = integer(doc, "max_ejection_time_ms", where, None, 1, UINT32_MAX)
    if max_time is None:
        max_time = max(DEFAULT_MAX_EJECTION_TIME_MS, base)
    elif max_time < base:
        raise ConfigError(f"{where}.max_ejection_time_ms",
                          f"must not be less than base_ejection_time_ms ({base}), got {max_time}")
    return OutlierDetection(
        consecutive_5xx=integer(doc, "consecutive_5xx", where, d.consecutive_5xx, 0, UINT32_MAX),
        consecutive_gateway_failure=integer(doc, "consecutive_gateway_failure", where,
                                            d.consecutive_gateway_failure, 0, UINT32_MAX),
        interval_ms=integer(doc, "interval_ms", where, d.interval_ms, 1, UINT32_MAX),
        base_ejection_time_ms=base,
        max_ejection_time_ms=max_time,
        max_ejection_percent=integer(doc, "max_ejection_percent", where, d.max_ejection_percent, 0, 100))
