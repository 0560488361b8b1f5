"""Spans from request records, encoded for a collector. Pure.

One span per sampled record: the proxy's own span (record's span_id, the id
it forwarded upstream as the new parent), child of the incoming span
(parent_span_id, when a trace context came in). Kind CLIENT on outbound and
explicit listeners, SERVER on inbound capture listeners.

- zipkin(): Zipkin v2 JSON (POST /api/v2/spans): a list of spans with
  timestamp/duration in µs and string tags.
- otlp(): OTLP/HTTP JSON (POST /v1/traces): resourceSpans -> scopeSpans ->
  spans, ids in hex (the OTLP JSON mapping's exception), times in ns as
  strings, kind 2 SERVER / 3 CLIENT, status ERROR on 5xx or no response.
"""
from __future__ import annotations

import orjson

from .. import __version__
from .record import (
    AUTHORITY,
    BYTES_RECEIVED,
    BYTES_SENT,
    CLUSTER_BLOCK,
    DURATION_US,
    FLAGS,
    LISTENER_BLOCK,
    METHOD,
    PARENT_SPAN_ID,
    PATH,
    PEER,
    PROTOCOL,
    REQUEST_ID,
    SAMPLED,
    SPAN_ID,
    START_US,
    STATUS,
    TRACE_ID,
    UPSTREAM_HOST,
    USER_AGENT,
    BlockNames,
    response_flags,
)

ZIPKIN_PATH = "/api/v2/spans"
OTLP_PATH = "/v1/traces"
OTLP_SERVER = 2
OTLP_CLIENT = 3
OTLP_STATUS_ERROR = 2


def sampled(records: list) -> list:
    """The records that make spans: a trace id and a sampled decision."""
    return [r for r in records if r[SAMPLED] and r[TRACE_ID]]


def _s(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def span_name(r) -> str:
    """As Envoy names a span without a route decorator: authority and path, without the query."""
    path = r[PATH].split(b"?", 1)[0]
    return _s(r[AUTHORITY] + path) if r[AUTHORITY] or path else _s(r[METHOD]) or "-"


def _tags(r, names: BlockNames) -> dict[str, str]:
    status = r[STATUS]
    tags = {
        "component": "proxy",
        "http.method": _s(r[METHOD]),
        "http.url": f"http://{_s(r[AUTHORITY])}{_s(r[PATH])}",
        "http.protocol": _s(r[PROTOCOL]),
        "http.status_code": str(status),
        "response_flags": response_flags(r[FLAGS]),
        "request_size": str(r[BYTES_RECEIVED]),
        "response_size": str(r[BYTES_SENT]),
        "upstream_cluster": names.cluster(r[CLUSTER_BLOCK]) or "-",
        "guid:x-request-id": _s(r[REQUEST_ID]),
        "user_agent": _s(r[USER_AGENT]),
        "peer.address": _s(r[PEER]),
    }
    if r[UPSTREAM_HOST]:
        tags["upstream_address"] = _s(r[UPSTREAM_HOST])
    if status >= 500 or status == 0:
        tags["error"] = "true"
    return tags


def zipkin(records: list, names: BlockNames, service: str, namespace: str = "") -> bytes:
    """Zipkin v2 JSON for the given (sampled) records."""
    local = {"serviceName": service}
    spans = []
    for r in records:
        tags = _tags(r, names)
        if namespace:
            tags["istio.namespace"] = namespace
        span = {"traceId": r[TRACE_ID].decode(), "id": r[SPAN_ID].decode(), "name": span_name(r),
                "kind": "SERVER" if r[LISTENER_BLOCK] in names.inbound else "CLIENT",
                "timestamp": r[START_US], "duration": max(1, r[DURATION_US]),
                "localEndpoint": local, "tags": tags}
        if r[PARENT_SPAN_ID]:
            span["parentId"] = r[PARENT_SPAN_ID].decode()
        spans.append(span)
    return orjson.dumps(spans)


def _attr(key: str, value: str) -> dict:
    return {"key": key, "value": {"stringValue": value}}


def otlp(records: list, names: BlockNames, service: str, namespace: str = "") -> bytes:
    """OTLP/HTTP JSON (ExportTraceServiceRequest) for the given (sampled) records."""
    spans = []
    for r in records:
        start_ns = r[START_US] * 1000
        tags = _tags(r, names)
        error = tags.pop("error", None)
        span = {"traceId": r[TRACE_ID].decode(), "spanId": r[SPAN_ID].decode(), "name": span_name(r),
                "kind": OTLP_SERVER if r[LISTENER_BLOCK] in names.inbound else OTLP_CLIENT,
                "startTimeUnixNano": str(start_ns),
                "endTimeUnixNano": str(start_ns + max(1, r[DURATION_US]) * 1000),
                "attributes": [_attr(k, v) for k, v in tags.items()]}
        if r[PARENT_SPAN_ID]:
            span["parentSpanId"] = r[PARENT_SPAN_ID].decode()
        if error:
            span["status"] = {"code": OTLP_STATUS_ERROR}
        spans.append(span)
    resource = [_attr("service.name", service)]
    if namespace:
        resource.append(_attr("service.namespace", namespace))
    return orjson.dumps({"resourceSpans": [{
        "resource": {"attributes": resource},
        "scopeSpans": [{"scope": {"name": "fastproxy", "version": __version__}, "spans": spans}],
    }]})


ENCODERS = {"zipkin": (zipkin, ZIPKIN_PATH), "otlp": (otlp, OTLP_PATH)}
