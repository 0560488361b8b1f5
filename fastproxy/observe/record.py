"""The HTTP engine's per-request record, and the names behind its counter blocks. Pure.

A record is a tuple (HttpEngine.drain_records(); csrc/h1proxy.h). The
indices below are its fields; strings are bytes, b"" when absent.
"""
from __future__ import annotations

from ..routing.table import MODE_INBOUND
from ..stats.names import (  # noqa: F401  (re-exported: the record's flags and their text)
    FLAG_DC,
    FLAG_DPE,
    FLAG_NR,
    FLAG_UC,
    FLAG_UF,
    FLAG_UPE,
    FLAG_UT,
    response_flags,
)

START_US = 0           # CLOCK_REALTIME µs when the request head completed
DURATION_US = 1        # to the last response byte written
UPSTREAM_US = 2        # request sent -> response head received; 0 without an upstream
METHOD = 3
PATH = 4
PROTOCOL = 5
STATUS = 6             # 0: none was sent
FLAGS = 7              # H1_F_* bits
BYTES_RECEIVED = 8     # request body bytes
BYTES_SENT = 9         # response body bytes
UPSTREAM_HOST = 10
CLUSTER_BLOCK = 11     # 0: answered locally
LISTENER_BLOCK = 12
REQUEST_ID = 13
AUTHORITY = 14
USER_AGENT = 15
PEER = 16
ORIGINAL_DST = 17
TRACE_ID = 18          # 32 lower-hex, or b""
SPAN_ID = 19           # 16 hex: the proxy's span
PARENT_SPAN_ID = 20
SAMPLED = 21
ROUTE_NAME = 22
NFIELDS = 23

def tcp_record(start_us: int, duration_us: int, bytes_received: int, bytes_sent: int, listener_block: int,
               cluster_block: int, peer: bytes, original_dst: bytes, upstream_host: bytes, flags: int) -> tuple:
    """A record for a TCP connection: no method, path, protocol or status."""
    return (start_us, duration_us, 0, b"", b"", b"", 0, flags, bytes_received, bytes_sent, upstream_host,
            cluster_block, listener_block, b"", b"", b"", peer, original_dst, b"", b"", b"", False, b"")


class BlockNames:
    """Listener and cluster names by counter block, and whether a listener is
    inbound. A name keeps its block for the manager's life, so names are only
    ever added: a request that finishes after a reload removed its cluster
    still finds the name."""

    __slots__ = ("clusters", "generation", "inbound", "listeners")

    def __init__(self):
        self.generation = -1
        self.listeners: dict[int, str] = {}
        self.clusters: dict[int, str] = {}
        self.inbound: set[int] = set()

    def update(self, table) -> None:
        """Adds the names of a RouteTable (anything with .generation, .listeners, .clusters)."""
        if table.generation == self.generation:
            return
        self.generation = table.generation
        for l in table.listeners:
            self.listeners[l.block] = l.name
            if l.mode == MODE_INBOUND:
                self.inbound.add(l.block)
            else:
                self.inbound.discard(l.block)
        for c in table.clusters.values():
            self.clusters[c.block] = c.name

    def cluster(self, block: int) -> str | None:
        return self.clusters.get(block) if block else None

    def listener(self, block: int) -> str | None:
        return self.listeners.get(block)
