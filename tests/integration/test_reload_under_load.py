"""Acceptance 6: config reloads under load fail no connection, take effect,
and never restart a worker. Reloads alternate between the three ways in:
POST /config, rewrite + SIGHUP, and a rewrite noticed by the file poller.

The cluster is switched between two echo upstreams that tag their replies
("A|" / "B|"), so every reply says which config routed it."""
import json
import os
import signal
import threading
import time

import pytest

from tests.support.echo_server import EchoServer
from tests.support.payload import small_payload
from tests.support.polling import poll_until
from tests.support.ports import free_port
from tests.support.proxy_config import (
    cluster, dump, hermetic_settings, proxy_config, tcp_listener, write_atomically, write_config)
from tests.support.tcp_client import short_echo

LOAD_THREADS = 4
MAX_PER_THREAD = 2500
MAX_LOAD_SECONDS = 90


def _write_keeping_mtime(path, doc) -> None:
    """Rewrites the file but leaves its mtime as it was, so only SIGHUP (not
    the mtime poller) can pick the change up."""
    mtime = os.stat(path).st_mtime_ns
    write_atomically(path, dump(doc))
    os.utime(path, ns=(mtime, mtime))


@pytest.mark.slow
def test_reloads_under_load_fail_no_connection(start_proxy, tmp_path):
    with EchoServer(tag=b"A|") as a, EchoServer(tag=b"B|") as b:
        port = free_port()
        settings = hermetic_settings(workers=2, config_poll_ms=200)

        def doc_for(server):
            return proxy_config(settings, [tcp_listener("tcp", port, "upstream")],
                                [cluster("upstream", server.address)])

        path = tmp_path / "live.yaml"
        proxy = start_proxy(doc_for(a), config_path=path)
        admin = proxy.admin
        workers_before = sorted((w["id"], w["pid"]) for w in admin.workers())
        m0 = admin.metrics()
        ok_before = m0.value_or_zero("fastproxy_config_reloads_total", result="ok")
        rejected_before = m0.value_or_zero("fastproxy_config_reloads_total", result="rejected")

        stop = threading.Event()
        failures: list[str] = []
        seen = {b"A|": 0, b"B|": 0}
        lock = threading.Lock()
        deadline = time.monotonic() + MAX_LOAD_SECONDS

        def load(tid):
            for i in range(MAX_PER_THREAD):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                payload = small_payload(tid * 1_000_000 + i, 32)
                try:
                    reply = short_echo("127.0.0.1", port, payload)
                except (OSError, EOFError) as exc:
                    with lock:
                        failures.append(f"thread {tid} #{i}: {exc!r}")
                    continue
                tag = reply[:2]
                with lock:
                    if tag in seen and reply[2:] == payload:
                        seen[tag] += 1
                    else:
                        failures.append(f"thread {tid} #{i}: bad reply {reply[:40]!r}")

        threads = [threading.Thread(target=load, args=(t,)) for t in range(LOAD_THREADS)]
        for t in threads:
            t.start()

        steps = [("post", b), ("sighup", a), ("poller", b), ("post", a), ("sighup", b), ("poller", a)]
        try:
            poll_until(lambda: seen[b"A|"] > 20, timeout=15, message="load running")
            for method, target in steps:
                gen_before = admin.generation()
                doc = doc_for(target)
                if method == "post":
                    status, body = admin.post("/config", dump(doc))
                    assert status == 200, body
                    assert json.loads(body)["generation"] > gen_before
                elif method == "sighup":
                    _write_keeping_mtime(path, doc)
                    proxy.send_signal(signal.SIGHUP)
                else:
                    write_config(path, doc)
                gen = poll_until(lambda: (g := admin.generation()) > gen_before and g, timeout=10,
                                 message=f"{method} reload to bump the generation")
                poll_until(lambda: all(w["applied_generation"] >= gen for w in admin.workers()),
                           timeout=10, message=f"every worker applied generation {gen}")
                # New connections now reach the new upstream.
                poll_until(lambda: short_echo("127.0.0.1", port, b"probe").startswith(target.tag),
                           timeout=5, message=f"{method} reload to route to {target.tag!r}")
                counts_at_step = dict(seen)
                poll_until(lambda: sum(seen.values()) > sum(counts_at_step.values()) + 20, timeout=10,
                           message="load continuing after the reload")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)

        total = sum(seen.values())
        assert not failures, f"{len(failures)} of {total + len(failures)} connections failed: {failures[:5]}"
        assert seen[b"A|"] > 0 and seen[b"B|"] > 0, seen
        assert total > 200, seen

        workers_after = admin.workers()
        assert sorted((w["id"], w["pid"]) for w in workers_after) == workers_before, "a reload restarted a worker"
        assert all(w["restarts"] == 0 for w in workers_after)
        m = admin.metrics()
        assert m.value("fastproxy_config_reloads_total", result="ok") - ok_before >= len(steps)
        assert m.value_or_zero("fastproxy_config_reloads_total", result="rejected") == rejected_before
        assert m.value("fastproxy_config_generation") == admin.generation()
        assert a.accepted > 0 and b.accepted > 0
