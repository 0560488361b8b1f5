"""Issue 6, acceptance 3: trace propagation and span export through a real proxy.

A request carrying W3C traceparent, B3 multi-header or B3 single-header
context leaves with the same trace id and a new span id (the new parent the
upstream sees), and a local collector (a tiny HTTP server here, on
127.0.0.1) receives the proxy's span: same trace, parentId = the incoming
span id, id = the span id the upstream saw. A request without context
starts a trace (trace_sampling 100) and its span has no parent. Both export
formats: Zipkin v2 JSON and OTLP/HTTP JSON.
"""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.http_upstreams import HttpUpstream, get, start_http_proxy
from tests.support.polling import poll_until

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Collector:
    """Accepts POSTed span batches; spans() flattens them to (trace, id, parent, kind, name) dicts."""

    def __init__(self):
        self.bodies: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.bodies.append((self.path, body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[dict]:
        out = []
        with self.lock:
            bodies = list(self.bodies)
        for path, body in bodies:
            doc = json.loads(body)
            if path == "/api/v2/spans":
                for s in doc:
                    out.append({"trace": s["traceId"], "id": s["id"], "parent": s.get("parentId"),
                                "kind": s["kind"], "name": s["name"], "status": s["tags"]["http.status_code"]})
            elif path == "/v1/traces":
                for rs in doc["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        for s in ss["spans"]:
                            attrs = {a["key"]: a["value"]["stringValue"] for a in s["attributes"]}
                            out.append({"trace": s["traceId"], "id": s["spanId"], "parent": s.get("parentSpanId"),
                                        "kind": {2: "SERVER", 3: "CLIENT"}[s["kind"]], "name": s["name"],
                                        "status": attrs["http.status_code"]})
            else:
                raise AssertionError(f"unexpected collector path {path}")
        return out


def _upstream_headers(up: HttpUpstream, path: str) -> dict[str, str]:
    recs = [r for r in up.records_since(0) if r["target"] == path]
    assert len(recs) == 1, recs
    return {n.lower(): v for n, v in recs[0]["headers"]}


@pytest.fixture(params=["zipkin", "otlp"])
def traced(request, start_proxy):
    with Collector() as collector, HttpUpstream("backend") as up:
        proxy, port, _ = start_http_proxy(start_proxy, {"backend": up.address}, default_cluster="backend",
                                          tracing=True, trace_sampling=100.0,
                                          trace_collector=f"127.0.0.1:{collector.port}",
                                          trace_format=request.param, workload_name="productpage-v1")
        yield proxy, port, up, collector


def _span(collector: Collector, trace: str, count: int = 1) -> list[dict]:
    return poll_until(lambda: (s if len(s := [x for x in collector.spans() if x["trace"] == trace]) >= count
                               else None), timeout=10, message=f"{count} span(s) of trace {trace}")


def test_traceparent_keeps_the_trace_and_gets_a_new_parent(traced):
    _, port, up, collector = traced
    r = get(port, "/w3c", "svc.local", {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "k=v"})
    assert r.status == 200
    h = _upstream_headers(up, "/w3c")
    version, trace, span, flags = h["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert HEX16.match(span) and span != PARENT
    assert h["tracestate"] == "k=v"
    [s] = _span(collector, TRACE)
    assert s["parent"] == PARENT and s["id"] == span and s["kind"] == "CLIENT"
    assert s["name"] == "svc.local/w3c" and s["status"] == "200"


def test_b3_multi_header_is_handled_the_same_way(traced):
    _, port, up, collector = traced
    trace = "463ac35c9f6413ad48485a3953bb6124"
    r = get(port, "/b3", "svc.local", {"x-b3-traceid": trace, "x-b3-spanid": "a2fb4a1d1a96d312",
                                        "x-b3-sampled": "1"})
    assert r.status == 200
    h = _upstream_headers(up, "/b3")
    assert h["x-b3-traceid"] == trace
    assert HEX16.match(h["x-b3-spanid"]) and h["x-b3-spanid"] != "a2fb4a1d1a96d312"
    assert h["x-b3-parentspanid"] == "a2fb4a1d1a96d312"
    assert h["x-b3-sampled"] == "1"
    [s] = _span(collector, trace)
    assert s["parent"] == "a2fb4a1d1a96d312" and s["id"] == h["x-b3-spanid"]


def test_b3_single_header_is_handled_the_same_way(traced):
    _, port, up, collector = traced
    trace = "80f198ee56343ba864fe8b2a57d3eff7"
    r = get(port, "/b3s", "svc.local", {"b3": f"{trace}-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"})
    assert r.status == 200
    h = _upstream_headers(up, "/b3s")
    t, span, sampled, parent = h["b3"].split("-")
    assert (t, sampled, parent) == (trace, "1", "e457b5a2e4d86bd1")
    assert HEX16.match(span) and span != "e457b5a2e4d86bd1"
    [s] = _span(collector, trace)
    assert s["parent"] == "e457b5a2e4d86bd1" and s["id"] == span


def test_a_request_without_context_starts_a_sampled_trace(traced):
    _, port, up, collector = traced
    r = get(port, "/new", "svc.local")
    assert r.status == 200
    h = _upstream_headers(up, "/new")
    _, trace, span, flags = h["traceparent"].split("-")
    assert HEX32.match(trace) and HEX16.match(span) and flags == "01"
    assert h["x-b3-traceid"] == trace and h["x-b3-spanid"] == span and h["x-b3-sampled"] == "1"
    [s] = _span(collector, trace)
    assert s["parent"] is None and s["id"] == span


def test_unsampled_context_is_propagated_but_not_exported(traced):
    _, port, up, collector = traced
    trace = "0af7651916cd43dd8448eb211c80319c"
    assert get(port, "/unsampled", "svc.local", {"traceparent": f"00-{trace}-b7ad6b7169203331-00"}).status == 200
    h = _upstream_headers(up, "/unsampled")
    assert h["traceparent"].startswith(f"00-{trace}-") and h["traceparent"].endswith("-00")
    # A sampled request after it is exported; the unsampled one never is.
    assert get(port, "/after", "svc.local", {"traceparent": f"00-{TRACE}-{PARENT}-01"}).status == 200
    _span(collector, TRACE)
    assert not [s for s in collector.spans() if s["trace"] == trace]
