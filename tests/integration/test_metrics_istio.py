"""Issue 6, acceptance 1: Istio's standard metrics from a real proxy with 2
workers, after a scripted load of known counts, equal the truth exactly;
every metric endpoint (15090, 15000, 15020; text and OpenMetrics) parses
with prometheus_client's parsers.

Load: 1,000 HTTP requests on 20 keep-alive connections (900 answered 200 by
the upstream, 100 answered 503), and 10 TCP connections of 1 MiB each
through an echo upstream. Each worker's own series are read from shared
memory too, to show that the scrape is the sum over both workers."""
import http.client
import http.server
import threading
from itertools import pairwise

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as om_families,
)

from fastproxy._native.shm import CounterSegment
from fastproxy.config.schema import SETTINGS_BY_NAME
from fastproxy.stats.names import S_REQUESTS, SERIES_WIDTH, T_OPENED, series_area
from tests.support.admin_client import AdminClient
from tests.support.echo_server import EchoServer
from tests.support.http_upstreams import HttpUpstream, http_listener
from tests.support.metrics import Metrics
from tests.support.polling import poll_until
from tests.support.ports import free_port, free_ports
from tests.support.proxy_config import (
    cluster,
    hermetic_settings,
    proxy_config,
    tcp_listener,
)
from tests.support.tcp_client import connect, stream_through

CLIENTS, PER_CLIENT, FAIL_EVERY = 20, 50, 10      # 1,000 requests, every 10th answered 503
TCP_CONNECTIONS, MIB = 10, 1 << 20
OM_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
             "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
IDENTITY = {"workload_name": "productpage-v1", "workload_namespace": "bookinfo",
            "service_name": "productpage.bookinfo.svc.cluster.local"}


def scrape(port: int, accept: str | None = None, path: str = "/stats/prometheus") -> tuple[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, (resp.status, body[:300])
        return resp.getheader("Content-Type"), body
    finally:
        conn.close()


def send_requests(port: int) -> list[str]:
    errors: list[str] = []

    def client(cid: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            for i in range(PER_CLIENT):
                fail = i % FAIL_EVERY == 0
                conn.request("GET", "/_/status?code=503" if fail else f"/ok/{cid}/{i}",
                             headers={"Host": "productpage.local"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != (503 if fail else 200):
                    errors.append(f"client {cid} #{i}: {resp.status}")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(f"client {cid}: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def stream_tcp(port: int) -> list[dict]:
    results = []
    for seed in range(TCP_CONNECTIONS):
        with connect("127.0.0.1", port, timeout=15) as s:
            results.append(stream_through(s, MIB, seed))
    return results


@pytest.fixture
def loaded_proxy(start_proxy):
    """A 2-worker proxy with an HTTP and a TCP listener, after the load."""
    stats, merged = free_ports(2)
    http_port, tcp_port = free_ports(2)
    with HttpUpstream("backend") as up, EchoServer() as echo:
        settings = hermetic_settings(workers=2, stats_port=stats, merged_metrics_port=merged, **IDENTITY)
        doc = proxy_config(settings, [http_listener("web", http_port, "backend"), tcp_listener("tcp", tcp_port, "echo")],
                           [cluster("backend", up.address), cluster("echo", echo.address)])
        proxy = start_proxy(doc)
        errors = send_requests(http_port)
        assert not errors, errors[:10]
        for r in stream_tcp(tcp_port):
            assert r["received"] == MIB and r["received_sha256"] == r["sent_sha256"], r
        yield proxy, stats, merged, doc


def istio(m: Metrics, name: str, **labels) -> float:
    return m.value(name, **labels)


def test_istio_counts_equal_the_truth_summed_over_two_workers(loaded_proxy):
    proxy, stats, _, doc = loaded_proxy
    total = CLIENTS * PER_CLIENT
    fails = CLIENTS * PER_CLIENT // FAIL_EVERY

    def settled():
        m = Metrics(scrape(stats)[1])
        done = (m.value_or_zero("istio_requests_total") == total
                and m.value_or_zero("istio_tcp_connections_closed_total") == TCP_CONNECTIONS)
        return m if done else None

    m = poll_until(settled, timeout=10, message="all requests and TCP connections counted")
    src = {"reporter": "source", "source_workload": "productpage-v1", "source_workload_namespace": "bookinfo",
           "destination_service": "backend", "request_protocol": "http", "response_flags": "-",
           "destination_workload": "unknown", "connection_security_policy": "unknown"}
    assert istio(m, "istio_requests_total", response_code="200", **src) == total - fails
    # Istio's default retry policy retried each 503 twice, then passed it on:
    # Envoy's URX (retry limit exceeded)
    assert istio(m, "istio_requests_total", response_code="503", **{**src, "response_flags": "URX"}) == fails
    assert len(m.matching("istio_requests_total")) == 2       # exactly these two series
    for code, n in (("200", total - fails), ("503", fails)):
        for h in ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"):
            assert istio(m, f"{h}_count", response_code=code) == n, h
            buckets = sorted((float(s.labels["le"]), s.value) for s in m.matching(f"{h}_bucket", response_code=code))
            assert buckets[-1] == (float("inf"), n), h
            assert all(a[1] <= b[1] for a, b in pairwise(buckets)), (h, buckets)   # cumulative
        assert istio(m, "istio_request_bytes_sum", response_code=code) == 0            # GETs carry no body
        assert istio(m, "istio_response_bytes_sum", response_code=code) > 0
        assert istio(m, "istio_request_duration_milliseconds_sum", response_code=code) > 0

    tcp = {"reporter": "source", "destination_service": "echo", "request_protocol": "tcp"}
    assert istio(m, "istio_tcp_connections_opened_total", **tcp) == TCP_CONNECTIONS
    assert istio(m, "istio_tcp_connections_closed_total", **tcp) == TCP_CONNECTIONS
    assert istio(m, "istio_tcp_received_bytes_total", **tcp) == TCP_CONNECTIONS * MIB
    assert istio(m, "istio_tcp_sent_bytes_total", **tcp) == TCP_CONNECTIONS * MIB
    assert m.value("fastproxy_metric_series_overflow_total") == 0

    # Both workers served requests: each region holds its own share, at its own offsets.
    base, nmax = series_area({name: doc["settings"].get(name, SETTINGS_BY_NAME[name].default)
                              for name in ("counter_slots", "max_series_per_worker")})
    with CounterSegment(f"/fastproxy-{proxy.pid}-counters") as seg:
        per_worker = []
        for w in range(seg.nworkers):
            series = seg.view(w).series(base, nmax, SERIES_WIDTH)
            per_worker.append(sum(s[S_REQUESTS] for s in series if not s[0] & (1 << 62)))
            tcp_opened = sum(s[T_OPENED] for s in series if s[0] & (1 << 62))
            assert tcp_opened <= TCP_CONNECTIONS
    assert sum(per_worker) == total and all(per_worker), per_worker


def test_every_endpoint_parses_in_both_formats(loaded_proxy):
    proxy, stats, merged, _ = loaded_proxy
    for port in (stats, proxy.admin.port, merged):
        ctype, text = scrape(port)
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        m = Metrics(text)
        assert m.value("istio_requests_total") > 0
        ctype, text = scrape(port, OM_ACCEPT)
        assert ctype.startswith("application/openmetrics-text; version=1.0.0"), ctype
        assert text.endswith("# EOF\n")
        fams = {f.name: f for f in om_families(text)}
        assert fams["istio_requests"].type == "counter"
        assert fams["istio_request_duration_milliseconds"].type == "histogram"
        assert sum(s.value for s in fams["istio_tcp_sent_bytes"].samples) == TCP_CONNECTIONS * MIB


def test_proxy_internals(loaded_proxy):
    _, stats, _, _ = loaded_proxy
    m = Metrics(scrape(stats)[1])
    for w in ("0", "1"):
        assert m.value("fastproxy_worker_resident_memory_bytes", worker=w) > 1 << 20
        assert m.value("fastproxy_worker_cpu_seconds_total", worker=w) > 0
        assert 0 <= m.value("fastproxy_worker_event_loop_lag_seconds", worker=w) < 5
    assert m.value("fastproxy_cluster_membership_healthy", cluster_name="backend") == 1
    assert m.value("fastproxy_listener_downstream_cx_total", listener_name="tcp") == TCP_CONNECTIONS
    fails = CLIENTS * PER_CLIENT // FAIL_EVERY
    # every 503 was tried 3 times (Istio's default: 2 retries on 503)
    assert m.value("fastproxy_cluster_upstream_rq_total", cluster_name="backend") == CLIENTS * PER_CLIENT + 2 * fails
    assert m.value("fastproxy_cluster_upstream_rq_retry_total", cluster_name="backend") == 2 * fails
    for name in ("fastproxy_request_records_dropped_total", "fastproxy_access_log_dropped_total",
                 "fastproxy_spans_dropped_total", "fastproxy_metric_series_dropped_total"):
        assert m.matching(name), name


class _AppMetrics(http.server.BaseHTTPRequestHandler):
    body = b"# HELP app_orders_total Orders.\n# TYPE app_orders_total counter\napp_orders_total 42\n"

    def do_GET(self):
        if self.path != "/custom/metrics":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_merged_port_appends_the_apps_metrics(start_proxy, echo_server):
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AppMetrics)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    try:
        merged, port = free_port(), free_port()
        settings = hermetic_settings(merged_metrics_port=merged, app_metrics_port=app.server_address[1],
                                     app_metrics_path="/custom/metrics")
        start_proxy(proxy_config(settings, [tcp_listener("tcp", port, "echo")], [cluster("echo", echo_server.address)]))
        m = Metrics(scrape(merged)[1])
        assert m.value("app_orders_total") == 42
        assert m.value("fastproxy_app_metrics_scrape_failures_total") == 0
        assert m.value("fastproxy_workers") == 2
    finally:
        app.shutdown()
        app.server_close()


def test_merged_port_without_an_app_serves_ours(start_proxy, echo_server):
    merged, port = free_port(), free_port()
    start_proxy(proxy_config(hermetic_settings(merged_metrics_port=merged), [tcp_listener("tcp", port, "echo")],
                             [cluster("echo", echo_server.address)]))
    _, text = scrape(merged, OM_ACCEPT)
    assert "fastproxy_workers" in {f.name for f in om_families(text)}
    assert AdminClient(merged).get("/metrics")[0] == 404


def test_an_upgraded_connection_is_counted_as_a_tcp_series(start_proxy):
    """A WebSocket upgrade: the handshake is an HTTP request (101), the rest a
    TCP relay of the same listener and cluster, with its bytes to and from the client."""
    import base64
    import os

    from tests.support.http_upstreams import (
        Reader,
        read_response,
        start_http_proxy,
        ws_frame,
        ws_read_frame,
    )

    with HttpUpstream("backend") as up:
        proxy, port, _ = start_http_proxy(start_proxy, {"backend": up.address}, default_cluster="backend")
        frames_out = ws_frame(0x2, b"x" * 1000, mask=b"abcd") + ws_frame(0x8, b"\x03\xe8", mask=b"wxyz")
        with connect("127.0.0.1", port, timeout=10) as s:
            r = Reader(s)
            s.sendall(b"GET /_/ws HTTP/1.1\r\nHost: svc.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
            assert read_response(r).status == 101
            s.sendall(frames_out)
            assert ws_read_frame(r)[1:3] == (0x2, b"x" * 1000)
            assert ws_read_frame(r)[1:3] == (0x8, b"\x03\xe8")
            assert r.read_to_eof() == b""
        m = poll_until(lambda: (m := proxy.admin.metrics()).value_or_zero(
            "istio_tcp_connections_closed_total", destination_service="backend") == 1 and m,
            timeout=5, message="the tunnel's TCP series closed")
        assert m.value("istio_requests_total", response_code="101", destination_service="backend") == 1
        assert m.value("istio_tcp_connections_opened_total", destination_service="backend") == 1
        assert m.value("istio_tcp_received_bytes_total", destination_service="backend") == len(frames_out)
        # the echo: the data frame unmasked (2 + 2 + 1000 bytes) and the close frame (2 + 2)
        assert m.value("istio_tcp_sent_bytes_total", destination_service="backend") == 1004 + 4


def test_series_past_the_cap_are_counted_as_overflow(start_proxy):
    """max_series_per_worker = 16 (the minimum), one worker: of 20 distinct
    status codes, the first 16 get a series, the other 4 requests are counted
    in fastproxy_metric_series_overflow_total instead."""
    from tests.support.http_upstreams import start_http_proxy

    codes = list(range(400, 420))
    with HttpUpstream("backend") as up:
        proxy, port, _ = start_http_proxy(start_proxy, {"backend": up.address}, default_cluster="backend",
                                          max_series_per_worker=16)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for code in codes:
            conn.request("GET", f"/_/status?code={code}", headers={"Host": "svc.local"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == code
        conn.close()
        m = poll_until(lambda: (m := proxy.admin.metrics()).value_or_zero("istio_requests_total")
                       + m.value_or_zero("fastproxy_metric_series_overflow_total") == len(codes) and m,
                       timeout=5, message="every request counted once")
        assert m.value("istio_requests_total") == 16
        assert {s.labels["response_code"] for s in m.matching("istio_requests_total")} == {str(c) for c in codes[:16]}
        assert m.value("fastproxy_metric_series_overflow_total") == 4
        assert m.value("fastproxy_metric_series_dropped_total") == 0
