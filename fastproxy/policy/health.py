"""Active health checks: Envoy's cluster health_checks (one per cluster). Pure.

    health_checks:                   # 0 or 1 entries; every field but the kind has a default
      - timeout_ms: 1000             # a check with no verdict by then failed
        interval_ms: 5000            # time between checks of one endpoint
        healthy_threshold: 2         # passes in a row that make an unhealthy endpoint healthy
        unhealthy_threshold: 3       # failures in a row that make a healthy endpoint unhealthy
        http_health_check:           # GET path; passes when the status is expected
          path: /healthz
          host: optional-host        # Host header (default: the caller's, e.g. the cluster name)
          expected_statuses: [{start: 200, end: 400}]   # [start, end) ranges; default 200 only
        # or tcp_health_check: {}    # passes when the connection opens

The manager runs the checks (I/O) and publishes verdicts through the
governance segment; this module is the config, the request bytes and the
threshold logic (HealthState).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config.schema import ConfigError
from . import REQUIRED, UINT32_MAX, fields, integer, kind, string

HTTP = "http"
TCP = "tcp"

_PATH = re.compile(r"/[\x21-\x7e]*")
_AUTHORITY = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+")
_DEFAULT_EXPECTED = ((200, 201),)
_KEYS = {"timeout_ms", "interval_ms", "healthy_threshold", "unhealthy_threshold", "http_health_check",
         "tcp_health_check"}


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """kind HTTP or TCP; path, host and expected are for HTTP (host None:
    the caller's default). expected: [start, end) status ranges."""
    kind: str
    interval_ms: int
    timeout_ms: int
    healthy_threshold: int
    unhealthy_threshold: int
    path: bytes = b""
    host: bytes | None = None
    expected: tuple[tuple[int, int], ...] = _DEFAULT_EXPECTED

    def request(self, default_host: str) -> bytes:
        """The HTTP/1.1 request an HTTP check sends (b"" for TCP: it only connects)."""
        if self.kind != HTTP:
            return b""
        host = self.host if self.host is not None else default_host.encode()
        return b"".join((b"GET ", self.path, b" HTTP/1.1\r\nHost: ", host,
                         b"\r\nUser-Agent: fastproxy-health\r\nConnection: close\r\n\r\n"))

    def passes(self, status: int) -> bool:
        """Whether an HTTP check answered with status passed."""
        return any(start <= status < end for start, end in self.expected)

    def to_doc(self) -> dict:
        return {"kind": self.kind, "interval_ms": self.interval_ms, "timeout_ms": self.timeout_ms,
                "healthy_threshold": self.healthy_threshold, "unhealthy_threshold": self.unhealthy_threshold,
                "path": self.path.decode("ascii"), "host": None if self.host is None else self.host.decode("ascii"),
                "expected": [[s, e] for s, e in self.expected]}

    @classmethod
    def from_doc(cls, doc: dict) -> HealthCheck:
        host = doc["host"]
        return cls(doc["kind"], doc["interval_ms"], doc["timeout_ms"], doc["healthy_threshold"],
                   doc["unhealthy_threshold"], doc["path"].encode("ascii"),
                   None if host is None else host.encode("ascii"),
                   tuple((s, e) for s, e in doc["expected"]))


class HealthState:
    """One endpoint's verdict under a HealthCheck. It starts healthy;
    unhealthy_threshold failures in a row make it unhealthy, then
    healthy_threshold passes in a row make it healthy again."""

    __slots__ = ("healthy", "healthy_threshold", "unhealthy_threshold", "streak")

    def __init__(self, check: HealthCheck):
        self.healthy = True
        self.healthy_threshold = check.healthy_threshold
        self.unhealthy_threshold = check.unhealthy_threshold
        self.streak = 0   # results in a row that disagree with `healthy`

    def observe(self, ok: bool) -> bool:
        """Takes one check's result; True when `healthy` flipped."""
        if ok == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < (self.healthy_threshold if ok else self.unhealthy_threshold):
            return False
        self.healthy = ok
        self.streak = 0
        return True

    def __repr__(self) -> str:
        return f"HealthState(healthy={self.healthy}, streak={self.streak})"


def parse_health_checks(doc: Any, where: str) -> HealthCheck | None:
    """A cluster's health_checks list (where: its path): the check, or None."""
    if doc is None:
        return None
    if not isinstance(doc, list):
        raise ConfigError(where, f"expected a list, got {kind(doc)}")
    if not doc:
        return None
    if len(doc) > 1:
        raise ConfigError(f"{where}[1]", "at most one health check per cluster")
    hw = f"{where}[0]"
    h = fields(doc[0], hw, _KEYS)
    kinds = [k for k in ("http_health_check", "tcp_health_check") if k in h]
    if len(kinds) != 1:
        raise ConfigError(hw, "exactly one of http_health_check, tcp_health_check is required"
                          + (" (got both)" if kinds else ""))
    timing = (integer(h, "interval_ms", hw, 5000, 1, UINT32_MAX), integer(h, "timeout_ms", hw, 1000, 1, UINT32_MAX),
              integer(h, "healthy_threshold", hw, 2, 1, UINT32_MAX),
              integer(h, "unhealthy_threshold", hw, 3, 1, UINT32_MAX))
    if kinds[0] == "tcp_health_check":
        tcp = h["tcp_health_check"]
        fields({} if tcp is None else tcp, f"{hw}.tcp_health_check", set())
        return HealthCheck(TCP, *timing)
    return HealthCheck(HTTP, *timing, *_http(h["http_health_check"], f"{hw}.http_health_check"))


def _http(doc: Any, where: str) -> tuple[bytes, bytes | None, tuple[tuple[int, int], ...]]:
    fields(doc, where, {"path", "host", "expected_statuses"})
    path = string(doc, "path", where, REQUIRED)
    if not _PATH.fullmatch(path) or "#" in path:
        raise ConfigError(f"{where}.path", f"expected a path starting with '/' (printable ASCII, no space or '#'), "
                          f"got {path!r}")
    host = string(doc, "host", where, None)
    if host is not None and not _AUTHORITY.fullmatch(host):
        raise ConfigError(f"{where}.host", f"invalid host {host!r}")
    expected = _DEFAULT_EXPECTED
    statuses = doc.get("expected_statuses")
    if statuses is not None:
        sw = f"{where}.expected_statuses"
        if not isinstance(statuses, list) or not statuses:
            raise ConfigError(sw, f"expected a non-empty list of {{start, end}} ranges, got {statuses!r}")
        ranges = []
        for i, r in enumerate(statuses):
            rw = f"{sw}[{i}]"
            fields(r, rw, {"start", "end"})
            start = integer(r, "start", rw, REQUIRED, 100, 599)
            end = integer(r, "end", rw, REQUIRED, 101, 600)
            if end <= start:
                raise ConfigError(f"{rw}.end", f"must be more than start ({start}): the range is [start, end)")
            ranges.append((start, end))
        expected = tuple(ranges)
    return path.encode(), None if host is None else host.encode(), expected
