"""Retry policy: Istio's HTTPRetry, as Envoy's retry_on bits. Pure.

A route's `retries` (Istio semantics, as pilot translates them for Envoy):

    retries:                        # absent: ISTIO_DEFAULT below
      attempts: 3                   # retries after the first try; 0 disables retries
      perTryTimeout: 500ms          # each try's own limit (absent: the route timeout alone)
      retryOn: "5xx,reset,503"      # conditions, comma-separated; absent: Istio's default ones
      backoff: 25ms                 # base of Envoy's jittered backoff (max: 10x base; Istio 1.26)
      retryRemoteLocalities: false  # accepted, ignored: one locality
      retryNonIdempotent: false     # fastproxy: also retry requests the upstream may have acted on

retryOn values are Envoy's x-envoy-retry-on names. A number N means
"retriable-status-codes" with N added to the codes. gRPC conditions
(cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)
are accepted and do nothing for HTTP/1, so Istio's own default passes.
When retryOn is given it replaces the default conditions and codes
entirely; when absent the default ones stay (Istio's ConvertPolicy).

The RETRY_* bits equal csrc/govern.h GV_RETRY_* (a test checks it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.schema import ConfigError
from . import UINT32_MAX, boolean, fields, integer
from .duration import parse_duration_ms

RETRY_5XX = 0x01              # any 5xx, a reset, a connect failure, a per-try timeout
RETRY_GATEWAY_ERROR = 0x02    # 502, 503, 504, a per-try timeout
RETRY_RESET = 0x04            # closed or reset before a response head
RETRY_CONNECT_FAILURE = 0x08
RETRY_REFUSED_STREAM = 0x10   # HTTP/2 REFUSED_STREAM (nothing yet for HTTP/1)
RETRY_RETRIABLE_4XX = 0x20    # 409
RETRY_STATUS_CODES = 0x40     # the status is one of `codes`

MAX_RETRIABLE_CODES = 8       # GV_MAX_RETRIABLE_CODES

RETRY_ON = {
    "5xx": RETRY_5XX,
    "gateway-error": RETRY_GATEWAY_ERROR,
    "reset": RETRY_RESET,
    "connect-failure": RETRY_CONNECT_FAILURE,
    "refused-stream": RETRY_REFUSED_STREAM,
    "retriable-4xx": RETRY_RETRIABLE_4XX,
    "retriable-status-codes": RETRY_STATUS_CODES,
}
# gRPC status conditions: nothing to do for HTTP/1 responses.
GRPC_RETRY_ON = frozenset({"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"})
# Envoy conditions this proxy does not implement: refused rather than ignored.
_UNSUPPORTED_RETRY_ON = frozenset({"reset-before-request", "envoy-ratelimited", "retriable-headers",
                                   "http3-post-connect-failure"})

_KEYS = {"attempts", "perTryTimeout", "retryOn", "backoff", "retryRemoteLocalities", "retryNonIdempotent"}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retries (csrc/govern.h gv_retry). num_retries: Istio's
    attempts; retry_on: RETRY_* bits; per_try_timeout_ms 0: none; codes: the
    statuses RETRY_STATUS_CODES covers; non_idempotent: also retry requests
    whose method is not idempotent once the upstream may have received them.
    Backoff between tries is Envoy's: jittered, base 25 ms, max 250 ms."""
    num_retries: int
    retry_on: int
    per_try_timeout_ms: int
    codes: tuple[int, ...]
    non_idempotent: bool
    backoff_base_ms: int = 25
    backoff_max_ms: int = 250


# Istio's retry policy for routes that say nothing: "connect-failure,
# refused-stream,unavailable,cancelled,retriable-status-codes" with 503.
ISTIO_DEFAULT = RetryPolicy(num_retries=2, retry_on=RETRY_CONNECT_FAILURE | RETRY_REFUSED_STREAM | RETRY_STATUS_CODES,
                            per_try_timeout_ms=0, codes=(503,), non_idempotent=False)


def parse_retry_on(value: Any, where: str) -> tuple[int, tuple[int, ...]]:
    """(RETRY_* bits, codes) of a retryOn string."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"expected a comma-separated list of retry conditions, got {value!r}")
    bits = 0
    codes: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(where, f"empty item in {value!r}")
        if part.isdigit():
            code = int(part)
            if not 100 <= code <= 599:
                raise ConfigError(where, f"status code {part} is not in 100..599")
            bits |= RETRY_STATUS_CODES
            if code not in codes:
                codes.append(code)
        elif part in RETRY_ON:
            bits |= RETRY_ON[part]
        elif part in _UNSUPPORTED_RETRY_ON:
            raise ConfigError(where, f"{part!r} is not supported yet")
        elif part not in GRPC_RETRY_ON:
            known = ", ".join([*RETRY_ON, *sorted(GRPC_RETRY_ON)])
            raise ConfigError(where, f"unknown retry condition {part!r} (expected status codes or: {known})")
    if len(codes) > MAX_RETRIABLE_CODES:
        raise ConfigError(where, f"at most {MAX_RETRIABLE_CODES} status codes, got {len(codes)}")
    return bits, tuple(codes)


def parse_retries(doc: Any, where: str) -> RetryPolicy | None:
    """A route's `retries`: the policy, or None when attempts is 0 (no retries).
    attempts is required: Istio reads a missing one as 0, which disables
    retries, so a policy without it would silently do nothing."""
    if isinstance(doc, dict) and "retryIgnorePreviousHosts" in doc:
        raise ConfigError(f"{where}.retryIgnorePreviousHosts", "not supported yet")
    fields(doc, where, _KEYS)
    if doc.get("attempts") is None:
        raise ConfigError(f"{where}.attempts", "required field is missing (write attempts: 0 to disable retries)")
    attempts = integer(doc, "attempts", where, None, 0, 2**31 - 1)
    if attempts == 0:
        return None
    retry_on, codes = ISTIO_DEFAULT.retry_on, ISTIO_DEFAULT.codes
    if doc.get("retryOn") is not None:
        retry_on, codes = parse_retry_on(doc["retryOn"], f"{where}.retryOn")
    per_try = 0
    if doc.get("perTryTimeout") is not None:
        per_try = parse_duration_ms(doc["perTryTimeout"], f"{where}.perTryTimeout")
    base, cap = ISTIO_DEFAULT.backoff_base_ms, ISTIO_DEFAULT.backoff_max_ms
    if doc.get("backoff") is not None:
        base = parse_duration_ms(doc["backoff"], f"{where}.backoff")
        cap = min(base * 10, UINT32_MAX)  # Envoy's max_interval default
    boolean(doc, "retryRemoteLocalities", where, False)
    return RetryPolicy(num_retries=attempts, retry_on=retry_on, per_try_timeout_ms=per_try, codes=codes,
                       non_idempotent=boolean(doc, "retryNonIdempotent", where, False),
                       backoff_base_ms=base, backoff_max_ms=cap)
