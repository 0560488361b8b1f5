"""The admin API's shapes, and the optional Istio ports (15090 stats,
15021 health, 15020 merged metrics) when they are enabled."""
import json

from tests.support.admin_client import AdminClient
from tests.support.metrics import Metrics
from tests.support.ports import free_ports
from tests.support.tcp_client import short_echo


def test_healthz_ready_workers_and_config_dump(relay_to, echo_server):
    relay = relay_to(echo_server.address, workers=2)
    admin = relay.admin
    assert admin.get("/healthz")[0] == 200
    assert admin.get("/ready")[0] == 200

    dump = admin.config_dump()
    assert set(dump) >= {"generation", "config", "last_rejected"}
    assert isinstance(dump["generation"], int) and dump["generation"] >= 1
    assert dump["last_rejected"] is None
    assert [listener["name"] for listener in dump["config"]["listeners"]] == ["tcp"]
    assert dump["config"]["clusters"][0]["endpoints"][0]["address"] == echo_server.address

    workers = admin.workers()
    assert sorted(w["id"] for w in workers) == [0, 1]
    for w in workers:
        assert set(w) >= {"id", "pid", "applied_generation", "restarts", "alive"}
        assert w["alive"] is True and w["restarts"] == 0
        assert w["applied_generation"] == dump["generation"]
        assert w["pid"] != relay.proxy.pid


def test_prometheus_has_every_contract_series_for_a_configured_listener(relay_to, echo_server):
    relay = relay_to(echo_server.address)
    assert short_echo("127.0.0.1", relay.port, b"ping") == b"ping"
    m = relay.admin.metrics()
    for name in ("fastproxy_listener_downstream_cx_total", "fastproxy_listener_downstream_cx_destroy_total",
                 "fastproxy_listener_downstream_cx_active", "fastproxy_listener_downstream_cx_rx_bytes_total",
                 "fastproxy_listener_downstream_cx_tx_bytes_total"):
        m.value(name, listener_name="tcp")
    for name in ("fastproxy_cluster_upstream_cx_total", "fastproxy_cluster_upstream_cx_destroy_total",
                 "fastproxy_cluster_upstream_cx_active", "fastproxy_cluster_upstream_cx_rx_bytes_total",
                 "fastproxy_cluster_upstream_cx_tx_bytes_total", "fastproxy_cluster_upstream_cx_connect_fail_total"):
        m.value(name, cluster_name="upstream")
    for name in ("fastproxy_relay_spliced_bytes_total", "fastproxy_relay_copied_bytes_total",
                 "fastproxy_worker_restarts_total", "fastproxy_config_generation"):
        m.value(name)
    assert m.value("fastproxy_config_generation") == relay.admin.generation()


def test_unknown_admin_path_is_404(relay_to, echo_server):
    relay = relay_to(echo_server.address, workers=1)
    assert relay.admin.get("/no/such/page")[0] == 404


def test_stats_health_and_merged_metrics_ports(relay_to, echo_server):
    stats, health, merged = free_ports(3)
    relay = relay_to(echo_server.address, workers=1, stats_port=stats, health_port=health,
                     merged_metrics_port=merged)
    assert short_echo("127.0.0.1", relay.port, b"abc") == b"abc"

    status, body = AdminClient(stats).get("/stats/prometheus")
    assert status == 200
    m = Metrics(body.decode())
    assert m.value("fastproxy_listener_downstream_cx_total", listener_name="tcp") == 1

    status, _ = AdminClient(health).get("/healthz/ready")
    assert status == 200

    status, body = AdminClient(merged).get("/stats/prometheus")
    assert status == 200
    assert Metrics(body.decode()).value("fastproxy_listener_downstream_cx_total", listener_name="tcp") == 1


def test_post_config_returns_the_new_generation(relay_to, echo_server):
    relay = relay_to(echo_server.address, workers=1)
    gen = relay.admin.generation()
    from tests.support.proxy_config import dump
    status, body = relay.admin.post("/config", dump(relay.doc))
    assert status == 200, body
    new = json.loads(body)["generation"]
    assert new > gen
    assert relay.admin.generation() == new
    assert short_echo("127.0.0.1", relay.port, b"same") == b"same"
