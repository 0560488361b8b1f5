"""Every counter the data path keeps, declared once: its slot layout and its metric name.

A listener or cluster owns a block of BLOCK slots in each worker's counter
region (shared memory); the offsets below index into that block. Slot blocks
are handed out by SlotRegistry when a config is compiled, and a name keeps its
block for the manager's whole life, so counters survive reloads.

The C HTTP engine (csrc/h1proxy.h, "Counter offsets") adds to the same
blocks with its own H1_L_* / H1_C_* defines: they must equal the constants
here of the same name (tests/unit/test_stats_names.py checks it).
"""
from __future__ import annotations

from dataclasses import dataclass

BLOCK = 16  # slots per listener or cluster

# Listener block (label listener_name). rx = from the client, tx = to the client.
L_CX_TOTAL = 0
L_CX_DESTROY = 1
L_RX_BYTES = 2
L_TX_BYTES = 3
L_REFUSED_LOOP = 4
L_REFUSED_NO_ROUTE = 5
# protocol detection on capture listeners: what each connection turned out to be
L_DETECT_HTTP1 = 6
L_DETECT_HTTP2 = 7
L_DETECT_TLS = 8
L_DETECT_OPAQUE = 9       # none of the above (or an opaque port)
L_DETECT_TIMEOUT = 10     # the client sent nothing within detect_timeout_ms
# HTTP responses sent to clients, by status class: L_RQ_1XX + (status // 100 - 1)
L_RQ_1XX = 11
L_RQ_2XX = 12
L_RQ_3XX = 13
L_RQ_4XX = 14
L_RQ_5XX = 15

# Cluster block (label cluster_name). rx = from the upstream, tx = to the upstream.
C_CX_TOTAL = 0
C_CX_DESTROY = 1
C_RX_BYTES = 2
C_TX_BYTES = 3
C_CONNECT_FAIL = 4
C_CONNECT_TIMEOUT = 5
C_RQ_TOTAL = 6            # HTTP requests sent upstream (a keep-alive race replay counts once)
# HTTP responses from upstreams, by status class: C_RQ_1XX + (status // 100 - 1)
C_RQ_1XX = 7
C_RQ_2XX = 8
C_RQ_3XX = 9
C_RQ_4XX = 10
C_RQ_5XX = 11
C_RQ_TIMEOUT = 12         # no response head within http_request_timeout_ms (504 UT)
C_RQ_RESET = 13           # the upstream closed or reset mid-exchange (UC)
C_POOL_REUSED = 14        # requests sent on a pooled keep-alive connection
C_KA_RACE = 15            # requests replayed after a pooled connection closed under them

# Worker-wide slots, block 0.
G_SPLICED_BYTES = 0
G_COPIED_BYTES = 1
G_ACCEPT_ERRORS = 2
G_IDLE_TIMEOUTS = 3
G_SERIES_OVERFLOW = 4     # requests/connections past max_series_per_worker (see csrc/h1proxy.h)
G_RECORDS_DROPPED = 5     # request records the engine's ring had no room for
G_ACCESS_LOG_DROPPED = 6  # access log lines dropped by a slow sink
G_SPANS_DROPPED = 7       # spans dropped by a slow or absent collector
G_LOOP_LAG_US = 8         # gauge: the worker's last measured event-loop lag
FIRST_BLOCK = 1  # blocks handed to listeners/clusters start here

# The Istio series area (the contract: /work/stash/obs-spec.md §1-2, csrc/h1proxy.h).
# Each worker region is [static blocks | series area]: settings.counter_slots
# static slots (listener/cluster blocks), then max_series_per_worker series of
# SERIES_WIDTH slots each, allocated in first-use order by the C engine.
SERIES_WIDTH = 48
S_KEY = 0                 # packed key (below); 0 = unused, written last (release)
# HTTP series (kind bit clear)
S_REQUESTS = 1
S_DURATION = 2            # 20 non-cumulative buckets, bounds DURATION_BOUNDS_MS
S_DURATION_SUM_US = 22
S_REQUEST_BYTES = 23      # 9 non-cumulative buckets, bounds BYTES_BOUNDS
S_REQUEST_BYTES_SUM = 32
S_RESPONSE_BYTES = 33     # 9 buckets, BYTES_BOUNDS
S_RESPONSE_BYTES_SUM = 42
# TCP series (KEY_TCP set)
T_OPENED = 1
T_CLOSED = 2
T_RX_BYTES = 3            # from downstream: istio_tcp_received_bytes_total
T_TX_BYTES = 4            # to downstream: istio_tcp_sent_bytes_total

INF = float("inf")
# Istio's buckets; the last one is +Inf.
DURATION_BOUNDS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                      300000, 600000, 1800000, 3600000, INF)
BYTES_BOUNDS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, INF)

KEY_VALID = 1 << 63
KEY_TCP = 1 << 62


def http_key(listener_block: int, cluster_block: int, flags: int, status: int) -> int:
    return (KEY_VALID | (listener_block // BLOCK) << 40 | (cluster_block // BLOCK) << 20
            | (flags & 0xFF) << 10 | (status & 0x3FF))


def tcp_key(listener_block: int, cluster_block: int) -> int:
    return KEY_VALID | KEY_TCP | (listener_block // BLOCK) << 40 | (cluster_block // BLOCK) << 20


def series_area(settings) -> tuple[int, int]:
    """(series_base, series_max) of every worker region, from the settings:
    the series area starts right after the settings.counter_slots static
    slots. Workers pass it to HttpEngine(series_base=, series_max=)."""
    return settings["counter_slots"], settings["max_series_per_worker"]


def region_slots(settings) -> int:
    """Slots per worker region: the static slots plus the series area."""
    base, n = series_area(settings)
    return base + n * SERIES_WIDTH


# Response flags (csrc/h1proxy.h H1_F_*, a test checks), as Envoy's letters in
# the order Envoy prints them: the access log, spans and istio_* labels.
FLAG_UF = 0x01   # upstream connect failure
FLAG_UT = 0x02   # upstream request timeout
FLAG_UC = 0x04   # upstream connection termination
FLAG_NR = 0x08   # no route
FLAG_DC = 0x10   # downstream connection termination
FLAG_DPE = 0x20  # downstream protocol error
FLAG_UPE = 0x40  # upstream protocol error
_FLAG_LETTERS = ((FLAG_UT, "UT"), (FLAG_UF, "UF"), (FLAG_UC, "UC"), (FLAG_NR, "NR"), (FLAG_DC, "DC"),
                 (FLAG_DPE, "DPE"), (FLAG_UPE, "UPE"))
_FLAGS_TEXT: dict[int, str] = {}


def response_flags(flags: int) -> str:
    """Envoy's %RESPONSE_FLAGS%: the letters joined by commas, "-" for none."""
    text = _FLAGS_TEXT.get(flags)
    if text is None:
        text = ",".join(letters for bit, letters in _FLAG_LETTERS if flags & bit) or "-"
        _FLAGS_TEXT[flags] = text
    return text

@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: str          # "counter" or "gauge"
    help: str


_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_DETECTED = Metric("fastproxy_listener_protocol_detected_total", "counter",
                   "Capture-listener connections by detected protocol (timeout: the client sent nothing "
                   "within detect_timeout_ms; opaque: anything else, or an opaque port).")
_DOWNSTREAM_RQ = Metric("fastproxy_listener_downstream_rq_total", "counter",
                        "HTTP requests answered to clients, by the status class of the response.")
_UPSTREAM_RQ_COMPLETED = Metric("fastproxy_cluster_upstream_rq_completed_total", "counter",
                                "HTTP responses received from upstreams, by status class.")

LISTENER_METRICS: tuple[tuple[Metric, int, dict[str, str]], ...] = (
    (Metric("fastproxy_listener_downstream_cx_total", "counter", "Downstream connections accepted."), L_CX_TOTAL, {}),
    (Metric("fastproxy_listener_downstream_cx_destroy_total", "counter", "Downstream connections closed."), L_CX_DESTROY, {}),
    (Metric("fastproxy_listener_downstream_cx_rx_bytes_total", "counter", "Bytes received from downstream."), L_RX_BYTES, {}),
    (Metric("fastproxy_listener_downstream_cx_tx_bytes_total", "counter", "Bytes sent to downstream."), L_TX_BYTES, {}),
    (Metric("fastproxy_listener_downstream_cx_refused_total", "counter", "Downstream connections refused."), L_REFUSED_LOOP, {"reason": "loop"}),
    (Metric("fastproxy_listener_downstream_cx_refused_total", "counter", "Downstream connections refused."), L_REFUSED_NO_ROUTE, {"reason": "no_route"}),
    *((_DETECTED, off, {"protocol": p}) for p, off in (
        ("http1", L_DETECT_HTTP1), ("http2", L_DETECT_HTTP2), ("tls", L_DETECT_TLS),
        ("opaque", L_DETECT_OPAQUE), ("timeout", L_DETECT_TIMEOUT))),
    *((_DOWNSTREAM_RQ, L_RQ_1XX + i, {"response_code_class": c}) for i, c in enumerate(_CLASSES)),
)
LISTENER_ACTIVE = Metric("fastproxy_listener_downstream_cx_active", "gauge", "Downstream connections open.")

CLUSTER_METRICS: tuple[tuple[Metric, int, dict[str, str]], ...] = (
    (Metric("fastproxy_cluster_upstream_cx_total", "counter", "Upstream connections opened."), C_CX_TOTAL, {}),
    (Metric("fastproxy_cluster_upstream_cx_destroy_total", "counter", "Upstream connections closed."), C_CX_DESTROY, {}),
    (Metric("fastproxy_cluster_upstream_cx_rx_bytes_total", "counter", "Bytes received from upstream."), C_RX_BYTES, {}),
    (Metric("fastproxy_cluster_upstream_cx_tx_bytes_total", "counter", "Bytes sent to upstream."), C_TX_BYTES, {}),
    (Metric("fastproxy_cluster_upstream_cx_connect_fail_total", "counter", "Upstream connects that failed (incl. timeouts)."), C_CONNECT_FAIL, {}),
    (Metric("fastproxy_cluster_upstream_cx_connect_timeout_total", "counter", "Upstream connects that timed out."), C_CONNECT_TIMEOUT, {}),
    (Metric("fastproxy_cluster_upstream_rq_total", "counter", "HTTP requests sent upstream (a keep-alive race replay counts once)."), C_RQ_TOTAL, {}),
    *((_UPSTREAM_RQ_COMPLETED, C_RQ_1XX + i, {"response_code_class": c}) for i, c in enumerate(_CLASSES)),
    (Metric("fastproxy_cluster_upstream_rq_timeout_total", "counter", "HTTP requests with no response head within the request timeout (504, flag UT)."), C_RQ_TIMEOUT, {}),
    (Metric("fastproxy_cluster_upstream_rq_reset_total", "counter", "HTTP exchanges the upstream closed or reset mid-way (flag UC)."), C_RQ_RESET, {}),
    (Metric("fastproxy_cluster_upstream_cx_pool_reused_total", "counter", "HTTP requests sent on a pooled keep-alive upstream connection."), C_POOL_REUSED, {}),
    (Metric("fastproxy_cluster_upstream_keepalive_race_replays_total", "counter", "HTTP requests sent again on a new connection because the pooled one closed before any response byte."), C_KA_RACE, {}),
)
CLUSTER_ACTIVE = Metric("fastproxy_cluster_upstream_cx_active", "gauge", "Upstream connections open.")
# Health checks do not exist yet: every configured endpoint counts as healthy.
CLUSTER_HEALTHY = Metric("fastproxy_cluster_membership_healthy", "gauge", "Endpoints of the cluster taken as healthy (all configured ones, until health checks exist).")

WORKER_METRICS: tuple[tuple[Metric, int], ...] = (
    (Metric("fastproxy_relay_spliced_bytes_total", "counter", "Bytes relayed through splice() (zero copy)."), G_SPLICED_BYTES),
    (Metric("fastproxy_relay_copied_bytes_total", "counter", "Bytes relayed through the read/write fallback."), G_COPIED_BYTES),
    (Metric("fastproxy_accept_errors_total", "counter", "accept() failures (e.g. out of file descriptors)."), G_ACCEPT_ERRORS),
    (Metric("fastproxy_tcp_idle_timeouts_total", "counter", "Relayed connections closed by the idle timeout."), G_IDLE_TIMEOUTS),
    (Metric("fastproxy_metric_series_overflow_total", "counter", "Requests and TCP connections not recorded in an Istio series because the worker had max_series_per_worker series already."), G_SERIES_OVERFLOW),
    (Metric("fastproxy_request_records_dropped_total", "counter", "Request records (for access logs and spans) dropped because the engine's ring was full."), G_RECORDS_DROPPED),
    (Metric("fastproxy_access_log_dropped_total", "counter", "Access log lines dropped because the sink was slow."), G_ACCESS_LOG_DROPPED),
    (Metric("fastproxy_spans_dropped_total", "counter", "Spans dropped because the collector was slow or absent."), G_SPANS_DROPPED),
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
