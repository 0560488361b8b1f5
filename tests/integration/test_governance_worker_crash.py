"""A worker killed mid-request gives back what it held of the shared
circuit-breaker counts (csrc/govern.h "per-worker ledger").

Without the ledger the shared counts would keep the dead worker's requests
and connections for good: a cluster at max_requests would refuse everything
after one crash. One worker, max_requests 2, both held by hanging requests;
SIGKILL; the replacement worker must admit requests again and the gauges
must read 0.
"""
from __future__ import annotations

import http.client
import os
import signal
import threading

from tests.support.governed_proxy import HOST, gov_cluster, gov_route, gov_vs, start_governed
from tests.support.http_upstreams import HttpUpstream
from tests.support.polling import poll_until


def _hang(port: int, out: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/_/hang", headers={"Host": HOST})
        out.append(conn.getresponse().status)
    except (OSError, http.client.HTTPException) as exc:
        out.append(repr(exc))          # the worker died under it: expected
    finally:
        conn.close()


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": HOST})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_a_killed_worker_releases_its_breaker_counts(start_proxy, tmp_path):
    with HttpUpstream("a") as up:
        cluster = gov_cluster("backend", up, circuit_breakers={"max_requests": 2})
        gp = start_governed(start_proxy, tmp_path, [cluster],
                            [gov_vs(HOST, gov_route("backend", retries={"attempts": 0}))], workers=1)
        results: list = []
        hangers = [threading.Thread(target=_hang, args=(gp.port, results), daemon=True) for _ in range(2)]
        for t in hangers:
            t.start()
        poll_until(lambda: gp.metric("GV_RQ_ACTIVE", cluster_name="backend") == 2, timeout=10,
                   message="both requests in flight")
        assert _get(gp.port, "/full") == 503        # the breaker is full: UO
        (victim,) = gp.admin.workers()
        os.kill(victim["pid"], signal.SIGKILL)
        poll_until(lambda: [w for w in gp.admin.workers() if w["pid"] != victim["pid"] and w["alive"]],
                   timeout=10, message="a replacement worker")
        poll_until(lambda: gp.metric("GV_RQ_ACTIVE", cluster_name="backend") == 0, timeout=10,
                   message="the dead worker's 2 requests released")
        assert gp.metric("GV_CB_RQ_OPEN", cluster_name="backend") == 0
        # the replacement admits requests again (it would 503 UO forever without the ledger)
        poll_until(lambda: _get(gp.port, "/after") == 200, timeout=10, message="200 after the crash")
        up.stop()
        for t in hangers:
            t.join(timeout=10)
        assert len(results) == 2
