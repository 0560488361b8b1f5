"""Every counter the data path keeps, declared once: its slot layout and its metric name.

A listener or cluster owns a block of BLOCK slots in each worker's counter
region (shared memory); the offsets below index into that block. Slot blocks
are handed out by SlotRegistry when a config is compiled, and a name keeps its
block for the manager's whole life, so counters survive reloads.
"""
from __future__ import annotations

from dataclasses import dataclass

BLOCK = 8  # slots per listener or cluster

# Listener block (label listener_name). rx = from the client, tx = to the client.
L_CX_TOTAL = 0
L_CX_DESTROY = 1
L_RX_BYTES = 2
L_TX_BYTES = 3
L_REFUSED_LOOP = 4
L_REFUSED_NO_ROUTE = 5

# Cluster block (label cluster_name). rx = from the upstream, tx = to the upstream.
C_CX_TOTAL = 0
C_CX_DESTROY = 1
C_RX_BYTES = 2
C_TX_BYTES = 3
C_CONNECT_FAIL = 4
C_CONNECT_TIMEOUT = 5

# Worker-wide slots, block 0.
G_SPLICED_BYTES = 0
G_COPIED_BYTES = 1
G_ACCEPT_ERRORS = 2
G_IDLE_TIMEOUTS = 3
FIRST_BLOCK = 1  # blocks handed to listeners/clusters start here


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: str          # "counter" or "gauge"
    help: str


LISTENER_METRICS: tuple[tuple[Metric, int, dict[str, str]], ...] = (
    (Metric("fastproxy_listener_downstream_cx_total", "counter", "Downstream connections accepted."), L_CX_TOTAL, {}),
    (Metric("fastproxy_listener_downstream_cx_destroy_total", "counter", "Downstream connections closed."), L_CX_DESTROY, {}),
    (Metric("fastproxy_listener_downstream_cx_rx_bytes_total", "counter", "Bytes received from downstream."), L_RX_BYTES, {}),
    (Metric("fastproxy_listener_downstream_cx_tx_bytes_total", "counter", "Bytes sent to downstream."), L_TX_BYTES, {}),
    (Metric("fastproxy_listener_downstream_cx_refused_total", "counter", "Downstream connections refused."), L_REFUSED_LOOP, {"reason": "loop"}),
    (Metric("fastproxy_listener_downstream_cx_refused_total", "counter", "Downstream connections refused."), L_REFUSED_NO_ROUTE, {"reason": "no_route"}),
)
LISTENER_ACTIVE = Metric("fastproxy_listener_downstream_cx_active", "gauge", "Downstream connections open.")

CLUSTER_METRICS: tuple[tuple[Metric, int, dict[str, str]], ...] = (
    (Metric("fastproxy_cluster_upstream_cx_total", "counter", "Upstream connections opened."), C_CX_TOTAL, {}),
    (Metric("fastproxy_cluster_upstream_cx_destroy_total", "counter", "Upstream connections closed."), C_CX_DESTROY, {}),
    (Metric("fastproxy_cluster_upstream_cx_rx_bytes_total", "counter", "Bytes received from upstream."), C_RX_BYTES, {}),
    (Metric("fastproxy_cluster_upstream_cx_tx_bytes_total", "counter", "Bytes sent to upstream."), C_TX_BYTES, {}),
    (Metric("fastproxy_cluster_upstream_cx_connect_fail_total", "counter", "Upstream connects that failed (incl. timeouts)."), C_CONNECT_FAIL, {}),
    (Metric("fastproxy_cluster_upstream_cx_connect_timeout_total", "counter", "Upstream connects that timed out."), C_CONNECT_TIMEOUT, {}),
)
CLUSTER_ACTIVE = Metric("fastproxy_cluster_upstream_cx_active", "gauge", "Upstream connections open.")

WORKER_METRICS: tuple[tuple[Metric, int], ...] = (
    (Metric("fastproxy_relay_spliced_bytes_total", "counter", "Bytes relayed through splice() (zero copy)."), G_SPLICED_BYTES),
    (Metric("fastproxy_relay_copied_bytes_total", "counter", "Bytes relayed through the read/write fallback."), G_COPIED_BYTES),
    (Metric("fastproxy_accept_errors_total", "counter", "accept() failures (e.g. out of file descriptors)."), G_ACCEPT_ERRORS),
    (Metric("fastproxy_tcp_idle_timeouts_total", "counter", "Relayed connections closed by the idle timeout."), G_IDLE_TIMEOUTS),
)

# Pairs (opened, closed) whose difference is a gauge of open connections; a
# dead worker's region is reconciled by setting closed = opened.
OPEN_CLOSE_PAIRS = ((L_CX_TOTAL, L_CX_DESTROY),)
CLUSTER_OPEN_CLOSE_PAIRS = ((C_CX_TOTAL, C_CX_DESTROY),)


class SlotRegistry:
    """Stable slot blocks for listener and cluster names (manager side)."""

    def __init__(self, nslots: int):
        self.nslots = nslots
        self.blocks: dict[tuple[str, str], int] = {}

    def block(self, kind: str, name: str) -> int:
        key = (kind, name)
        base = self.blocks.get(key)
        if base is None:
            base = (FIRST_BLOCK + len(self.blocks)) * BLOCK
            if base + BLOCK > self.nslots:
                raise OverflowError(f"counter slots exhausted ({self.nslots}); raise settings.counter_slots")
            self.blocks[key] = base
        return base
