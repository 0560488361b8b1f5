"""Config reloads beyond the load test: each way in on its own, what a
reload does to open connections, to the very next connection, and to the
set of listeners."""
import json
import os
import signal

import pytest

from tests.support.echo_server import EchoServer
from tests.support.payload import small_payload
from tests.support.polling import poll_until
from tests.support.ports import free_port
from tests.support.proxy_config import (
    cluster, dump, hermetic_settings, proxy_config, tcp_listener, write_atomically, write_config)
from tests.support.tcp_client import connect, echo_once, recv_exactly, relays, short_echo


def _single_route(settings, port, server):
    return proxy_config(settings, [tcp_listener("tcp", port, "upstream")], [cluster("upstream", server.address)])


def test_sighup_alone_rereads_the_file(start_proxy, tmp_path):
    """With the file poller effectively off, only SIGHUP can apply a change."""
    with EchoServer(tag=b"A|") as a, EchoServer(tag=b"B|") as b:
        port = free_port()
        settings = hermetic_settings(workers=2, config_poll_ms=3_600_000)
        path = tmp_path / "live.yaml"
        proxy = start_proxy(_single_route(settings, port, a), config_path=path)
        gen = proxy.admin.generation()
        write_atomically(path, dump(_single_route(settings, port, b)))
        proxy.send_signal(signal.SIGHUP)
        poll_until(lambda: proxy.admin.generation() > gen, timeout=10, message="SIGHUP reload")
        poll_until(lambda: short_echo("127.0.0.1", port, b"x") == b"B|x", timeout=5, message="routed to B")


def test_file_change_alone_is_picked_up_by_the_poller(start_proxy, tmp_path):
    with EchoServer(tag=b"A|") as a, EchoServer(tag=b"B|") as b:
        port = free_port()
        settings = hermetic_settings(workers=2, config_poll_ms=100)
        path = tmp_path / "live.yaml"
        proxy = start_proxy(_single_route(settings, port, a), config_path=path)
        gen = proxy.admin.generation()
        write_config(path, _single_route(settings, port, b))
        poll_until(lambda: proxy.admin.generation() > gen, timeout=10, message="poller reload")
        poll_until(lambda: short_echo("127.0.0.1", port, b"x") == b"B|x", timeout=5, message="routed to B")
        assert proxy.admin.config_dump()["config"]["clusters"][0]["endpoints"][0]["address"] == b.address


def test_in_place_rewrite_is_picked_up_by_the_poller(start_proxy, tmp_path):
    """Editors and `kubectl cp` rewrite in place (same inode), not by rename."""
    with EchoServer(tag=b"A|") as a, EchoServer(tag=b"B|") as b:
        port = free_port()
        settings = hermetic_settings(workers=1, config_poll_ms=100)
        path = tmp_path / "live.yaml"
        proxy = start_proxy(_single_route(settings, port, a), config_path=path)
        gen = proxy.admin.generation()
        before = os.stat(path).st_mtime_ns
        data = dump(_single_route(settings, port, b))
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate()
        os.utime(path, ns=(before + 50_000_000, before + 50_000_000))
        poll_until(lambda: proxy.admin.generation() > gen, timeout=10, message="poller reload (in place)")
        poll_until(lambda: short_echo("127.0.0.1", port, b"x") == b"B|x", timeout=5, message="routed to B")


def test_reload_adds_and_removes_listeners(start_proxy):
    with EchoServer() as echo:
        first, second = free_port(), free_port()
        settings = hermetic_settings(workers=2)
        clusters = [cluster("upstream", echo.address)]
        proxy = start_proxy(proxy_config(settings, [tcp_listener("one", first, "upstream")], clusters))
        assert relays("127.0.0.1", first)
        assert not relays("127.0.0.1", second)

        both = proxy_config(settings, [tcp_listener("one", first, "upstream"),
                                       tcp_listener("two", second, "upstream")], clusters)
        status, body = proxy.admin.post("/config", dump(both))
        assert status == 200, body
        gen = json.loads(body)["generation"]
        poll_until(lambda: proxy.admin.is_ready() and all(
            w["applied_generation"] >= gen for w in proxy.admin.workers()), timeout=10,
            message="ready with the new listener bound by every worker")
        assert relays("127.0.0.1", second)

        only_second = proxy_config(settings, [tcp_listener("two", second, "upstream")], clusters)
        status, body = proxy.admin.post("/config", dump(only_second))
        assert status == 200, body
        poll_until(lambda: not relays("127.0.0.1", first, timeout=0.5), timeout=10,
                   message="the removed listener to stop accepting")
        assert relays("127.0.0.1", second)
        assert [w["restarts"] for w in proxy.admin.workers()] == [0, 0]


def test_reload_keeps_open_connections_on_their_upstream(start_proxy, tmp_path):
    """A connection routed before a reload keeps relaying to the upstream it
    was opened to (Envoy's behaviour for tcp_proxy)."""
    with EchoServer(tag=b"A|") as a, EchoServer(tag=b"B|") as b:
        port = free_port()
        settings = hermetic_settings(workers=1)

        def doc_for(server):
            return proxy_config(settings, [tcp_listener("tcp", port, "upstream")],
                                [cluster("upstream", server.address)])

        proxy = start_proxy(doc_for(a))
        with connect("127.0.0.1", port) as held:
            assert recv_exactly(held, 2) == b"A|"
            status, body = proxy.admin.post("/config", dump(doc_for(b)))
            assert status == 200, body
            poll_until(lambda: short_echo("127.0.0.1", port, b"x") == b"B|x", timeout=5,
                       message="new connections routed to B")
            for i in range(10):
                p = small_payload(i, 4096)
                assert echo_once(held, p) == p
            assert proxy.admin.metrics().value(
                "fastproxy_listener_downstream_cx_active", listener_name="tcp") == 1


@pytest.mark.parametrize("wait_for_workers", [True, False], ids=["after_workers_applied", "right_after_post"])
@pytest.mark.parametrize("workers", [1, 2])
def test_first_connection_after_a_reload_uses_the_new_config(start_proxy, workers, wait_for_workers):
    """Workers check the table generation on every new connection and "see
    the new table on their next lookup" (DESIGN.md). So once POST /config
    has answered 200 (the table is published), no new connection may still
    be routed by the old config - whether or not we first wait for every
    worker to report the new applied_generation."""
    with EchoServer(tag=b"A|") as a, EchoServer(tag=b"B|") as b:
        port = free_port()
        settings = hermetic_settings(workers=workers)

        def doc_for(server):
            return proxy_config(settings, [tcp_listener("tcp", port, "upstream")],
                                [cluster("upstream", server.address)])

        proxy = start_proxy(doc_for(a))
        assert short_echo("127.0.0.1", port, b"warm") == b"A|warm"
        for step, target in enumerate([b, a, b, a]):
            status, body = proxy.admin.post("/config", dump(doc_for(target)))
            assert status == 200, body
            gen = json.loads(body)["generation"]
            if wait_for_workers:
                poll_until(lambda: all(w["applied_generation"] >= gen for w in proxy.admin.workers()),
                           timeout=5, message=f"workers applied {gen}")
            tags = [short_echo("127.0.0.1", port, b"x")[:2] for _ in range(4 * workers)]
            assert tags == [target.tag] * len(tags), f"reload {step} to {target.tag!r}: new connections got {tags}"
