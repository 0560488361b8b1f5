"""Span encoding (fastproxy/observe/spans.py): Zipkin v2 JSON and OTLP/HTTP
JSON from hand-made records, against golden files, and the exporter's
bounded queue.

Regenerate the golden files with FASTPROXY_UPDATE_GOLDEN=1, then read every diff by eye.
"""
import asyncio
import os
from pathlib import Path

import orjson
import pytest

from fastproxy.observe import record as R
from fastproxy.observe.exporter import SpanExporter, parse_collector
from fastproxy.observe.spans import (
    OTLP_CLIENT,
    OTLP_SERVER,
    otlp,
    sampled,
    span_name,
    zipkin,
)
from fastproxy.stats.names import G_SPANS_DROPPED
from tests.unit.test_accesslog import TRACE, _Counters, names, rec

GOLDEN = Path(__file__).parent / "golden" / "accesslog"
UPDATE = os.environ.get("FASTPROXY_UPDATE_GOLDEN") == "1"

RECORDS = [
    # outbound, with an incoming parent
    rec(listener=16, original_dst=b"10.96.0.5:9080", trace=TRACE, span=b"00f067aa0ba902b7",
        parent=b"b7ad6b7169203331", sampled=True),
    # inbound, trace started here (no parent), a 503
    rec(listener=32, status=503, flags=R.FLAG_UF, trace=b"0af7651916cd43dd8448eb211c80319c",
        span=b"b9c7c989f97918e1", sampled=True, cluster=80, path=b"/"),
    # not sampled, and no trace context: no span
    rec(trace=TRACE, span=b"1111111111111111", sampled=False),
    rec(sampled=True),
]


def _golden(name: str, doc) -> None:
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{name} missing; FASTPROXY_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), f"{name} differs; FASTPROXY_UPDATE_GOLDEN=1 regenerates"


def test_only_sampled_records_with_a_trace_make_spans():
    assert sampled(RECORDS) == RECORDS[:2]


def test_zipkin_golden():
    doc = orjson.loads(zipkin(sampled(RECORDS), names(), "productpage-v1", "default"))
    assert [s["kind"] for s in doc] == ["CLIENT", "SERVER"]
    assert doc[0]["parentId"] == "b7ad6b7169203331" and doc[0]["id"] == "00f067aa0ba902b7"
    assert "parentId" not in doc[1]
    assert doc[1]["tags"]["error"] == "true" and doc[1]["tags"]["response_flags"] == "UF"
    assert all(isinstance(v, str) for s in doc for v in s["tags"].values())
    _golden("zipkin.json", doc)


def test_otlp_golden():
    doc = orjson.loads(otlp(sampled(RECORDS), names(), "productpage-v1", "default"))
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert [s["kind"] for s in spans] == [OTLP_CLIENT, OTLP_SERVER]
    assert spans[0]["parentSpanId"] == "b7ad6b7169203331" and spans[0]["traceId"] == TRACE.decode()
    assert int(spans[0]["endTimeUnixNano"]) - int(spans[0]["startTimeUnixNano"]) == 12_345_000
    assert spans[1]["status"] == {"code": 2}
    doc["resourceSpans"][0]["scopeSpans"][0]["scope"]["version"] = "VERSION"
    _golden("otlp.json", doc)


def test_span_name_drops_the_query():
    assert span_name(rec()) == "reviews:9080/api/v1/items"
    assert span_name(rec(authority=b"", path=b"")) == "GET"


@pytest.mark.parametrize("text,fmt,want", [
    ("127.0.0.1:9411", "zipkin", ("127.0.0.1", 9411, "/api/v2/spans")),
    ("collector:4318", "otlp", ("collector", 4318, "/v1/traces")),
    ("http://[::1]:4318/custom/path", "otlp", ("::1", 4318, "/custom/path")),
])
def test_parse_collector(text, fmt, want):
    assert parse_collector(text, fmt) == want


def test_parse_collector_refuses_no_port():
    with pytest.raises(ValueError):
        parse_collector("collector", "zipkin")


def test_exporter_queue_is_bounded_and_a_dead_collector_counts_drops():
    async def scenario():
        loop = asyncio.get_running_loop()
        ctr = _Counters()
        # a port nobody listens on: connect fails, every batch is dropped and counted
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        ex = SpanExporter(loop, f"127.0.0.1:{port}", "zipkin", ctr, names(), "svc",
                          batch_size=10, interval=0.0, max_queue=25)
        ex.add(sampled(RECORDS) * 20)     # 40 spans: 25 fit, 15 dropped at once; a batch of 10 leaves
        assert ctr.slots[G_SPANS_DROPPED] == 15
        while ex.task is not None or ex.queue:
            ex.tick()
            await asyncio.sleep(0.01)
        assert ex.exported == 0 and ctr.slots[G_SPANS_DROPPED] == 40

    asyncio.run(scenario())
