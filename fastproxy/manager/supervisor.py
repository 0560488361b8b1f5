"""Spawns the workers, restarts a dead one at once, stops them on drain.

A worker that dies unplanned loses its in-flight connections (the one loss
we accept). Before its replacement starts, the dead worker's open-connection
gauges are reconciled (closed := opened) so /stats stays truthful.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from ..stats.names import (
    CLUSTER_OPEN_CLOSE_PAIRS,
    KEY_TCP,
    OPEN_CLOSE_PAIRS,
    SERIES_WIDTH,
    T_CLOSED,
    T_OPENED,
)

log = logging.getLogger("fastproxy.manager")

EX_CONFIG = 78
CRASH_WINDOW_S = 10.0
CRASH_LIMIT = 5          # more deaths than this within the window: back off
BACKOFF_S = 1.0


@dataclass
class WorkerSlot:
    id: int
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    deaths: list[float] = field(default_factory=list)
    exit_code: int | None = None


class Supervisor:
    def __init__(self, publisher, nworkers: int, log_level: str, on_fatal):
        self.publisher = publisher
        self.slots = [WorkerSlot(i) for i in range(nworkers)]
        self.log_level = log_level
        self.on_fatal = on_fatal     # called with a message when the workers cannot run at all
        self.stopping = False
        self.restarts_total = 0
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        for slot in self.slots:
            await self._spawn(slot)
            self.tasks.append(asyncio.ensure_future(self._watch(slot)))

    async def _spawn(self, slot: WorkerSlot) -> None:
        p = self.publisher
        slot.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastproxy.worker", "--id", str(slot.id), "--table", p.table_name,
            "--counters", p.counters_name, "--govern", p.govern_name, "--log-level", self.log_level,
            "--parent", str(os.getpid()),
            stdin=asyncio.subprocess.DEVNULL)
        p.counters.set_worker_info(slot.id, pid=slot.proc.pid, applied_generation=0, draining=0)

    async def _watch(self, slot: WorkerSlot) -> None:
        while True:
            code = await slot.proc.wait()
            slot.exit_code = code
            counters = self.publisher.counters
            counters.set_worker_info(slot.id, pid=0, applied_generation=0)
            if self.stopping:
                return
            if code == EX_CONFIG and slot.restarts == 0 and slot.proc is not None:
                self.on_fatal(f"worker {slot.id} could not bind its listeners (see its log above)")
                return
            log.warning("worker %d (pid %d) exited with %s; restarting", slot.id, slot.proc.pid, _describe(code))
            self._reconcile(slot.id)
            now = time.monotonic()
            slot.deaths = [t for t in slot.deaths if now - t < CRASH_WINDOW_S] + [now]
            if len(slot.deaths) > CRASH_LIMIT:
                await asyncio.sleep(BACKOFF_S)
                if self.stopping:
                    return
            slot.restarts += 1
            self.restarts_total += 1
            await self._spawn(slot)

    def _reconcile(self, worker: int) -> None:
        """The dead worker's connections are gone: mark them closed in its region."""
        view = self.publisher.counters.view(worker)
        for (kind, _), base in self.publisher.slots.blocks.items():
            pairs = OPEN_CLOSE_PAIRS if kind == "listener" else CLUSTER_OPEN_CLOSE_PAIRS
            for opened, closed in pairs:
                view.set(base + closed, view.get(base + opened))
        # and its Istio TCP series: istio_tcp_connections_closed catches up with opened
        area, nmax = self.publisher.series
        for i, s in enumerate(view.series(area, nmax, SERIES_WIDTH)):
            if s[0] & KEY_TCP:
                view.set(area + i * SERIES_WIDTH + T_CLOSED, s[T_OPENED])
        # and what it held of the shared breaker and endpoint counts
        undone = self.publisher.govern.reclaim(view.address + 8 * self.publisher.ledger)
        if undone:
            log.warning("worker %d held %d circuit-breaker/endpoint counts; released", worker, undone)

    def alive(self) -> list[WorkerSlot]:
        return [s for s in self.slots if s.proc is not None and s.proc.returncode is None]

    def signal_all(self, sig: int) -> None:
        for s in self.alive():
            try:
                s.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float) -> None:
        """Drains every worker (SIGTERM), then kills what is left after timeout."""
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        procs = [s.proc for s in self.slots if s.proc is not None]
        if procs:
            done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=timeout)
            for s in self.alive():
                log.warning("worker %d did not drain in time; killing it", s.id)
                s.proc.kill()
            for p in procs:
                await p.wait()
        for t in self.tasks:
            t.cancel()

    def describe(self) -> list[dict]:
        out = []
        for s in self.slots:
            info = self.publisher.counters.worker_info(s.id)
            out.append({"id": s.id, "pid": s.proc.pid if s.proc else 0,
                        "alive": s.proc is not None and s.proc.returncode is None,
                        "applied_generation": info["applied_generation"], "draining": bool(info["draining"]),
                        "restarts": s.restarts})
        return out


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
