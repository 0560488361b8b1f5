"""Acceptance 5: `kill -9` of a worker under load. A replacement serves
within 1 s, with the current config generation applied, and the
connections held by the surviving worker never notice."""
import os
import signal
import threading
import time

import pytest

from tests.support.echo_server import EchoServer
from tests.support.payload import small_payload
from tests.support.polling import poll_until
from tests.support.tcp_client import connect, echo_once, recv_exactly
from tests.support.worker_sockets import client_port_owners

PER_WORKER = 8


def _open_until_each_worker_holds(port: int, pids: list[int], want: int) -> tuple[dict, dict]:
    """Opens echo-verified connections until every worker holds `want`.
    Returns (client port -> socket, client port -> worker pid)."""
    socks: dict = {}
    owners: dict = {}
    for i in range(40 * want):
        s = connect("127.0.0.1", port)
        p = small_payload(i, 32)
        assert echo_once(s, p) == p
        socks[s.getsockname()[1]] = s
        if len(socks) >= want * len(pids) and len(socks) % 4 == 0:
            owners = client_port_owners(pids, port)
            if all(sum(1 for c in socks if owners.get(c) == pid) >= want for pid in pids):
                return socks, owners
    raise AssertionError(f"connections never spread over workers {pids}: "
                         f"{ {pid: sum(1 for c in socks if owners.get(c) == pid) for pid in pids} }")


@pytest.mark.slow
def test_sigkilled_worker_is_replaced_within_one_second_and_survivors_are_unharmed(relay_to):
    with EchoServer() as echo:
        relay = relay_to(echo.address, workers=2)
        admin = relay.admin
        generation = admin.generation()
        workers = admin.workers()
        pids = [w["pid"] for w in workers]
        assert len(set(pids)) == 2
        socks, owners = _open_until_each_worker_holds(relay.port, pids, PER_WORKER)
        victim = workers[0]
        survivors = [s for c, s in socks.items() if owners.get(c) == workers[1]["pid"]]
        restarts_before = admin.metrics().value("fastproxy_worker_restarts_total")

        stop = threading.Event()
        failures: list[str] = []
        exchanges = [0, 0]

        def keep_echoing(conns, slot):
            i = 0
            while not stop.is_set():
                s = conns[i % len(conns)]
                p = small_payload(slot * 1_000_000 + i, 512)
                try:
                    got = echo_once(s, p)
                except (OSError, EOFError) as exc:
                    failures.append(f"survivor {s.getsockname()[1]}: {exc!r}")
                    return
                if got != p:
                    failures.append(f"survivor {s.getsockname()[1]}: wrong bytes")
                    return
                exchanges[slot] += 1
                i += 1

        threads = [threading.Thread(target=keep_echoing, args=(survivors[k::2], k)) for k in (0, 1)]
        for t in threads:
            t.start()
        try:
            poll_until(lambda: min(exchanges) > 50, timeout=10, message="load running on survivors")

            t0 = time.monotonic()
            os.kill(victim["pid"], signal.SIGKILL)

            def replaced():
                fresh = [w for w in admin.workers()
                         if w["pid"] not in pids and w["alive"] and w["applied_generation"] == generation]
                return fresh[0] if fresh else None

            new = poll_until(replaced, timeout=10, interval=0.005,
                             message="a new worker pid with the current applied_generation")
            elapsed = time.monotonic() - t0
            # Keep the survivors busy well after the replacement too.
            after = sum(exchanges)
            poll_until(lambda: sum(exchanges) > after + 300, timeout=15,
                       message="survivor load continuing after the replacement")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=20)

        print(f"replacement worker {new['pid']} serving {elapsed * 1000:.0f} ms after SIGKILL; "
              f"{sum(exchanges)} survivor exchanges, {len(survivors)} survivor connections")
        assert not failures, failures[:5]
        assert elapsed < 1.0, f"replacement took {elapsed:.3f}s"
        assert new["id"] == victim["id"] and new["restarts"] == 1, new

        # The replacement accepts and relays new connections.
        fresh_socks = []
        try:
            for i in range(64):
                s = connect("127.0.0.1", relay.port)
                fresh_socks.append(s)
                p = small_payload(10_000 + i, 64)
                assert echo_once(s, p) == p
                held = client_port_owners([new["pid"]], relay.port)
                if any(s.getsockname()[1] in held for s in fresh_socks):
                    break
            else:
                pytest.fail("64 new connections and none reached the replacement worker")
        finally:
            for s in fresh_socks:
                s.close()

        poll_until(lambda: admin.metrics().value("fastproxy_worker_restarts_total") == restarts_before + 1,
                   timeout=5, message="fastproxy_worker_restarts_total incremented by 1")
        current = admin.workers()
        assert sorted(w["id"] for w in current) == sorted(w["id"] for w in workers)
        assert all(w["alive"] for w in current)
        assert workers[1]["pid"] in [w["pid"] for w in current]

        for s in socks.values():
            s.close()
        # The dead worker's connections must not stay counted as active.
        poll_until(lambda: admin.metrics().value(
            "fastproxy_listener_downstream_cx_active", listener_name=relay.name) == 0,
            timeout=10, message="cx_active back to 0 (including the dead worker's connections)")


def test_replacement_worker_runs_the_reloaded_config(start_proxy):
    """A replacement worker starts on the current table, not on the config
    the proxy was started with."""
    from tests.support.ports import free_port
    from tests.support.proxy_config import cluster, dump, hermetic_settings, proxy_config, tcp_listener
    from tests.support.tcp_client import short_echo

    with EchoServer(tag=b"BOOT|") as boot, EchoServer(tag=b"NEW|") as newer:
        port = free_port()
        settings = hermetic_settings(workers=2)

        def doc_for(server):
            return proxy_config(settings, [tcp_listener("tcp", port, "upstream")],
                                [cluster("upstream", server.address)])

        proxy = start_proxy(doc_for(boot))
        admin = proxy.admin
        status, body = admin.post("/config", dump(doc_for(newer)))
        assert status == 200, body
        generation = admin.generation()
        workers = admin.workers()
        poll_until(lambda: all(w["applied_generation"] == generation for w in admin.workers()),
                   timeout=5, message="reload applied")
        old_pids = [w["pid"] for w in workers]
        os.kill(workers[0]["pid"], signal.SIGKILL)
        new = poll_until(lambda: [w for w in admin.workers() if w["pid"] not in old_pids and w["alive"]
                                  and w["applied_generation"] == generation], timeout=5,
                         message="replacement with the reloaded generation")[0]
        # Connections that land on the replacement are routed by the reloaded config.
        landed = []
        socks = []
        try:
            for i in range(64):
                s = connect("127.0.0.1", port)
                socks.append(s)
                tag = recv_exactly(s, 4)
                if s.getsockname()[1] in client_port_owners([new["pid"]], port):
                    landed.append(tag)
                    if len(landed) >= 3:
                        break
        finally:
            for s in socks:
                s.close()
        assert landed and all(t == b"NEW|" for t in landed), landed
        assert short_echo("127.0.0.1", port, b"z").startswith(b"NEW|")
