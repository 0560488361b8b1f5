"""A worker process: one uvloop loop, its own SO_REUSEPORT listeners, the HTTP and L4 paths.

Started by the manager as `python -m fastproxy.worker --id N --table NAME
--counters NAME --govern NAME`. It reads the routing table from shared
memory, binds the table's listeners, records the generation it applied in
its counter region (the manager's readiness reads it), and picks up every
new generation without restarting: on the next connection or within one
tick. It maps the governance segment (breakers, ejections, health, rate
limits) read-write as `Worker.govern`, for the HTTP path.

Exit codes: 0 after a drain, 78 (EX_CONFIG) when the first table's listeners
cannot be bound, 1 on an unexpected error.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import resource
import signal
import sys

import uvloop

from .._native.govern import GovernSegment
from .._native.shm import CounterSegment, TableReader
from ..routing.table import RouteTable
from ..stats.names import G_LOOP_LAG_US
from .http import HttpPath
from .listeners import ListenerSet
from .tcp import L4Path

log = logging.getLogger("fastproxy.worker")

TICK_S = 0.05          # table/listener check and heartbeat period
EX_CONFIG = 78
_PR_SET_PDEATHSIG = 1


class Worker:
    def __init__(self, loop, worker_id: int, table_name: str, counters_name: str, govern_name: str):
        self.loop = loop
        self.id = worker_id
        self.reader = TableReader(table_name)
        self.segment = CounterSegment(counters_name)
        self.view = self.segment.view(worker_id)
        # Breakers, ejections, health and rate limits, shared with every worker (csrc/govern.h).
        self.govern = GovernSegment(govern_name)
        self.table: RouteTable | None = None
        self.generation = 0
        self.listeners = ListenerSet(loop, self._on_accept)
        self.l4: L4Path | None = None       # built once the first table gives the pipe size
        self.http: HttpPath | None = None   # likewise (buffer and pool sizes)
        self.stopping = False
        self.done = loop.create_future()
        self.last_sweep = 0.0
        self.next_tick = 0.0                # when the tick was due: its lateness is the loop's lag

    def current(self) -> RouteTable:
        """The table to use now: one 8-byte load, a re-read only on change."""
        if self.reader.generation() != self.generation:
            self._refresh(strict=False)
        return self.table

    def _on_accept(self, listener, lfd: int) -> None:
        self.l4.on_accept(listener, lfd)

    def _refresh(self, strict: bool) -> None:
        gen, payload = self.reader.read()
        if gen == 0 or gen == self.generation:
            return
        table = RouteTable.decode(gen, payload)
        self.table = table
        self.generation = gen
        self.http.names.update(table)   # access-log and span names for TCP lines too
        if not self.stopping:
            self.listeners.reconcile(table.listeners, table.settings["backlog"], strict)
        self.view.set_applied_generation(gen)

    def start(self) -> None:
        gen, payload = self.reader.read()
        if gen == 0:
            raise RuntimeError("no routing table published")
        first = RouteTable.decode(gen, payload)
        # The pipe size is fixed for the worker's life: pooled pipes share it.
        self.l4 = L4Path(self.loop, self.view, self, first.settings["buffer_bytes"])
        self.http = self.l4.http = HttpPath(self.loop, self.view, self, self.l4, first.settings)
        self.l4.log = self.http.access_log      # TCP connections get a line each too
        self._refresh(strict=True)
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        self.next_tick = self.loop.time() + TICK_S
        self.loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        if self.done.done():
            return
        now = self.loop.time()
        self.view.set(G_LOOP_LAG_US, int(max(0.0, now - self.next_tick) * 1e6))
        try:
            self.current()
        except Exception:  # a bad table must not kill the worker; the manager validated it
            log.exception("worker %d: cannot apply table", self.id)
        self.view.heartbeat()
        self.http.expire()
        idle = self.table.settings["idle_timeout_s"]
        if idle and now - self.last_sweep >= min(1.0, idle / 4):
            self.last_sweep = now
            self.l4.sweep_idle(now, idle)
        if self.stopping and not self.l4.relays and not self.http.count:
            self.done.set_result(None)
            return
        self._schedule_tick()

    def stop_accepting(self) -> None:
        if not self.listeners.accepting:
            return
        self.listeners.stop_accepting()
        self.view.set_draining(1)

    def drain(self) -> None:
        """SIGTERM: stop accepting, let connections finish, abort them at the deadline."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_accepting()
        self.http.drain()
        deadline = float(self.table.settings["drain_seconds"])
        self.loop.call_later(deadline, self._drain_deadline)

    def _drain_deadline(self) -> None:
        self.http.close()
        self.l4.abort_all()
        if not self.done.done():
            self.done.set_result(None)


def _die_with_parent() -> None:
    """The manager owns us: if it dies, so do we (no orphan keeps a port)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fastproxy-worker")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--counters", required=True)
    p.add_argument("--govern", required=True)
    p.add_argument("--log-level", default="info")
    p.add_argument("--parent", type=int, default=0, help="manager pid; exit if it is gone")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s fastproxy worker[{args.id}] %(levelname)s %(message)s")
    _die_with_parent()
    if args.parent and os.getppid() != args.parent:
        return 1
    _raise_nofile()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        w = Worker(loop, args.id, args.table, args.counters, args.govern)
        try:
            w.start()
        except OSError as e:
            log.error("%s", e.strerror or e)
            return EX_CONFIG
        loop.add_signal_handler(signal.SIGTERM, w.drain)
        loop.add_signal_handler(signal.SIGINT, w.drain)
        loop.add_signal_handler(signal.SIGUSR1, w.stop_accepting)
        loop.run_until_complete(w.done)
        w.http.close()
        w.l4.close()
        w.govern.close()
        return 0
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
