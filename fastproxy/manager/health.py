"""Active health checks, run by the manager on its event loop.

For every cluster of the published table with a health check, every
endpoint is checked every interval_ms (the first check within a short,
random delay after it appears, so that a large cluster's checks spread):
- tcp_health_check: connect within timeout_ms;
- http_health_check: connect, send HealthCheck.request(), read the status
  line, all within timeout_ms; it passes when HealthCheck.passes(status).
policy.health.HealthState applies the thresholds; when an endpoint's
verdict flips, GovernSegment.set_health() publishes it to every worker
(the cluster's version moves, workers re-read availability).

Checks leave from the manager, which runs with the proxy's identity: the
interception rules exclude its traffic, so a check reaches the endpoint
itself and is never captured.

A new table generation is reconciled: checks start for new endpoints (or
clusters newly checked), stop for removed ones (their verdict is cleared:
an endpoint no check covers is not held unhealthy), and an unchanged
(cluster, ip, port) keeps its state and schedule even if the check changed.

Per cluster, counts as Envoy's cluster.<name>.health_check.*: attempt,
success, failure (network failures included), network_failure.
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

from ..config.schema import hostport
from ..policy.health import HealthCheck, HealthState

log = logging.getLogger("fastproxy.manager")

FIRST_CHECK_SPREAD_MS = 100   # the first check of an endpoint: within this (or interval_ms if less)
MAX_STATUS_LINE = 8192


def parse_status_line(line: bytes) -> int | None:
    """The status code of an HTTP/1.x status line, or None if it is not one."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


async def probe(ip: str, port: int, check: HealthCheck, default_host: str) -> tuple[bool, bool]:
    """One check of ip:port: (passed, network failure). A network failure is
    a connect error, a reset or close before the status line, or the timeout."""
    writer = None
    try:
        async with asyncio.timeout(check.timeout_ms / 1000):
            reader, writer = await asyncio.open_connection(ip, port, limit=MAX_STATUS_LINE)
            if check.kind == "tcp":
                return True, False
            writer.write(check.request(default_host))
            line = await reader.readline()
    except (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError):
        return False, True
    finally:
        if writer is not None:
            writer.close()
    status = parse_status_line(line)
    if status is None:
        return False, not line          # nothing at all: closed before answering
    return check.passes(status), False


def _counts() -> dict[str, int]:
    return {"attempt": 0, "success": 0, "failure": 0, "network_failure": 0}


@dataclass
class _Target:
    cluster: str
    cluster_slot: int
    ep_slot: int
    ip: str
    port: int
    check: HealthCheck
    state: HealthState
    task: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return hostport(self.ip, self.port)


@dataclass
class HealthChecker:
    segment: object                         # GovernSegment: set_health(cluster_slot, ep_slot, healthy)
    probe: object = probe                   # tests may pass their own
    targets: dict[tuple[str, str, int], _Target] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def counts_of(self, cluster: str) -> dict[str, int]:
        return self.counts.get(cluster) or _counts()

    def apply(self, doc: dict) -> None:
        """Reconciles the running checks with a newly published table."""
        wanted: dict[tuple[str, str, int], tuple[int, int, HealthCheck]] = {}
        for name, c in doc["clusters"].items():
            hc = c.get("health_check")
            if hc is None:
                continue
            check = HealthCheck.from_doc(hc)
            for ip, port, _weight, ep in c["endpoints"]:
                wanted[(name, ip, port)] = (c["slot"], ep, check)
        for key in [k for k in self.targets if k not in wanted]:
            self._stop(self.targets.pop(key), clear=True)
        for key, (cslot, ep, check) in wanted.items():
            t = self.targets.get(key)
            if t is None:
                t = _Target(key[0], cslot, ep, key[1], key[2], check, HealthState(check))
                self.targets[key] = t
                # Starts healthy, as HealthState does: clear a verdict left from an earlier life of the slot.
                self.segment.set_health(cslot, ep, True)
                t.task = asyncio.ensure_future(self._run(t))
            elif t.check != check:
                # New thresholds and timing; the verdict stays (the streak restarts).
                state = HealthState(check)
                state.healthy = t.state.healthy
                t.check, t.state = check, state

    def _stop(self, t: _Target, clear: bool) -> None:
        if t.task is not None:
            t.task.cancel()
        if clear and not t.state.healthy:
            self.segment.set_health(t.cluster_slot, t.ep_slot, True)

    async def close(self) -> None:
        """Stops every check (the segment is left as it is: it is going away)."""
        tasks = [t.task for t in self.targets.values() if t.task is not None]
        for t in self.targets.values():
            self._stop(t, clear=False)
        self.targets.clear()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, t: _Target) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0, min(t.check.interval_ms, FIRST_CHECK_SPREAD_MS)) / 1000)
        while True:
            started = loop.time()
            try:
                passed, network = await self.probe(t.ip, t.port, t.check, t.cluster)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a check must not end the checks of this endpoint
                log.exception("health check of %s in cluster %s failed", t.address, t.cluster)
                passed, network = False, False
            self.record(t, passed, network)
            await asyncio.sleep(max(0.0, started + t.check.interval_ms / 1000 - loop.time()))

    def record(self, t: _Target, passed: bool, network: bool) -> None:
        """One check's result: the counts, and the verdict when it flips."""
        c = self.counts.setdefault(t.cluster, _counts())
        c["attempt"] += 1
        if passed:
            c["success"] += 1
        else:
            c["failure"] += 1
            if network:
                c["network_failure"] += 1
        if t.state.observe(passed):
            self.segment.set_health(t.cluster_slot, t.ep_slot, t.state.healthy)
            log.warning("health check: %s in cluster %s is now %s", t.address, t.cluster,
                        "healthy" if t.state.healthy else "unhealthy")
