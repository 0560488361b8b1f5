"""Compiles configs into routing tables and publishes them into shared memory.

Three segments, all named after the manager's pid (/dev/shm/fastproxy-<pid>-*)
so that one whose manager is gone can be recognised and removed at startup:
the routing table, the per-worker counters, and the governance state
(csrc/govern.h: breakers, ejections, health, rate-limit buckets).
"""
from __future__ import annotations

import logging
import os
import re

import orjson

from .._native.govern import GovernSegment
from .._native.shm import CounterSegment, TableWriter
from ..config.schema import Config
from ..routing.table import compile_table, encode
from ..stats.names import BLOCK, SlotRegistry, ledger_area, region_slots, series_area

log = logging.getLogger("fastproxy.manager")

SHM_DIR = "/dev/shm"
_SEGMENT = re.compile(r"^fastproxy-(\d+)-(table|counters|govern)$")


def segment_names(pid: int) -> tuple[str, str, str]:
    """(table, counters, govern) segment names of the manager with this pid."""
    return f"/fastproxy-{pid}-table", f"/fastproxy-{pid}-counters", f"/fastproxy-{pid}-govern"


def remove_stale_segments() -> list[str]:
    """Unlinks segments left by managers that no longer run (e.g. after SIGKILL)."""
    removed = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for name in names:
        m = _SEGMENT.match(name)
        if m and not _alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def _exhausted(message: str) -> str:
    """The setting a SlotRegistry OverflowError names (it says which to raise)."""
    for name in ("max_endpoints", "max_rate_limits"):
        if name in message:
            return name
    return "counter_slots"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Publisher:
    """Owns the three segments for the manager's lifetime."""

    def __init__(self, settings: dict):
        self.table_name, self.counters_name, self.govern_name = segment_names(os.getpid())
        self.slots = SlotRegistry(settings["counter_slots"], max_endpoints=settings["max_endpoints"],
                                  max_rate_limits=settings["max_rate_limits"])
        self.series = series_area(settings)     # (base, max) of every region's series area
        self.ledger = ledger_area(settings)[0]   # first slot of every region's governance ledger
        self.writer = TableWriter(self.table_name, settings["table_bytes"])
        self.counters = self.govern = None
        try:
            # Each region: settings.counter_slots static slots, the Istio series area, the ledger.
            self.counters = CounterSegment(self.counters_name, settings["workers"], region_slots(settings),
                                           create=True)
            # Cluster slot i belongs to the cluster whose counter block is i * BLOCK.
            self.govern = GovernSegment(self.govern_name, create=True, ncluster=settings["counter_slots"] // BLOCK,
                                        nendpoint=settings["max_endpoints"], nbucket=settings["max_rate_limits"])
            assert ledger_area(settings)[1] == self.govern.ledger_slots
        except BaseException:
            self.close()
            raise
        self.generation = 0
        self.doc: dict | None = None             # the published table document
        self._compiled: tuple[bytes, dict] | None = None
        self._zeroed_endpoints: set[int] = set()  # slots reset since handed out
        self._zeroed_buckets: set[int] = set()

    def compile(self, config: Config) -> bytes:
        """Compiles config into the payload to publish; raises ValueError if it cannot be."""
        try:
            doc = compile_table(config, self.slots)
        except OverflowError as e:
            raise ValueError(f"settings.{_exhausted(str(e))}: {e}") from None
        payload = encode(doc)
        if len(payload) > self.writer.capacity:
            raise ValueError(f"settings.table_bytes: the compiled table needs {len(payload)} bytes, "
                             f"the slot holds {self.writer.capacity}")
        self._compiled = (payload, doc)
        return payload

    def publish(self, payload: bytes) -> int:
        compiled = self._compiled
        doc = compiled[1] if compiled is not None and compiled[0] is payload else orjson.loads(payload)
        self._zero_new_slots()
        self.generation = self.writer.publish(payload)
        self.doc = doc
        return self.generation

    def _zero_new_slots(self) -> None:
        """Zeroes each slot the registry handed out since the last publish,
        before any worker sees a table naming it (csrc/govern.h: the manager
        zeroes a slot before it hands it to a new owner). Today a slot never
        changes owner and the segment starts zeroed, so this guards against
        state from an earlier owner should slots ever be recycled. Slots in
        use keep their state (in-flight counts, ejections) across reloads."""
        for slot in self.slots.endpoint_slots().values():
            if slot not in self._zeroed_endpoints:
                self.govern.reset_endpoint(slot)
                self._zeroed_endpoints.add(slot)
        for slot in self.slots.bucket_slots().values():
            if slot not in self._zeroed_buckets:
                self.govern.reset_bucket(slot)
                self._zeroed_buckets.add(slot)

    def close(self) -> None:
        for seg in (self.govern, self.counters):
            if seg is not None:
                seg.close(unlink=True)
        self.writer.close(unlink=True)
