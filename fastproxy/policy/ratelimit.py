"""Local rate limits: Envoy's local_ratelimit token bucket. Pure.

    localRateLimit:          # on a route, or at the top of a VirtualService spec
      maxTokens: 100         # the bucket's size; it starts full. 1..16777215
      tokensPerFill: 100     # added at each fill (up to maxTokens); default 1, as Envoy
      fillInterval: 1s       # a duration, >= 1ms

Each request takes one token or is refused (429, flag RL). The bucket is
shared by every worker (csrc/govern.h gv_bucket_take); its state packs
the tokens in 24 bits, hence the limit on maxTokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.schema import ConfigError
from . import REQUIRED, fields, integer
from .duration import parse_duration_ms

MAX_TOKENS = (1 << 24) - 1


@dataclass(frozen=True, slots=True)
class TokenBucket:
    max_tokens: int
    tokens_per_fill: int
    fill_interval_ms: int


def parse_token_bucket(doc: Any, where: str) -> TokenBucket:
    fields(doc, where, {"maxTokens", "tokensPerFill", "fillInterval"})
    max_tokens = integer(doc, "maxTokens", where, REQUIRED, 1, MAX_TOKENS)
    per_fill = integer(doc, "tokensPerFill", where, 1, 1, MAX_TOKENS)
    if doc.get("fillInterval") is None:
        raise ConfigError(f"{where}.fillInterval", "required field is missing")
    interval = parse_duration_ms(doc["fillInterval"], f"{where}.fillInterval")
    return TokenBucket(max_tokens, per_fill, interval)
