"""Traffic-governance policy: pure decisions and the config objects they use.

    duration.py    Istio/protobuf durations ("1.5s", "250ms") -> milliseconds
    retry.py       RetryPolicy (Istio HTTPRetry; Envoy's retry_on bits)
    fault.py       Fault (Istio HTTPFaultInjection: delay and abort)
    ratelimit.py   TokenBucket (Envoy's local rate limit)
    breakers.py    Breakers (Envoy circuit_breakers, Istio's defaults)
    outlier.py     OutlierDetection (Envoy outlier_detection)
    health.py      HealthCheck and HealthState (Envoy health_checks)
    lb.py          load balancers

Each parse_*(doc, where) validates one config document and raises
ConfigError naming the field (where is the document's own path, e.g.
clusters[1].outlier_detection). Nothing here does I/O.

This module holds the field readers those parsers share, so every policy
error is worded the same way as the loader's (config/load.py). A field
given as null reads as absent, as it does in the loader.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.schema import ConfigError

# default= value of a field that must be given
REQUIRED: Any = object()

UINT32_MAX = 0xFFFFFFFF


def kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def fields(doc: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    """doc, checked to be a mapping with no key outside allowed."""
    if not isinstance(doc, Mapping):
        raise ConfigError(where, f"expected a mapping, got {kind(doc)}")
    for k in doc:
        if k not in allowed:
            raise ConfigError(f"{where}.{k}", f"unknown field (expected one of: {', '.join(sorted(allowed))})")
    return doc


def _absent(doc: Mapping[str, Any], key: str, where: str, default: Any) -> bool:
    """True when the field is not given (missing or null) and has a default."""
    if doc.get(key) is not None:
        return False
    if default is REQUIRED:
        raise ConfigError(f"{where}.{key}", "required field is missing")
    return True


def integer(doc: Mapping[str, Any], key: str, where: str, default: Any, lo: int, hi: int) -> int:
    if _absent(doc, key, where, default):
        return default
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{where}.{key}", f"expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{where}.{key}", f"must be between {lo} and {hi}, got {v}")
    return v


def number(doc: Mapping[str, Any], key: str, where: str, default: Any, lo: float, hi: float) -> float:
    """An int or a float, as a float."""
    if _absent(doc, key, where, default):
        return default
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{where}.{key}", f"expected a number, got {v!r}")
    if not lo <= v <= hi:  # NaN fails this too
        raise ConfigError(f"{where}.{key}", f"must be between {lo:g} and {hi:g}, got {v!r}")
    return float(v)


def boolean(doc: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    if _absent(doc, key, where, default):
        return default
    v = doc[key]
    if not isinstance(v, bool):
        raise ConfigError(f"{where}.{key}", f"expected true or false, got {v!r}")
    return v


def string(doc: Mapping[str, Any], key: str, where: str, default: Any = REQUIRED) -> str:
    """A non-empty string."""
    if _absent(doc, key, where, default):
        return default
    v = doc[key]
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}.{key}", f"expected a non-empty string, got {v!r}")
    return v
