"""Istio's standard metrics, from the series areas of the worker regions. Pure.

Each worker keeps its own series (stats/names.py: "The Istio series area"):
the same KEY sits at different offsets in different workers, so series are
summed by KEY (sum_series), then turned into labelled samples (samples):

    istio_requests_total                  counter    HTTP
    istio_request_duration_milliseconds   histogram  HTTP (Istio's buckets)
    istio_request_bytes                   histogram  HTTP (request body bytes)
    istio_response_bytes                  histogram  HTTP (response body bytes)
    istio_tcp_connections_opened_total    counter    TCP
    istio_tcp_connections_closed_total    counter    TCP
    istio_tcp_received_bytes_total        counter    TCP (from downstream)
    istio_tcp_sent_bytes_total            counter    TCP (to downstream)

Labels, as Istio's telemetry sets them for a proxy without mTLS:
- reporter: "destination" on inbound listeners (capture listeners not
  OUTBOUND, and explicit listeners declared INBOUND), else "source";
- source_workload[_namespace]: this proxy's (settings) when reporting as
  source, "unknown" as destination; destination_workload[_namespace]: the
  other way round;
- destination_service: as destination, settings.service_name; as source,
  the cluster's name (Istio's service host), "PassthroughCluster" or
  "BlackHoleCluster" for traffic no cluster describes (the original
  destination is not part of the series key), "unknown" when the request
  never reached a cluster (a 404 NR, a direct response, a parse error);
- request_protocol: "http" or "tcp";
- response_code (HTTP only): the status sent to the client, "0" if none;
- response_flags: Envoy's letters joined with "," ("-" for none; always "-"
  on TCP series);
- connection_security_policy: "unknown" as source (Istio's value), "none"
  as destination (no mTLS yet).

Keys that end up with the same labels (e.g. two outbound listeners to one
cluster) are summed. A SeriesCap bounds the label sets rendered per metric.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import add

from .names import (
    BLOCK,
    BYTES_BOUNDS,
    DURATION_BOUNDS_MS,
    KEY_TCP,
    S_DURATION,
    S_DURATION_SUM_US,
    S_REQUEST_BYTES,
    S_REQUEST_BYTES_SUM,
    S_REQUESTS,
    S_RESPONSE_BYTES,
    S_RESPONSE_BYTES_SUM,
    T_CLOSED,
    T_OPENED,
    T_RX_BYTES,
    T_TX_BYTES,
    Metric,
    response_flags,
)
from .prometheus import Histogram, Sample

SOURCE = "source"
DESTINATION = "destination"
UNKNOWN = "unknown"

# H1_F_* bits (csrc/h1proxy.h) and Envoy's letters, in Envoy's flag order.

REQUESTS = Metric("istio_requests_total", "counter", "Requests proxied, by Istio's standard labels.")
DURATION = Metric("istio_request_duration_milliseconds", "histogram",
                  "Request duration: from the request head received to the last response byte sent, in ms.")
REQUEST_BYTES = Metric("istio_request_bytes", "histogram", "Request body sizes, in bytes.")
RESPONSE_BYTES = Metric("istio_response_bytes", "histogram", "Response body sizes, in bytes.")
TCP_OPENED = Metric("istio_tcp_connections_opened_total", "counter", "TCP connections relayed: opened.")
TCP_CLOSED = Metric("istio_tcp_connections_closed_total", "counter", "TCP connections relayed: closed.")
TCP_RECEIVED = Metric("istio_tcp_received_bytes_total", "counter", "Bytes received from downstream on TCP connections.")
TCP_SENT = Metric("istio_tcp_sent_bytes_total", "counter", "Bytes sent to downstream on TCP connections.")
SERIES_DROPPED = Metric("fastproxy_metric_series_dropped_total", "counter",
                        "Label sets of an Istio metric not rendered because the metric had its cap "
                        "(max_series_per_worker x workers) of label sets already.")

HTTP_METRICS = (REQUESTS, DURATION, REQUEST_BYTES, RESPONSE_BYTES)
TCP_METRICS = (TCP_OPENED, TCP_CLOSED, TCP_RECEIVED, TCP_SENT)

HTTP_LABELS = ("reporter", "source_workload", "source_workload_namespace", "destination_workload",
               "destination_workload_namespace", "destination_service", "request_protocol", "response_code",
               "response_flags", "connection_security_policy")
TCP_LABELS = tuple(n for n in HTTP_LABELS if n != "response_code")

# Destinations no configured cluster describes keep their cluster's name.
_UNDESCRIBED = ("PassthroughCluster", "BlackHoleCluster")


@dataclass(frozen=True, slots=True)
class Identity:
    """This proxy's workload identity (settings workload_name, workload_namespace, service_name)."""
    workload: str
    namespace: str
    service: str

    @classmethod
    def from_settings(cls, settings: Mapping) -> Identity:
        return cls(settings["workload_name"], settings["workload_namespace"], settings["service_name"])


def decode_key(key: int) -> tuple[bool, int, int, int, int]:
    """(is_tcp, listener_block, cluster_block, flags, status) of a series KEY."""
    return (bool(key & KEY_TCP), ((key >> 42) & 0xFFFFF) * BLOCK, ((key >> 24) & 0x3FFFF) * BLOCK,
            (key >> 10) & 0x3FFF, key & 0x3FF)


def reporter_of(listener) -> str:
    """A config Listener's reporter label (see the module doc)."""
    inbound = listener.traffic_direction == "INBOUND" or (
        listener.use_original_dst and listener.traffic_direction != "OUTBOUND")
    return DESTINATION if inbound else SOURCE


def sum_series(regions: Iterable[Iterable[tuple[int, ...]]]) -> dict[int, list[int]]:
    """Sums series by KEY across worker regions: KEY -> [KEY, slot 1 sum, slot 2 sum, ...]."""
    out: dict[int, list[int]] = {}
    for region in regions:
        for s in region:
            acc = out.get(s[0])
            if acc is None:
                out[s[0]] = list(s)
            else:
                key = acc[0]
                acc[:] = map(add, acc, s)
                acc[0] = key
    return out


class SeriesCap:
    """Admits at most `cap` label sets per metric group, first come first
    served, so a rendered series never disappears and the output stays
    bounded. Label sets refused are remembered (bounded by the workers'
    own caps) and counted once each."""

    def __init__(self, cap: int):
        self.cap = cap
        self.admitted: dict[str, set] = {}
        self.dropped: dict[str, set] = {}

    def admit(self, group: str, labels: tuple) -> bool:
        admitted = self.admitted.setdefault(group, set())
        if labels in admitted:
            return True
        if len(admitted) < self.cap:
            admitted.add(labels)
            return True
        self.dropped.setdefault(group, set()).add(labels)
        return False

    def dropped_count(self, group: str) -> int:
        return len(self.dropped.get(group, ()))


def _labels(reporter: str, ident: Identity, cluster_name: str | None, protocol: str) -> list[str]:
    if reporter == DESTINATION:
        return [DESTINATION, UNKNOWN, UNKNOWN, ident.workload, ident.namespace, ident.service, protocol]
    service = cluster_name if cluster_name is not None else UNKNOWN
    return [SOURCE, ident.workload, ident.namespace, UNKNOWN, UNKNOWN, service, protocol]


def _policy(reporter: str) -> str:
    return "none" if reporter == DESTINATION else UNKNOWN


def samples(series: Mapping[int, list[int]], reporters: Mapping[int, str], clusters: Mapping[int, str],
            ident: Identity, cap: SeriesCap) -> list[Sample]:
    """The Istio samples of summed series.

    reporters: listener block -> reporter (blocks not in it report as source);
    clusters: cluster block -> cluster name."""
    http: dict[tuple, list[int]] = {}
    tcp: dict[tuple, list[int]] = {}
    for key, v in series.items():
        is_tcp, lb, cb, flags, status = decode_key(key)
        reporter = reporters.get(lb, SOURCE)
        cluster = clusters.get(cb) if cb else None
        if is_tcp:
            labels = tuple(_labels(reporter, ident, cluster, "tcp") + ["-", _policy(reporter)])
            into, width = tcp, T_TX_BYTES + 1
        else:
            labels = tuple(_labels(reporter, ident, cluster, "http")
                           + [str(status), response_flags(flags), _policy(reporter)])
            into, width = http, S_RESPONSE_BYTES_SUM + 1
        acc = into.get(labels)
        if acc is None:
            into[labels] = list(v[:width])
        else:
            acc[:] = map(add, acc, v[:width])

    out: list[Sample] = []
    dur_n, bytes_n = len(DURATION_BOUNDS_MS), len(BYTES_BOUNDS)
    rendered = {m.name: [] for m in HTTP_METRICS + TCP_METRICS}
    for labels in sorted(http):
        if not cap.admit("http", labels):
            continue
        v = http[labels]
        d = dict(zip(HTTP_LABELS, labels))
        rendered[REQUESTS.name].append((REQUESTS, d, v[S_REQUESTS]))
        rendered[DURATION.name].append((DURATION, d, Histogram(
            DURATION_BOUNDS_MS, tuple(v[S_DURATION:S_DURATION + dur_n]), v[S_DURATION_SUM_US] / 1000)))
        rendered[REQUEST_BYTES.name].append((REQUEST_BYTES, d, Histogram(
            BYTES_BOUNDS, tuple(v[S_REQUEST_BYTES:S_REQUEST_BYTES + bytes_n]), v[S_REQUEST_BYTES_SUM])))
        rendered[RESPONSE_BYTES.name].append((RESPONSE_BYTES, d, Histogram(
            BYTES_BOUNDS, tuple(v[S_RESPONSE_BYTES:S_RESPONSE_BYTES + bytes_n]), v[S_RESPONSE_BYTES_SUM])))
    for labels in sorted(tcp):
        if not cap.admit("tcp", labels):
            continue
        v = tcp[labels]
        d = dict(zip(TCP_LABELS, labels))
        for m, off in ((TCP_OPENED, T_OPENED), (TCP_CLOSED, T_CLOSED), (TCP_RECEIVED, T_RX_BYTES),
                       (TCP_SENT, T_TX_BYTES)):
            rendered[m.name].append((m, d, v[off]))
    for group in rendered.values():
        out.extend(group)
    for m in HTTP_METRICS:
        out.append((SERIES_DROPPED, {"metric": m.name}, cap.dropped_count("http")))
    for m in TCP_METRICS:
        out.append((SERIES_DROPPED, {"metric": m.name}, cap.dropped_count("tcp")))
    return out
