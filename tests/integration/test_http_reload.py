"""Issue 3, acceptance 3: live route changes while HTTP load runs - 0 failed
requests, and each new route is observed, on new connections and on
keep-alive connections opened before the change. Reloads alternate between
POST /config and a rewritten file + SIGHUP (see test_reload_under_load.py)."""
import http.client
import json
import os
import signal
import threading
import time

import pytest

from tests.support.http_upstreams import HttpUpstream, get, http_listener, route_to
from tests.support.polling import poll_until
from tests.support.ports import free_port
from tests.support.proxy_config import cluster, dump, hermetic_settings, proxy_config, write_atomically

LOAD_THREADS = 4
MAX_LOAD_SECONDS = 60


def _write_keeping_mtime(path, doc) -> None:
    mtime = os.stat(path).st_mtime_ns
    write_atomically(path, dump(doc))
    os.utime(path, ns=(mtime, mtime))


@pytest.mark.slow
def test_route_changes_under_http_load_fail_no_request(start_proxy, tmp_path):
    with HttpUpstream("a") as a, HttpUpstream("b") as b, HttpUpstream("c") as c:
        port = free_port()
        settings = hermetic_settings(workers=2, config_poll_ms=0)
        clusters = [cluster("a", a.address), cluster("b", b.address), cluster("c", c.address)]

        def doc_for(name, canary=None):
            rules = []
            if canary:     # a prefix match and a header match (tables with header matches need the headers)
                rules.append({"match": [{"uri": {"prefix": "/canary"}}, {"headers": {"x-canary": {"exact": "1"}}}],
                              "route": route_to(canary)})
            rules.append({"route": route_to(name)})
            doc = proxy_config(settings, [http_listener("web", port)], clusters)
            doc["virtual_services"] = [{"hosts": ["app.local"], "http": rules}]
            return doc

        path = tmp_path / "live.yaml"
        proxy = start_proxy(doc_for("a"), config_path=path)
        admin = proxy.admin
        workers_before = sorted((w["id"], w["pid"]) for w in admin.workers())

        stop = threading.Event()
        deadline = time.monotonic() + MAX_LOAD_SECONDS
        lock = threading.Lock()
        failures: list[str] = []
        seen: dict[str, int] = {}
        # per thread: the upstream that answered its latest request on its kept-alive connection
        latest: dict[int, str] = {}

        def load(tid):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            i = 0
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    i += 1
                    try:
                        conn.request("GET", f"/load/{tid}/{i}", headers={"Host": "app.local"})
                        resp = conn.getresponse()
                        body = resp.read()
                        name = resp.getheader("X-Upstream", "?")
                        ok = resp.status == 200 and json.loads(body)["target"] == f"/load/{tid}/{i}"
                    except Exception as exc:  # noqa: BLE001 - counted as a failure
                        with lock:
                            failures.append(f"thread {tid} #{i}: {exc!r}")
                        conn.close()
                        continue
                    with lock:
                        if not ok:
                            failures.append(f"thread {tid} #{i}: {resp.status} {body[:100]!r}")
                        seen[name] = seen.get(name, 0) + 1
                        latest[tid] = name
            finally:
                conn.close()

        threads = [threading.Thread(target=load, args=(t,)) for t in range(LOAD_THREADS)]
        for t in threads:
            t.start()
        steps = [("post", "b", None), ("sighup", "a", "c"), ("post", "c", "b"), ("sighup", "b", None)]
        try:
            poll_until(lambda: seen.get("a", 0) > 50, timeout=15, message="load running on a")
            for method, target, canary in steps:
                gen_before = admin.generation()
                doc = doc_for(target, canary)
                if method == "post":
                    status, body = admin.post("/config", dump(doc))
                    assert status == 200, body
                else:
                    _write_keeping_mtime(path, doc)
                    proxy.send_signal(signal.SIGHUP)
                gen = poll_until(lambda: (g := admin.generation()) > gen_before and g, timeout=10,
                                 message=f"{method} reload to bump the generation")
                poll_until(lambda: all(w["applied_generation"] >= gen for w in admin.workers()),
                           timeout=10, message=f"every worker applied generation {gen}")
                # A fresh connection sees the new route at once...
                assert get(port, "/probe", host_header="app.local").header("X-Upstream") == target
                if canary:
                    assert get(port, "/canary/x", host_header="app.local").header("X-Upstream") == canary
                    assert get(port, "/y", host_header="app.local",
                               headers={"X-Canary": "1"}).header("X-Upstream") == canary
                # ...and so do the keep-alive connections opened before the change.
                poll_until(lambda: all(latest.get(t) == target for t in range(LOAD_THREADS)), timeout=5,
                           message=f"every kept-alive load connection routed to {target} ({latest})")
                count = sum(seen.values())
                poll_until(lambda: sum(seen.values()) > count + 50, timeout=10,
                           message="load continuing after the reload")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)

        total = sum(seen.values())
        assert not failures, f"{len(failures)} of {total + len(failures)} requests failed: {failures[:5]}"
        assert total > 400 and seen.get("a") and seen.get("b") and seen.get("c"), seen
        assert set(seen) <= {"a", "b", "c"}, seen
        # The load's client connections were kept alive across every reload.
        m = admin.metrics()
        assert m.value("fastproxy_listener_downstream_cx_total", listener_name="web") <= LOAD_THREADS + 3 * len(steps)
        assert sorted((w["id"], w["pid"]) for w in admin.workers()) == workers_before
