"""Issue 6, acceptance 2: access logs through a real proxy.

- text and JSON lines for a scripted set of requests (proxied, POST with a
  body, 404 NR, 503 UF) against golden files, volatile values (times,
  durations, ports) normalised;
- a slow sink (a FIFO read a little at a time) costs lines, not
  throughput: requests per second stay close to a run without an access
  log, and every line not written is counted in
  fastproxy_access_log_dropped_total (lines read + dropped == requests);
- the errors filter and a TCP connection's line.

Regenerate the golden files with FASTPROXY_UPDATE_GOLDEN=1, then read every diff by eye.
"""
import http.client
import json
import os
import re
import threading
import time
from pathlib import Path

from tests.support.http_upstreams import HttpUpstream, get, route_to, start_http_proxy
from tests.support.polling import poll_until
from tests.support.ports import free_port

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FASTPROXY_UPDATE_GOLDEN") == "1"

TEXT = re.compile(r'^\[(?P<t>[^\]]+)\] "(?P<req>[^"]*)" (?P<code>\d+) (?P<flags>\S+) (?P<rx>\d+) (?P<tx>\d+) '
                  r'(?P<dur>\d+) (?P<ust>\S+) "(?P<xff>[^"]*)" "(?P<ua>[^"]*)" "(?P<rid>[^"]*)" '
                  r'"(?P<auth>[^"]*)" "(?P<up>[^"]*)"$')
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _port(addr: str) -> str:
    return re.sub(r":\d+$", ":<PORT>", addr)


def _lines(path: Path, n: int) -> list[str] | None:
    lines = path.read_text().splitlines() if path.exists() else []
    return lines if len(lines) >= n else None


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{name} missing; FASTPROXY_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), f"{name} differs; FASTPROXY_UPDATE_GOLDEN=1 regenerates"


def _scripted(start_proxy, tmp_path, fmt: str):
    """Four requests of known outcome through a one-worker proxy; the log's lines."""
    log = tmp_path / f"access.{fmt}.log"
    dead = free_port()
    vs = [{"hosts": ["svc.local"], "http": [{"name": "all", "route": route_to("backend")}]},
          {"hosts": ["dead.local"], "http": [{"route": route_to("dead")}]}]
    with HttpUpstream("backend") as up:
        proxy, port, _ = start_http_proxy(start_proxy, {"backend": up.address, "dead": f"127.0.0.1:{dead}"},
                                          virtual_services=vs, access_log=str(log), access_log_format=fmt)
        common = {"User-Agent": "golden-test/1.0"}
        r = get(port, "/_/stream?n=100&seed=1", "svc.local", {**common, "x-request-id": "rid-1"})
        assert r.status == 200 and len(r.body) == 100
        r = get(port, "/_/stream?n=7&seed=2", "svc.local", {**common, "x-request-id": "rid-2"},
                method="POST", body=b"hello")
        assert r.status == 200
        r = get(port, "/nowhere", "unknown.local", {**common, "x-request-id": "rid-3"})
        assert r.status == 404
        r = get(port, "/down", "dead.local", {**common, "x-request-id": "rid-4"})
        assert r.status == 503
        lines = poll_until(lambda: _lines(log, 4), timeout=5, message="4 access log lines")
    return proxy, lines


def test_text_access_log_golden(start_proxy, tmp_path):
    _, lines = _scripted(start_proxy, tmp_path, "text")
    out = []
    for line in lines:
        m = TEXT.match(line)
        assert m, f"not Envoy's default format: {line!r}"
        assert TIME.match(m["t"]), m["t"]
        ust = m["ust"]
        assert ust == "-" or ust.isdigit(), ust
        out.append(f'[<TIME>] "{m["req"]}" {m["code"]} {m["flags"]} {m["rx"]} {m["tx"]} <DURATION> '
                   f'{"<MS>" if ust.isdigit() else "-"} "{m["xff"]}" "{m["ua"]}" "{m["rid"]}" "{m["auth"]}" '
                   f'"{_port(m["up"])}"')
    _golden("access_log.text", "\n".join(out) + "\n")


def test_json_access_log_golden(start_proxy, tmp_path):
    _, lines = _scripted(start_proxy, tmp_path, "json")
    out = []
    for line in lines:
        doc = json.loads(line)
        assert TIME.match(doc["start_time"])
        assert isinstance(doc["duration"], int)
        doc["start_time"] = "<TIME>"
        doc["duration"] = "<DURATION>"
        if doc["upstream_service_time"] is not None:
            assert doc["upstream_service_time"].isdigit()
            doc["upstream_service_time"] = "<MS>"
        for k in ("upstream_host", "downstream_remote_address"):
            if doc[k]:
                doc[k] = _port(doc[k])
        out.append(json.dumps(doc))
    _golden("access_log.json", "\n".join(out) + "\n")


def test_errors_filter_and_json_field_selection(start_proxy, tmp_path):
    log = tmp_path / "errors.log"
    with HttpUpstream("backend") as up:
        _, port, _ = start_http_proxy(
            start_proxy, {"backend": up.address}, default_cluster="backend", access_log=str(log),
            access_log_format="json", access_log_filter="errors",
            access_log_fields="response_code,response_flags,path,upstream_cluster")
        for i in range(5):
            assert get(port, f"/ok/{i}", "svc.local").status == 200
        assert get(port, "/_/status?code=500", "svc.local").status == 500
        assert get(port, "/_/status?code=404", "svc.local").status == 404
        poll_until(lambda: _lines(log, 2), timeout=5, message="2 error lines")
        time.sleep(0.2)   # and no more come
        docs = [json.loads(l) for l in log.read_text().splitlines()]
    assert docs == [
        {"response_code": 500, "response_flags": "-", "path": "/_/status?code=500", "upstream_cluster": "backend"},
        {"response_code": 404, "response_flags": "-", "path": "/_/status?code=404", "upstream_cluster": "backend"},
    ]


def _load(port: int, clients: int, per_client: int) -> float:
    """Keep-alive GETs from `clients` threads; requests per second."""
    errors: list[str] = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for i in range(per_client):
                conn.request("GET", f"/load/{i}", headers={"Host": "svc.local"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors.append(str(resp.status))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.perf_counter() - t0
    assert not errors, errors[:5]
    return clients * per_client / elapsed


def test_slow_sink_drops_and_counts_lines_without_slowing_the_data_path(start_proxy, tmp_path):
    clients, per_client = 4, 750
    total = clients * per_client
    fifo = tmp_path / "slow.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # a reader exists: the proxy can open it
    got = bytearray()
    stop = threading.Event()

    def slow_reader():
        while not stop.is_set():
            try:
                got.extend(os.read(reader, 512))       # ~10 KB/s: far slower than the log
            except BlockingIOError:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=slow_reader, daemon=True)
    try:
        with HttpUpstream("backend") as up:
            _, base_port, _ = start_http_proxy(start_proxy, {"backend": up.address},
                                                        default_cluster="backend", workers=2)
            _load(base_port, clients, per_client // 5)   # warm-up
            baseline = _load(base_port, clients, per_client)
            proxy, port, _ = start_http_proxy(start_proxy, {"backend": up.address}, default_cluster="backend",
                                              workers=2, access_log=str(fifo), access_log_buffer_bytes=16384)
            t.start()
            slow = _load(port, clients, per_client)
            print(f"keep-alive GETs: {baseline:.0f} req/s without an access log, {slow:.0f} with a slow sink")
            assert slow >= 0.5 * baseline, f"{slow:.0f} req/s with a slow sink vs {baseline:.0f} without"
            m = proxy.admin.metrics()
            dropped = m.value("fastproxy_access_log_dropped_total")
            assert dropped > 0, "a sink this slow must have cost lines"
            assert m.value("fastproxy_request_records_dropped_total") == 0
            stop.set()
            t.join()
            # Let the sink catch up: whatever is still buffered is written on the worker's tick.
            def settled():
                try:
                    while True:
                        chunk = os.read(reader, 1 << 20)
                        if not chunk:
                            break
                        got.extend(chunk)
                except BlockingIOError:
                    pass
                d = proxy.admin.metrics().value("fastproxy_access_log_dropped_total")
                return (got.count(b"\n"), d) if got.count(b"\n") + d == total else None
            lines, dropped = poll_until(settled, timeout=10,
                                        message=f"lines read + dropped == {total} requests")
    finally:
        stop.set()
        os.close(reader)
    assert lines > 0 and dropped > 0
    # Whole lines only: no line was torn by the non-blocking writes of two workers.
    for line in bytes(got).splitlines():
        assert TEXT.match(line.decode()), line


def test_tcp_connection_gets_one_json_line_when_it_closes(start_proxy, tmp_path):
    """A relayed TCP connection: one line, with the bytes each way and its cluster;
    a connect failure: one line with flag UF."""
    import socket

    from tests.support.echo_server import EchoServer
    from tests.support.proxy_config import cluster, hermetic_settings, proxy_config, tcp_listener

    log = tmp_path / "tcp.json.log"
    port, dead_port, dead = free_port(), free_port(), free_port()
    with EchoServer() as echo:
        echo_address = echo.address
        doc = proxy_config(hermetic_settings(workers=1, access_log=str(log), access_log_format="json"),
                           [tcp_listener("tcp", port, "echo"), tcp_listener("tcpdead", dead_port, "dead")],
                           [cluster("echo", echo.address), cluster("dead", f"127.0.0.1:{dead}")])
        start_proxy(doc)
        payload = bytes(range(256)) * 40       # 10,240 bytes each way
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                assert chunk, "echo closed early"
                got += chunk
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b""
        with socket.create_connection(("127.0.0.1", dead_port)) as s:
            s.settimeout(5)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
        lines = poll_until(lambda: _lines(log, 2), timeout=5, message="2 TCP access log lines")
    docs = sorted((json.loads(x) for x in lines), key=lambda d: d["upstream_cluster"])
    dead_line, ok = docs
    assert ok["upstream_cluster"] == "echo" and ok["listener_name"] == "tcp" and ok["method"] is None
    assert ok["bytes_received"] == len(payload) and ok["bytes_sent"] == len(payload)
    assert ok["upstream_host"] == echo_address and ok["response_flags"] == "-"
    assert dead_line["upstream_cluster"] == "dead" and dead_line["response_flags"] == "UF"
    assert dead_line["bytes_received"] == 0 and dead_line["bytes_sent"] == 0
