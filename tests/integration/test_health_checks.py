"""Issue 5: active health checks, run by the manager of a real proxy (2
workers) against real upstream sockets.

An HTTP upstream whose /healthz can be flipped to 500, and a TCP port that
is closed and reopened. Asserted only on what the manager publishes: the
admin /clusters health_flags of each host and the Envoy health_check stats
(whether traffic then avoids the host is the HTTP path's test): the verdict
flips within the thresholds' worth of intervals, and comes back after
healthy_threshold passes.
"""
import http.server
import socket
import threading
import time

import pytest

from tests.support.polling import poll_until
from tests.support.ports import free_port
from tests.support.proxy_config import dump as dump_config
from tests.support.proxy_config import hermetic_settings, proxy_config

INTERVAL_MS = 300
SLACK_S = 0.6          # scheduling noise on a shared CI machine, on top of the intervals
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 2


class FlippableUpstream:
    """An HTTP/1.1 server on 127.0.0.1 answering GET /healthz with `status`
    (200 until flipped), and remembering each request's path and headers."""

    def __init__(self):
        self.status = 200
        self.requests: list[tuple[str, dict]] = []
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's name
                upstream.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                body = b"ok\n" if upstream.status == 200 else b"failing\n"
                self.send_response(upstream.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class TcpPort:
    """A TCP listener on a fixed port that accepts and closes; close() and
    open() take it away and bring it back on the same port."""

    def __init__(self):
        self.port = free_port()
        self.sock = None
        self.thread = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.sock = s
        self.thread = threading.Thread(target=self._accept, args=(s,), daemon=True)
        self.thread.start()

    def _accept(self, s):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            c.close()

    def close(self):
        s, self.sock = self.sock, None
        if s is not None:
            s.shutdown(socket.SHUT_RDWR)
            s.close()
            self.thread.join(timeout=5)

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


def health_check(kind: str, **over) -> list[dict]:
    hc = {"interval_ms": INTERVAL_MS, "timeout_ms": 250, "healthy_threshold": HEALTHY_THRESHOLD,
          "unhealthy_threshold": UNHEALTHY_THRESHOLD}
    if kind == "http":
        hc["http_health_check"] = {"path": "/healthz"}
    else:
        hc["tcp_health_check"] = {}
    hc.update(over)
    return [hc]


def clusters_page(admin) -> dict[tuple[str, str, str], str]:
    """/clusters text as {(cluster, host, stat): value} for the per-host lines."""
    status, body = admin.get("/clusters")
    assert status == 200, body
    out = {}
    for line in body.decode().splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[1] != "default_priority":
            out[(parts[0], parts[1], parts[2])] = parts[3]
    return out


def flags(admin, cluster: str, address: str) -> str:
    return clusters_page(admin)[(cluster, address, "health_flags")]


def wait_flags(admin, cluster, address, want, timeout) -> float:
    """Seconds until the host's health_flags read `want`."""
    t0 = time.monotonic()
    poll_until(lambda: flags(admin, cluster, address) == want, timeout=timeout, interval=0.01,
               message=f"{cluster} {address} health_flags {want}")
    return time.monotonic() - t0


def hc_stat(admin, cluster: str, what: str) -> float:
    m = admin.metrics()
    name = "fastproxy_cluster_health_check_healthy" if what == "healthy" else \
        f"fastproxy_cluster_health_check_{what}_total"
    return m.value(name, cluster_name=cluster)


def flip_deadline(threshold: int) -> float:
    """The verdict flips after `threshold` checks in a row: the first within one
    interval of the change, the others one interval apart."""
    return threshold * INTERVAL_MS / 1000 + SLACK_S


@pytest.mark.slow
def test_http_health_check_fails_a_host_and_brings_it_back(start_proxy):
    with FlippableUpstream() as a, FlippableUpstream() as b:
        doc = proxy_config(hermetic_settings(workers=2), None, [
            {"name": "web", "endpoints": [{"address": a.address}, {"address": b.address}],
             "health_checks": health_check("http")}])
        proxy = start_proxy(doc)
        admin = proxy.admin
        assert len(admin.workers()) == 2
        # both checked at least twice, both healthy
        poll_until(lambda: hc_stat(admin, "web", "attempt") >= 4, timeout=3, message="4 checks")
        assert flags(admin, "web", a.address) == flags(admin, "web", b.address) == "healthy"
        m = admin.metrics()
        assert m.value("fastproxy_cluster_membership_healthy", cluster_name="web") == 2
        assert m.value("fastproxy_cluster_membership_total", cluster_name="web") == 2
        assert hc_stat(admin, "web", "healthy") == 2
        assert hc_stat(admin, "web", "failure") == 0
        # what the checks look like on the wire: Envoy's (Host defaults to the cluster's name)
        path, headers = a.requests[-1]
        assert path == "/healthz" and headers["host"] == "web"
        assert headers["user-agent"] == "fastproxy-health" and headers["connection"] == "close"

        failures = hc_stat(admin, "web", "failure")
        a.status = 500
        took = wait_flags(admin, "web", a.address, "/failed_active_hc", timeout=10)
        assert took <= flip_deadline(UNHEALTHY_THRESHOLD), f"unhealthy after {took:.2f}s"
        assert flags(admin, "web", b.address) == "healthy"
        m = admin.metrics()
        assert m.value("fastproxy_cluster_health_check_failure_total", cluster_name="web") >= failures + 2
        assert m.value("fastproxy_cluster_health_check_network_failure_total", cluster_name="web") == 0
        assert m.value("fastproxy_cluster_health_check_healthy", cluster_name="web") == 1
        assert m.value("fastproxy_cluster_membership_healthy", cluster_name="web") == 1
        assert (m.value("fastproxy_cluster_health_check_attempt_total", cluster_name="web")
                == m.value("fastproxy_cluster_health_check_success_total", cluster_name="web")
                + m.value("fastproxy_cluster_health_check_failure_total", cluster_name="web"))
        hosts = {h["address"]: h for h in admin.get_json("/clusters?format=json")[0]["host_statuses"]}
        assert hosts[a.address]["failed_active_health_check"] is True
        assert hosts[b.address]["failed_active_health_check"] is False

        a.status = 200
        took = wait_flags(admin, "web", a.address, "healthy", timeout=10)
        assert took <= flip_deadline(HEALTHY_THRESHOLD), f"healthy again after {took:.2f}s"
        m = admin.metrics()
        assert m.value("fastproxy_cluster_health_check_healthy", cluster_name="web") == 2
        assert m.value("fastproxy_cluster_membership_healthy", cluster_name="web") == 2


@pytest.mark.slow
def test_tcp_health_check_follows_a_port_closing_and_reopening(start_proxy):
    with TcpPort() as port:
        doc = proxy_config(hermetic_settings(workers=2), None, [
            {"name": "db", "endpoints": [{"address": port.address}], "health_checks": health_check("tcp")}])
        proxy = start_proxy(doc)
        admin = proxy.admin
        poll_until(lambda: hc_stat(admin, "db", "success") >= 2, timeout=3, message="2 passing checks")
        assert flags(admin, "db", port.address) == "healthy"

        port.close()
        took = wait_flags(admin, "db", port.address, "/failed_active_hc", timeout=10)
        assert took <= flip_deadline(UNHEALTHY_THRESHOLD), f"unhealthy after {took:.2f}s"
        m = admin.metrics()
        # connection refused: a network failure
        assert m.value("fastproxy_cluster_health_check_network_failure_total", cluster_name="db") >= 2
        assert m.value("fastproxy_cluster_membership_healthy", cluster_name="db") == 0

        port.open()
        took = wait_flags(admin, "db", port.address, "healthy", timeout=10)
        assert took <= flip_deadline(HEALTHY_THRESHOLD), f"healthy again after {took:.2f}s"
        assert hc_stat(admin, "db", "healthy") == 1


@pytest.mark.slow
def test_a_reload_reconciles_the_checks(start_proxy):
    with FlippableUpstream() as a, FlippableUpstream() as b:
        def config(endpoints, checked=True):
            c = {"name": "web", "endpoints": [{"address": e.address} for e in endpoints]}
            if checked:
                c["health_checks"] = health_check("http")
            return proxy_config(settings, None, [c])

        settings = hermetic_settings(workers=2)
        proxy = start_proxy(config([a, b]))
        admin = proxy.admin
        a.status = 500
        wait_flags(admin, "web", a.address, "/failed_active_hc", timeout=10)

        # b unchanged keeps its checks going; a removed: its checks stop
        status, body = admin.post("/config", dump_config(config([b])))
        assert status == 200, body
        assert (("web", a.address, "health_flags") not in clusters_page(admin))
        seen = len(a.requests)
        time.sleep(3 * INTERVAL_MS / 1000)
        assert len(a.requests) <= seen + 1          # at most one check was already under way
        assert flags(admin, "web", b.address) == "healthy"

        # a back (still failing): it starts healthy, as a new host does, until the threshold says otherwise
        status, body = admin.post("/config", dump_config(config([a, b])))
        assert status == 200, body
        assert flags(admin, "web", a.address) == "healthy"
        wait_flags(admin, "web", a.address, "/failed_active_hc", timeout=10)

        # the health check removed: no host stays failed by it, and its stats go
        status, body = admin.post("/config", dump_config(config([a, b], checked=False)))
        assert status == 200, body
        assert flags(admin, "web", a.address) == "healthy"
        assert not admin.metrics().matching("fastproxy_cluster_health_check_attempt_total", cluster_name="web")
        assert admin.metrics().value("fastproxy_cluster_membership_healthy", cluster_name="web") == 2
