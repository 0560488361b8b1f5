"""The configuration schema: every field, its type, default and meaning, declared once.

The shape follows Envoy's xDS resources so that a later xDS subscription maps
onto it field by field:

    Config.listeners[]   ~ envoy.config.listener.v3.Listener
        name, address, additional_addresses, bind_to_port, use_original_dst,
        traffic_direction; tcp_proxy ~ the envoy.filters.network.tcp_proxy filter;
        http ~ the envoy.filters.network.http_connection_manager filter, routed
        by Config.virtual_services (cluster: where requests no route matches go);
        request_headers_timeout_ms ~ the HCM's request_headers_timeout
    Config.clusters[]    ~ envoy.config.cluster.v3.Cluster (STATIC type)
        name, connect_timeout, lb_policy; endpoints ~ ClusterLoadAssignment
        .endpoints[0].lb_endpoints[] (address, load_balancing_weight);
        hash_policy (for RING_HASH / MAGLEV) ~ RouteAction.hash_policy;
        least_request_lb_config, ring_hash_lb_config, maglev_lb_config,
        common_lb_config.healthy_panic_threshold; circuit_breakers (the
        default-priority thresholds, flattened), outlier_detection,
        health_checks: see fastproxy/policy/ for each one's fields
    Config.virtual_services[] ~ Istio's networking.istio.io VirtualService, as
        routing/http.py compiles it (destination.host names a cluster)

Which protocol a listener speaks: tcp_proxy relays bytes; http parses
HTTP/1.1 and routes each request; a capture listener (use_original_dst)
detects the protocol of each connection (HTTP/1 is routed as http, anything
else relayed as TCP; ports in settings.opaque_ports skip detection).

Settings are the tunables: each is also the environment variable
FASTPROXY_<NAME> (see env.py), which overrides the file.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..policy.breakers import Breakers
    from ..policy.health import HealthCheck
    from ..policy.outlier import OutlierDetection


class ConfigError(ValueError):
    """A config that cannot be used. `path` names the field (e.g. clusters[0].name)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    type: type
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    # Further checks of a coerced value: check(value, path) raises ConfigError naming path.
    check: Callable[[Any, str], Any] | None = None


def parse_port_list(text: str, path: str = "") -> frozenset[int]:
    """'25, 587,3306' -> {25, 587, 3306}; '' -> none. Each port 1..65535."""
    ports = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            if text.strip():
                raise ConfigError(path, f"empty item in port list {text!r}")
            continue
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise ConfigError(path, f"expected ports 1..65535 separated by commas, got {part!r}")
        ports.add(int(part))
    return frozenset(ports)


def _access_log_fields(text: str, path: str = "") -> str:
    from ..observe.accesslog import parse_fields   # pure; imported late to keep config light
    try:
        parse_fields(text)
    except ValueError as e:
        raise ConfigError(path, str(e)) from None
    return text


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) or 1


# Every tunable. `None` as a default means "computed at load time" (see doc).
SETTINGS: tuple[Setting, ...] = (
    Setting("workers", int, None, "Worker processes (default: the number of usable CPUs).", minimum=1, maximum=256),
    Setting("admin_address", str, "127.0.0.1", "Address of the admin API. Keep it on loopback."),
    Setting("admin_port", int, 15000, "Admin API port (/ready, /stats/prometheus, /config_dump, ...).", minimum=1, maximum=65535),
    Setting("stats_port", int, 15090, "Port serving /stats/prometheus on all addresses (0 disables).", minimum=0, maximum=65535),
    Setting("merged_metrics_port", int, 15020, "Port serving the merged metrics (0 disables).", minimum=0, maximum=65535),
    Setting("health_port", int, 15021, "Port serving /healthz/ready for the kubelet (0 disables).", minimum=0, maximum=65535),
    Setting("outbound_port", int, 15001, "Port of the outbound capture listener in the default config.", minimum=1, maximum=65535),
    Setting("inbound_port", int, 15006, "Port of the inbound capture listener in the default config.", minimum=1, maximum=65535),
    Setting("log_level", str, "info", "Log level of the manager and workers.", choices=("debug", "info", "warning", "error")),
    Setting("drain_seconds", float, 5.0, "On SIGTERM, how long in-flight connections may finish before they are closed.", minimum=0),
    Setting("connect_timeout_ms", int, 10000, "Upstream connect timeout, unless the cluster sets one.", minimum=1),
    Setting("idle_timeout_s", int, 3600, "A relayed TCP connection with no traffic for this long is closed (0 = never).", minimum=0),
    Setting("buffer_bytes", int, 65536, "Per-direction pipe size of the splice relay (and fallback buffer size). 64 KiB is the kernel default: larger pipes bought no throughput on loopback and exhaust the proxy user's pipe pages (fs.pipe-user-pages-soft) sooner.", minimum=4096, maximum=16777216),
    Setting("outbound_traffic_policy", str, "ALLOW_ANY", "Outbound traffic to unknown destinations: ALLOW_ANY passes it through, REGISTRY_ONLY refuses it.", choices=("ALLOW_ANY", "REGISTRY_ONLY")),
    Setting("inbound_interception_mode", str, "REDIRECT", "How `fastproxy init -m` sends inbound traffic to the inbound capture listener (the same variable configures both): REDIRECT (nat; the app sees connections from 127.0.0.6 / ::6) or TPROXY (mangle TPROXY: INBOUND capture listeners set IP_TRANSPARENT / IPV6_TRANSPARENT, which needs CAP_NET_ADMIN, and the app sees the client's own address, as in Istio, through init's default mark 1337).", choices=("REDIRECT", "TPROXY")),
    Setting("inbound_passthrough_source", str, "127.0.0.6", "Source address of inbound passthrough connections to the app (excluded from capture by the init rules)."),
    Setting("backlog", int, 4096, "listen() backlog of each listener socket.", minimum=1),
    Setting("table_bytes", int, 4194304, "Capacity of each routing-table slot in shared memory.", minimum=65536),
    Setting("counter_slots", int, 65536, "Counter slots per worker in shared memory for listener and cluster counters (16 per name); the Istio series area (max_series_per_worker x 48 slots) comes on top.", minimum=1024),
    Setting("config_poll_ms", int, 1000, "How often the config file's mtime is checked for changes (0 disables).", minimum=0),
    # -- protocol detection (capture listeners) and HTTP --
    Setting("detect_timeout_ms", int, 50, "Capture listeners: a client that sends nothing for this long speaks a server-first protocol and is relayed as TCP.", minimum=1),
    Setting("opaque_ports", str, "25,587,3306,4444,5432,6379,9300,11211", "Capture listeners: comma-separated destination ports whose traffic skips protocol detection and is relayed as TCP at once (server-first protocols: SMTP, MySQL, PostgreSQL, Redis, ...). Empty: none.", check=parse_port_list),
    Setting("http_max_head_bytes", int, 61440, "HTTP: the largest message head (start line and header fields). A larger request head is answered 431; a larger response head 502.", minimum=1024, maximum=1048576),
    Setting("http_max_headers", int, 100, "HTTP: the most header fields in one message head. More in a request is answered 431; in a response 502.", minimum=1, maximum=1000),
    Setting("http_max_request_line_bytes", int, 61440, "HTTP: the longest request line (a longer one is answered 414) or status line (502).", minimum=256, maximum=1048576),
    Setting("http_idle_timeout_s", int, 3600, "HTTP: a downstream connection idle between requests for this long is closed (0 = never).", minimum=0),
    Setting("http_request_headers_timeout_ms", int, 10000, "HTTP: the time a client has from the first byte of a request head to its end; past it the client gets 408 and the connection is closed (slowloris). A listener's request_headers_timeout_ms overrides it. 0 = no limit.", minimum=0, maximum=3600000),
    Setting("http_request_timeout_ms", int, 0, "HTTP: the longest wait from a request sent upstream to its response head; past it the client gets 504 (flag UT). 0 = no limit, as Istio's default.", minimum=0),
    Setting("generate_request_id", bool, True, "HTTP: add an x-request-id header (a random UUIDv4) to requests that carry none (true/false, 1/0)."),
    Setting("upstream_pool_max_idle", int, 64, "HTTP: idle keep-alive upstream connections kept per endpoint in each worker (0: none; every request opens a new one).", minimum=0),
    Setting("upstream_idle_timeout_ms", int, 60000, "HTTP: an idle pooled upstream connection unused for this long is closed.", minimum=1),
    # -- traffic governance (the shared segment of csrc/govern.h) --
    Setting("max_endpoints", int, 4096, "Endpoint slots in the shared governance state (breaker and outlier-detection counts, health, least-request load): every cluster endpoint the proxy has ever been configured with takes one for the manager's life. A config needing more is rejected.", minimum=1, maximum=16777216),
    Setting("max_rate_limits", int, 1024, "Local rate-limit buckets in the shared governance state: each route or virtual service with a localRateLimit takes one for the manager's life. A config needing more is rejected.", minimum=1, maximum=16777216),
    # -- observability --
    Setting("workload_name", str, "unknown", "This proxy's workload (Istio's source_workload / destination_workload label); the injector sets it from the pod's owner."),
    Setting("workload_namespace", str, "default", "This proxy's namespace (the *_workload_namespace labels)."),
    Setting("service_name", str, "unknown", "The service this workload serves: destination_service of inbound requests."),
    Setting("max_series_per_worker", int, 2048, "Cardinality cap: Istio request/TCP series (label combinations) each worker keeps; past it requests are counted in fastproxy_metric_series_overflow_total instead.", minimum=16, maximum=1048576),
    Setting("access_log", str, "", "Access log destination: a file path, /dev/stdout, or empty for none (as Istio's meshConfig.accessLogFile)."),
    Setting("access_log_format", str, "text", "Access log format: text (Envoy's default format line) or json (one object per line).", choices=("text", "json")),
    Setting("access_log_fields", str, "", "JSON access log: comma-separated field names to write (empty: all; the names are listed in fastproxy/observe/accesslog.py JSON_FIELDS and the README).", check=_access_log_fields),
    Setting("access_log_filter", str, "all", "Which requests are logged: all, or errors (status >= 400, or any response flag).", choices=("all", "errors")),
    Setting("access_log_sampling", float, 100.0, "Percentage of requests logged (after the filter).", minimum=0, maximum=100),
    Setting("access_log_buffer_bytes", int, 1048576, "Lines waiting for a slow sink are kept up to this many bytes per worker; past it they are dropped and counted.", minimum=4096),
    Setting("tracing", bool, False, "Record a span per proxied request (client side on outbound, server side on inbound) and export sampled ones. Trace headers (W3C traceparent, B3) are propagated either way."),
    Setting("trace_sampling", float, 1.0, "Percentage of new traces (requests without an incoming sampling decision) that are sampled, as Istio's default 1%.", minimum=0, maximum=100),
    Setting("trace_collector", str, "", "Span collector as host:port (e.g. a Zipkin or OpenTelemetry collector); empty: spans are not exported."),
    Setting("trace_format", str, "zipkin", "Span export format: zipkin (v2 JSON, POST /api/v2/spans) or otlp (OTLP/HTTP JSON, POST /v1/traces).", choices=("zipkin", "otlp")),
    Setting("app_metrics_port", int, 0, "The app's own Prometheus port: 15020 /stats/prometheus serves the proxy's metrics merged with the app's (as Istio's prometheus.io/port merge). 0: no merge.", minimum=0, maximum=65535),
    Setting("app_metrics_path", str, "/metrics", "The app's metrics path on app_metrics_port."),
    Setting("app_pid_file", str, "", "For Jobs/CronJobs: a file holding the app's PID (e.g. written by `sh -c 'echo $$ > /run/app/pid; exec APP'` on a shared volume). Once that process has been seen running and is gone, the proxy shuts down as on /quitquitquit (readiness off, drain, exit 0). Checked every second. The proxy must see the app's processes: in Kubernetes set shareProcessNamespace: true. Empty: off."),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

LB_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV")
HASH_LB_POLICIES = ("RING_HASH", "MAGLEV")   # the ones that need a hash_policy
TRAFFIC_DIRECTIONS = ("UNSPECIFIED", "INBOUND", "OUTBOUND")

# Cluster names the proxy uses for traffic that matched no configured cluster (Istio's names).
PASSTHROUGH_CLUSTER = "PassthroughCluster"
INBOUND_PASSTHROUGH_CLUSTER = "InboundPassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
RESERVED_CLUSTERS = (PASSTHROUGH_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, BLACKHOLE_CLUSTER)


def hostport(ip: str, port: int) -> str:
    """'10.0.0.1:80' or '[2001:db8::1]:80': an address as users and Envoy write it."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class SocketAddress:
    ip: str
    port: int

    def __str__(self) -> str:
        return hostport(self.ip, self.port)


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: SocketAddress
    weight: int = 1


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """What RING_HASH and MAGLEV hash (one of): a request header's value, a
    cookie's value, or the client's address (Envoy's RouteAction.HashPolicy)."""
    header: str | None = None      # lower-cased
    cookie: str | None = None
    source_ip: bool = False

    def to_doc(self) -> dict:
        if self.header is not None:
            return {"header": self.header}
        if self.cookie is not None:
            return {"cookie": self.cookie}
        return {"source_ip": True}


def _istio_breakers() -> Breakers:
    from ..policy.breakers import ISTIO_DEFAULT   # late: policy imports this module
    return ISTIO_DEFAULT


@dataclass(frozen=True, slots=True)
class Cluster:
    """A cluster; the load-balancer fields keep Envoy's names and defaults
    (choice_count: least_request_lb_config; minimum/maximum_ring_size:
    ring_hash_lb_config; maglev_table_size: maglev_lb_config;
    healthy_panic_threshold: common_lb_config, percent, 0 = never panic)."""
    name: str
    endpoints: tuple[Endpoint, ...]
    connect_timeout_ms: int | None = None
    lb_policy: str = "ROUND_ROBIN"
    hash_policy: HashPolicy | None = None    # set exactly for HASH_LB_POLICIES
    choice_count: int = 2
    minimum_ring_size: int = 1024
    maximum_ring_size: int = 8388608
    maglev_table_size: int = 65537
    healthy_panic_threshold: float = 50.0
    breakers: Breakers = field(default_factory=_istio_breakers)
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None   # health_checks[0]


@dataclass(frozen=True, slots=True)
class TcpProxy:
    cluster: str


@dataclass(frozen=True, slots=True)
class HttpProxy:
    """An explicit HTTP/1.1 listener: each request is routed by virtual_services."""
    cluster: str | None = None  # for requests no route matches; None: 404 with flag NR


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: SocketAddress
    additional_addresses: tuple[SocketAddress, ...] = ()
    bind_to_port: bool = True
    use_original_dst: bool = False
    traffic_direction: str = "UNSPECIFIED"
    tcp_proxy: TcpProxy | None = None
    http: HttpProxy | None = None
    # HTTP (http and capture listeners): None = settings.http_request_headers_timeout_ms; 0 = none
    request_headers_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Config:
    settings: dict[str, Any]
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...] = field(default=())
    # VirtualService documents as given (JSON data), validated by
    # routing.http.compile_virtual_services; the routing table carries them.
    virtual_services: tuple[dict[str, Any], ...] = ()
