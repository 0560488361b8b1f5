"""Compiles configs into routing tables and publishes them into shared memory.

The segment names carry the manager's pid (/dev/shm/fastproxy-<pid>-*), so a
segment whose manager is gone can be recognised and removed at startup.
"""
from __future__ import annotations

import logging
import os
import re

from .._native.shm import CounterSegment, TableWriter
from ..config.schema import Config
from ..routing.table import compile_table, encode
from ..stats.names import SlotRegistry, region_slots, series_area

log = logging.getLogger("fastproxy.manager")

SHM_DIR = "/dev/shm"
_SEGMENT = re.compile(r"^fastproxy-(\d+)-(table|counters)$")


def segment_names(pid: int) -> tuple[str, str]:
    return f"/fastproxy-{pid}-table", f"/fastproxy-{pid}-counters"


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Publisher:
    """Owns the two segments for the manager's lifetime."""

    def __init__(self, settings: dict):
        self.table_name, self.counters_name = segment_names(os.getpid())
        self.slots = SlotRegistry(settings["counter_slots"])
        self.series = series_area(settings)     # (base, max) of every region's series area
        self.writer = TableWriter(self.table_name, settings["table_bytes"])
        try:
            # Each region: settings.counter_slots static slots, then the Istio series area.
            self.counters = CounterSegment(self.counters_name, settings["workers"], region_slots(settings),
                                           create=True)
        except BaseException:
            self.writer.close()
            raise
        self.generation = 0

    def compile(self, config: Config) -> bytes:
        """Compiles config into the payload to publish; raises ValueError if it cannot be."""
        try:
            payload = encode(compile_table(config, self.slots))
        except OverflowError as e:
            raise ValueError(f"settings.counter_slots: {e}") from None
        if len(payload) > self.writer.capacity:
            raise ValueError(f"settings.table_bytes: the compiled table needs {len(payload)} bytes, "
                             f"the slot holds {self.writer.capacity}")
        return payload

    def publish(self, payload: bytes) -> int:
        self.generation = self.writer.publish(payload)
        return self.generation

    def close(self) -> None:
        self.counters.close(unlink=True)
        self.writer.close(unlink=True)
