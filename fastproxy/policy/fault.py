"""Fault injection: Istio's HTTPFaultInjection. Pure.

    fault:
      delay:                                   # wait before forwarding the request
        fixedDelay: 1s
        percentage: {value: 10.0}              # of requests; 0..100
      abort:                                   # answer at once instead of forwarding
        httpStatus: 503
        percentage: {value: 10.0}

At least one of delay and abort. `percent: 10` (an integer, deprecated by
Istio) is accepted in place of percentage. With neither, the fault never
fires, as in Istio. When both fire, the delay comes first, then the abort
(Envoy's fault filter order). exponentialDelay, grpcStatus and http2Error
are not supported (refused with their path).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.schema import ConfigError
from . import REQUIRED, fields, integer, number
from .duration import parse_duration_ms


@dataclass(frozen=True, slots=True)
class Fault:
    """delay_ms 0: no delay; abort_status 0: no abort. Percents are 0..100."""
    delay_ms: int
    delay_percent: float
    abort_status: int
    abort_percent: float

    def draw(self, r_delay: float, r_abort: float) -> tuple[int, int]:
        """(delay ms or 0, abort status or 0) for two uniform draws in [0, 1):
        each fires when r * 100 < its percent."""
        delay = self.delay_ms if self.delay_ms and r_delay * 100.0 < self.delay_percent else 0
        abort = self.abort_status if self.abort_status and r_abort * 100.0 < self.abort_percent else 0
        return delay, abort


def _percent(doc: dict, where: str) -> float:
    """percentage.value, or the deprecated integer percent; 0 when neither."""
    if doc.get("percentage") is not None:
        if doc.get("percent") is not None:
            raise ConfigError(f"{where}.percent", "give percentage or the deprecated percent, not both")
        pw = f"{where}.percentage"
        return number(fields(doc["percentage"], pw, {"value"}), "value", pw, REQUIRED, 0, 100)
    return float(integer(doc, "percent", where, 0, 0, 100))


def parse_fault(doc: Any, where: str) -> Fault:
    fields(doc, where, {"delay", "abort"})
    if doc.get("delay") is None and doc.get("abort") is None:
        raise ConfigError(where, "delay or abort is required")
    delay_ms, delay_percent = 0, 0.0
    if doc.get("delay") is not None:
        dw = f"{where}.delay"
        d = doc["delay"]
        if isinstance(d, dict) and "exponentialDelay" in d:
            raise ConfigError(f"{dw}.exponentialDelay", "not supported (use fixedDelay)")
        fields(d, dw, {"fixedDelay", "percentage", "percent"})
        if d.get("fixedDelay") is None:
            raise ConfigError(f"{dw}.fixedDelay", "required field is missing")
        delay_ms = parse_duration_ms(d["fixedDelay"], f"{dw}.fixedDelay")
        delay_percent = _percent(d, dw)
    abort_status, abort_percent = 0, 0.0
    if doc.get("abort") is not None:
        aw = f"{where}.abort"
        a = doc["abort"]
        for key in ("grpcStatus", "http2Error"):
            if isinstance(a, dict) and key in a:
                raise ConfigError(f"{aw}.{key}", "not supported (use httpStatus)")
        fields(a, aw, {"httpStatus", "percentage", "percent"})
        abort_status = integer(a, "httpStatus", aw, REQUIRED, 200, 599)
        abort_percent = _percent(a, aw)
    return Fault(delay_ms, delay_percent, abort_status, abort_percent)
