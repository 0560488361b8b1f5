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

from ..config.schema import SETTINGS_BY_NAME

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
    return (KEY_VALID | (listener_block // BLOCK) << 42 | (cluster_block // BLOCK) << 24
            | (flags & 0x3FFF) << 10 | (status & 0x3FF))


def tcp_key(listener_block: int, cluster_block: int) -> int:
    return KEY_VALID | KEY_TCP | (listener_block // BLOCK) << 42 | (cluster_block // BLOCK) << 24


def series_area(settings) -> tuple[int, int]:
    """(series_base, series_max) of every worker region, from the settings:
    the series area starts right after the settings.counter_slots static
    slots. Workers pass it to HttpEngine(series_base=, series_max=)."""
    return settings["counter_slots"], settings["max_series_per_worker"]


def ledger_area(settings) -> tuple[int, int]:
    """(first slot, slots) of the worker's governance ledger (csrc/govern.h:
    what it holds of the shared breaker and endpoint counts, reclaimed by the
    manager if it dies), after the series area: one GV_LEDGER_CL group per
    cluster slot (counter_slots // BLOCK), then one slot per endpoint slot."""
    base, n = series_area(settings)
    return base + n * SERIES_WIDTH, settings["counter_slots"] // BLOCK * LEDGER_CL + settings["max_endpoints"]


LEDGER_CL = 4   # govern.h GV_LEDGER_CL


def region_slots(settings) -> int:
    """Slots per worker region: the static slots, the series area, the ledger."""
    base, n = ledger_area(settings)
    return base + n


# Response flags (csrc/h1proxy.h H1_F_*, a test checks), as Envoy's letters in
# the order Envoy prints them: the access log, spans and istio_* labels.
FLAG_UF = 0x01   # upstream connect failure
FLAG_UT = 0x02   # upstream request timeout
FLAG_UC = 0x04   # upstream connection termination
FLAG_NR = 0x08   # no route
FLAG_DC = 0x10   # downstream connection termination
FLAG_DPE = 0x20  # downstream protocol error
FLAG_UPE = 0x40  # upstream protocol error
FLAG_UO = 0x80   # upstream overflow (a circuit breaker)
FLAG_UH = 0x100  # no healthy upstream
FLAG_RL = 0x200  # rate limited
FLAG_FI = 0x400  # fault injected: aborted
FLAG_DI = 0x800  # fault injected: delayed
FLAG_URX = 0x1000  # upstream retry limit exceeded
FLAG_SI = 0x2000   # stream idle timeout
_FLAG_LETTERS = ((FLAG_UH, "UH"), (FLAG_UT, "UT"), (FLAG_UF, "UF"), (FLAG_UC, "UC"), (FLAG_UO, "UO"),
                 (FLAG_NR, "NR"), (FLAG_DI, "DI"), (FLAG_FI, "FI"), (FLAG_RL, "RL"), (FLAG_DC, "DC"),
                 (FLAG_URX, "URX"), (FLAG_SI, "SI"), (FLAG_DPE, "DPE"), (FLAG_UPE, "UPE"))
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

# Traffic governance (csrc/govern.h), read from the governance segment at
# scrape time (stats/govern.py renders them). Label cluster_name, except the
# local rate limits (label route). Envoy's stat names, under our prefix.
CLUSTER_HEALTHY = Metric("fastproxy_cluster_membership_healthy", "gauge", "Endpoints of the cluster that take new requests: neither failed by the active health check nor ejected by outlier detection.")
CLUSTER_MEMBERS = Metric("fastproxy_cluster_membership_total", "gauge", "Endpoints of the cluster.")
GV_CX_OVERFLOW = Metric("fastproxy_cluster_upstream_cx_overflow_total", "counter", "Upstream connections not opened because the cluster had circuit_breakers.max_connections open.")
GV_RQ_PENDING_OVERFLOW = Metric("fastproxy_cluster_upstream_rq_pending_overflow_total", "counter", "Requests refused (503 UO) because circuit_breakers.max_pending_requests requests were already waiting for a connection.")
GV_RQ_ACTIVE_OVERFLOW = Metric("fastproxy_cluster_upstream_rq_active_overflow_total", "counter", "Requests refused (503 UO) because the cluster had circuit_breakers.max_requests requests in flight.")
GV_RQ_RETRY = Metric("fastproxy_cluster_upstream_rq_retry_total", "counter", "Retries started.")
GV_RQ_RETRY_SUCCESS = Metric("fastproxy_cluster_upstream_rq_retry_success_total", "counter", "Retries whose response was final (not retried again).")
GV_RQ_RETRY_OVERFLOW = Metric("fastproxy_cluster_upstream_rq_retry_overflow_total", "counter", "Retries not started because of circuit_breakers.max_retries or the retry budget.")
GV_RQ_ACTIVE = Metric("fastproxy_cluster_upstream_rq_active", "gauge", "Requests in flight upstream, first attempts and retries, all workers.")
GV_RQ_PENDING_ACTIVE = Metric("fastproxy_cluster_upstream_rq_pending_active", "gauge", "Requests waiting for an upstream connection (max_connections reached), all workers.")
# Envoy's circuit_breakers.<priority>.*: one priority, "default".
GV_CB_CX_OPEN = Metric("fastproxy_cluster_circuit_breakers_default_cx_open", "gauge", "1 while the max_connections circuit breaker is at its limit (admits no more), else 0.")
GV_CB_RQ_PENDING_OPEN = Metric("fastproxy_cluster_circuit_breakers_default_rq_pending_open", "gauge", "1 while the max_pending_requests circuit breaker is at its limit, else 0.")
GV_CB_RQ_OPEN = Metric("fastproxy_cluster_circuit_breakers_default_rq_open", "gauge", "1 while the max_requests circuit breaker is at its limit, else 0.")
GV_CB_RQ_RETRY_OPEN = Metric("fastproxy_cluster_circuit_breakers_default_rq_retry_open", "gauge", "1 while the retry circuit breaker (max_retries, or the retry budget) is at its limit, else 0.")
GV_CB_REMAINING_CX = Metric("fastproxy_cluster_circuit_breakers_default_remaining_cx", "gauge", "Upstream connections left before max_connections.")
GV_CB_REMAINING_PENDING = Metric("fastproxy_cluster_circuit_breakers_default_remaining_pending", "gauge", "Pending requests left before max_pending_requests.")
GV_CB_REMAINING_RQ = Metric("fastproxy_cluster_circuit_breakers_default_remaining_rq", "gauge", "Requests left before max_requests.")
GV_CB_REMAINING_RETRIES = Metric("fastproxy_cluster_circuit_breakers_default_remaining_retries", "gauge", "Retries left before max_retries (or the retry budget).")
# Only for clusters with outlier_detection.
GV_OD_EJECTIONS_ACTIVE = Metric("fastproxy_cluster_outlier_detection_ejections_active", "gauge", "Endpoints ejected now.")
GV_OD_ENFORCED_TOTAL = Metric("fastproxy_cluster_outlier_detection_ejections_enforced_total", "counter", "Ejections, for any reason.")
GV_OD_ENFORCED_5XX = Metric("fastproxy_cluster_outlier_detection_ejections_enforced_consecutive_5xx_total", "counter", "Ejections after consecutive_5xx 5xx responses or local-origin failures.")
GV_OD_ENFORCED_GATEWAY = Metric("fastproxy_cluster_outlier_detection_ejections_enforced_consecutive_gateway_failure_total", "counter", "Ejections after consecutive_gateway_failure 502/503/504 responses or local-origin failures.")
GV_OD_OVERFLOW = Metric("fastproxy_cluster_outlier_detection_ejections_overflow_total", "counter", "Ejections not made because max_ejection_percent of the endpoints were ejected already.")
# Only for clusters with health_checks; the manager runs the checks.
HC_ATTEMPT = Metric("fastproxy_cluster_health_check_attempt_total", "counter", "Active health checks made.")
HC_SUCCESS = Metric("fastproxy_cluster_health_check_success_total", "counter", "Active health checks that passed.")
HC_FAILURE = Metric("fastproxy_cluster_health_check_failure_total", "counter", "Active health checks that failed: an unexpected status, or a network failure.")
HC_NETWORK_FAILURE = Metric("fastproxy_cluster_health_check_network_failure_total", "counter", "Active health checks that failed to connect, were reset, or timed out.")
HC_HEALTHY = Metric("fastproxy_cluster_health_check_healthy", "gauge", "Endpoints the active health check holds healthy.")
# Envoy's http_local_rate_limit.*, per bucket (label route: the route's or
# virtual service's config path). Every request checked is enforced.
RL_ENABLED = Metric("fastproxy_http_local_rate_limit_enabled_total", "counter", "Requests checked against the local rate limit's token bucket.")
RL_ENFORCED = Metric("fastproxy_http_local_rate_limit_enforced_total", "counter", "Requests refused by the local rate limit (429 RL).")
RL_RATE_LIMITED = Metric("fastproxy_http_local_rate_limit_rate_limited_total", "counter", "Requests that found no token in the bucket.")
RL_OK = Metric("fastproxy_http_local_rate_limit_ok_total", "counter", "Requests that took a token.")

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
    """Stable slots, handed out when a config is compiled (manager side):
    counter blocks for listener and cluster names (block()), and slots of
    the governance segment (csrc/govern.h) for endpoints (endpoint(): one
    per cluster and address) and local rate-limit buckets (bucket(): one
    per owner key, the route's or virtual service's config path). A key
    keeps its slot for the registry's life, so shared state (ejections,
    tokens) survives reloads; slots are never reused. Running out raises
    OverflowError naming the setting to raise."""

    def __init__(self, nslots: int, max_endpoints: int = SETTINGS_BY_NAME["max_endpoints"].default,
                 max_rate_limits: int = SETTINGS_BY_NAME["max_rate_limits"].default):
        self.nslots = nslots
        self.max_endpoints = max_endpoints
        self.max_rate_limits = max_rate_limits
        self.blocks: dict[tuple[str, str], int] = {}
        self._endpoints: dict[tuple[str, str, int], int] = {}
        self._buckets: dict[str, int] = {}

    def block(self, kind: str, name: str) -> int:
        key = (kind, name)
        base = self.blocks.get(key)
        if base is None:
            base = (FIRST_BLOCK + len(self.blocks)) * BLOCK
            if base + BLOCK > self.nslots:
                raise OverflowError(f"counter slots exhausted ({self.nslots}); raise settings.counter_slots")
            self.blocks[key] = base
        return base

    def endpoint(self, cluster: str, ip: str, port: int) -> int:
        """The governance slot of endpoint ip:port of cluster."""
        key = (cluster, ip, port)
        slot = self._endpoints.get(key)
        if slot is None:
            slot = len(self._endpoints)
            if slot >= self.max_endpoints:
                raise OverflowError(f"endpoint slots exhausted ({self.max_endpoints}); "
                                    "raise settings.max_endpoints")
            self._endpoints[key] = slot
        return slot

    def bucket(self, key: str) -> int:
        """The governance slot of the rate-limit bucket owned by key."""
        slot = self._buckets.get(key)
        if slot is None:
            slot = len(self._buckets)
            if slot >= self.max_rate_limits:
                raise OverflowError(f"rate-limit slots exhausted ({self.max_rate_limits}); "
                                    "raise settings.max_rate_limits")
            self._buckets[key] = slot
        return slot

    def endpoint_slots(self) -> dict[tuple[str, str, int], int]:
        """Every endpoint slot handed out: (cluster, ip, port) -> slot (a copy)."""
        return dict(self._endpoints)

    def bucket_slots(self) -> dict[str, int]:
        """Every bucket slot handed out: owner key -> slot (a copy)."""
        return dict(self._buckets)
