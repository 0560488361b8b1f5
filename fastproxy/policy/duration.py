"""Durations as Istio writes them, in whole milliseconds. Pure.

Istio's VirtualService fields (timeout, perTryTimeout, fixedDelay, ...) are
protobuf Durations written as Go duration strings: a sequence of decimal
numbers, each with a unit, as "1.5s", "250ms", "1m30s", "2h", "100us".
Units: h, m, s, ms, us (or µs), ns. A bare "0" is zero.

The data path counts in milliseconds, so a duration is rounded up to the
next whole millisecond: "100us" is 1 ms, never 0 (which would mean "none").
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from ..config.schema import ConfigError
from . import UINT32_MAX

_NS_PER_UNIT = {"h": 3_600_000_000_000, "m": 60_000_000_000, "s": 1_000_000_000, "ms": 1_000_000,
                "us": 1_000, "µs": 1_000, "μs": 1_000, "ns": 1}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|μs|ns)")
_NS_PER_MS = 1_000_000


def parse_duration_ms(value: Any, where: str, allow_zero: bool = False) -> int:
    """value ("1.5s", "250ms", ...) in milliseconds, rounded up. It must be
    > 0, or >= 0 with allow_zero (where 0 means none), and at most
    2^32-1 ms (about 49 days: the C side holds milliseconds in 32 bits)."""
    if not isinstance(value, str):
        raise ConfigError(where, f"expected a duration such as \"1.5s\" or \"250ms\", got {value!r}")
    text = value.strip()
    if text == "0":
        ns = Fraction(0)
    else:
        ns = Fraction(0)
        pos = 0
        for m in _PART.finditer(text):
            if m.start() != pos:
                break
            ns += Fraction(m.group(1)) * _NS_PER_UNIT[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ConfigError(where, f"expected a duration such as \"1.5s\" or \"250ms\" "
                              f"(units h, m, s, ms, us, ns), got {value!r}")
    ms = -(-ns // _NS_PER_MS)  # ceiling
    if ms == 0 and not allow_zero:
        raise ConfigError(where, f"must be more than 0, got {value!r}")
    if ms > UINT32_MAX:
        raise ConfigError(where, f"must be at most {UINT32_MAX}ms, got {value!r}")
    return int(ms)

