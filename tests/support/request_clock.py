"""When each request reached an HttpUpstream, health checks kept apart.

Pass a RequestClock as HttpUpstream(on_record=...): the server calls it once
per request it read (after the body, before the answer). The times are
time.monotonic(), comparable with the load clients' own stamps.
"""
from __future__ import annotations

import bisect
import threading
import time


class RequestClock:
    def __init__(self, health_path: str = "/healthz"):
        self.health_path = health_path
        self._lock = threading.Lock()
        self.traffic: list[float] = []      # sorted: appended in arrival order
        self.health: list[float] = []

    def __call__(self, record: dict) -> None:
        now = time.monotonic()
        path = record["target"].split("?", 1)[0]
        with self._lock:
            (self.health if path == self.health_path else self.traffic).append(now)

    def count(self, since: float | None = None, until: float | None = None) -> int:
        """Traffic requests (not health checks) in [since, until)."""
        with self._lock:
            lo = 0 if since is None else bisect.bisect_left(self.traffic, since)
            hi = len(self.traffic) if until is None else bisect.bisect_left(self.traffic, until)
            return max(0, hi - lo)

    def last(self, until: float | None = None) -> float | None:
        """The latest traffic request before `until` (any, when None)."""
        with self._lock:
            hi = len(self.traffic) if until is None else bisect.bisect_left(self.traffic, until)
            return self.traffic[hi - 1] if hi else None

    def first(self, since: float) -> float | None:
        """The first traffic request at or after `since`."""
        with self._lock:
            i = bisect.bisect_left(self.traffic, since)
            return self.traffic[i] if i < len(self.traffic) else None

    def health_checks(self, since: float | None = None) -> int:
        with self._lock:
            return len(self.health) - (0 if since is None else bisect.bisect_left(self.health, since))
