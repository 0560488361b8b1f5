"""Access log lines from request records. Pure: records in, bytes out.

Two formats:

- text: Envoy's default format line,
      [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
      %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
      %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
      "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"
  (one line), with "-" for every absent value as Envoy writes it.
- json: one object per line with Istio's field names (JSON_FIELDS; the
  setting access_log_fields picks a subset). Numbers stay numbers, an absent
  value is null, response_flags is "-" when there are none (as Envoy's JSON
  formatter writes them).

What the record does not carry is absent: X-Forwarded-For (the engine does
not keep the request's header). route_name is the matched route's name, else
its VirtualService's, absent when no VirtualService route matched. A TCP connection's line has no method, path, protocol or status
(status 0, as Envoy logs its TCP proxy).

AccessLog.select() applies the filter (all, or errors: status >= 400 or any
response flag) and then the sampling percentage; AccessLog.lines() formats.
"""
from __future__ import annotations

import random
import time

import orjson

from .record import (
    AUTHORITY,
    BYTES_RECEIVED,
    BYTES_SENT,
    CLUSTER_BLOCK,
    DURATION_US,
    FLAGS,
    LISTENER_BLOCK,
    METHOD,
    ORIGINAL_DST,
    PATH,
    PEER,
    PROTOCOL,
    REQUEST_ID,
    ROUTE_NAME,
    SAMPLED,
    SPAN_ID,
    START_US,
    STATUS,
    TRACE_ID,
    UPSTREAM_HOST,
    UPSTREAM_US,
    USER_AGENT,
    BlockNames,
    response_flags,
)

FORMATS = ("text", "json")
FILTERS = ("all", "errors")


class _Clock:
    """Envoy's %START_TIME% (2024-05-01T12:34:56.789Z, UTC), the seconds part cached."""

    __slots__ = ("prefix", "second")

    def __init__(self):
        self.second = -1
        self.prefix = ""

    def text(self, us: int) -> str:
        s, rest = divmod(us, 1_000_000)
        if s != self.second:
            self.second = s
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        return f"{self.prefix}.{rest // 1000:03d}Z"


def _str(b: bytes) -> str | None:
    return b.decode("utf-8", "replace") if b else None


def _traceparent(r) -> str | None:
    trace = r[TRACE_ID]
    if not trace:
        return None
    return f"00-{trace.decode()}-{r[SPAN_ID].decode()}-{'01' if r[SAMPLED] else '00'}"


def _upstream_ms(r) -> str | None:
    us = r[UPSTREAM_US]
    return str(us // 1000) if us else None


# Istio's JSON access log fields (meshConfig.accessLogEncoding: JSON), in its
# order, then ours. Each getter takes (record, names, clock).
JSON_FIELDS = {
    "start_time": lambda r, n, c: c.text(r[START_US]),
    "route_name": lambda r, n, c: _str(r[ROUTE_NAME]),
    "method": lambda r, n, c: _str(r[METHOD]),
    "path": lambda r, n, c: _str(r[PATH]),
    "protocol": lambda r, n, c: _str(r[PROTOCOL]),
    "response_code": lambda r, n, c: r[STATUS],
    "response_flags": lambda r, n, c: response_flags(r[FLAGS]),
    "bytes_received": lambda r, n, c: r[BYTES_RECEIVED],
    "bytes_sent": lambda r, n, c: r[BYTES_SENT],
    "duration": lambda r, n, c: r[DURATION_US] // 1000,
    "upstream_service_time": lambda r, n, c: _upstream_ms(r),
    "x_forwarded_for": lambda r, n, c: None,
    "user_agent": lambda r, n, c: _str(r[USER_AGENT]),
    "request_id": lambda r, n, c: _str(r[REQUEST_ID]),
    "authority": lambda r, n, c: _str(r[AUTHORITY]),
    "upstream_host": lambda r, n, c: _str(r[UPSTREAM_HOST]),
    "upstream_cluster": lambda r, n, c: n.cluster(r[CLUSTER_BLOCK]),
    "downstream_local_address": lambda r, n, c: _str(r[ORIGINAL_DST]),
    "downstream_remote_address": lambda r, n, c: _str(r[PEER]),
    "listener_name": lambda r, n, c: n.listener(r[LISTENER_BLOCK]),
    "traceparent": lambda r, n, c: _traceparent(r),
}


def parse_fields(text: str) -> tuple[str, ...]:
    """access_log_fields ("a,b,c"; empty: all) -> field names. ValueError names an unknown one."""
    names = tuple(f.strip() for f in text.split(",") if f.strip())
    if not names:
        return tuple(JSON_FIELDS)
    unknown = [f for f in names if f not in JSON_FIELDS]
    if unknown:
        raise ValueError(f"unknown access_log_fields {', '.join(unknown)}; known: {', '.join(JSON_FIELDS)}")
    return names


class AccessLog:
    """The access log settings, compiled: which records are logged, and how."""

    __slots__ = ("clock", "errors_only", "fields", "format", "getters", "names", "rng", "sampling")

    def __init__(self, fmt: str = "text", fields: str = "", filter: str = "all", sampling: float = 100.0,
                 names: BlockNames | None = None, rng: random.Random | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"access_log_format must be one of {FORMATS}, got {fmt!r}")
        if filter not in FILTERS:
            raise ValueError(f"access_log_filter must be one of {FILTERS}, got {filter!r}")
        self.format = fmt
        self.fields = parse_fields(fields)
        self.getters = tuple((f, JSON_FIELDS[f]) for f in self.fields)
        self.errors_only = filter == "errors"
        self.sampling = float(sampling)
        self.rng = rng or random.Random()
        self.clock = _Clock()
        self.names = names or BlockNames()

    def select(self, records: list) -> list:
        """The records to log: the filter, then the sampling."""
        if self.errors_only:
            records = [r for r in records if r[STATUS] >= 400 or r[FLAGS]]
        if self.sampling >= 100.0:
            return records
        if self.sampling <= 0.0:
            return []
        rnd, pct = self.rng.random, self.sampling
        return [r for r in records if rnd() * 100.0 < pct]

    def lines(self, records: list) -> list[bytes]:
        """One line (newline-terminated bytes) per record."""
        if self.format == "json":
            return [self.json_line(r) for r in records]
        return [self.text_line(r) for r in records]

    def text_line(self, r) -> bytes:
        us = r[UPSTREAM_US]
        return (b'[%s] "%b %b %b" %d %s %d %d %d %b "-" "%b" "%b" "%b" "%b"\n' % (
            self.clock.text(r[START_US]).encode(), r[METHOD] or b"-", r[PATH] or b"-", r[PROTOCOL] or b"-",
            r[STATUS], response_flags(r[FLAGS]).encode(), r[BYTES_RECEIVED], r[BYTES_SENT],
            r[DURATION_US] // 1000, b"%d" % (us // 1000) if us else b"-", r[USER_AGENT] or b"-",
            r[REQUEST_ID] or b"-", r[AUTHORITY] or b"-", r[UPSTREAM_HOST] or b"-"))

    def json_line(self, r) -> bytes:
        names, clock = self.names, self.clock
        return orjson.dumps({f: get(r, names, clock) for f, get in self.getters},
                            option=orjson.OPT_APPEND_NEWLINE)
