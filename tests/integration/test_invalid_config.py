"""Acceptance 7: an invalid config is rejected with the path of the bad
field, everywhere a config enters: `config check`, `run`, POST /config and
SIGHUP. A rejected reload leaves the old config serving."""
import json
import signal

import pytest
import yaml

from tests.support.echo_server import EchoServer
from tests.support.polling import poll_until
from tests.support.ports import free_port
from tests.support.proxy_config import (
    cluster, dump, hermetic_settings, proxy_config, tcp_listener, write_atomically, write_config)
from tests.support.proxy_process import run_cli
from tests.support.shm_segments import segments_of
from tests.support.tcp_client import short_echo


def _valid_doc(upstream: str = "127.0.0.1:9", port: int | None = None) -> dict:
    return proxy_config(hermetic_settings(workers=1),
                        [tcp_listener("tcp", port or free_port(), "upstream")],
                        [cluster("upstream", upstream)])


def _bad_endpoint(doc):
    doc["clusters"][0]["endpoints"].append({"address": "nope", "weight": 1})
    return "clusters[0].endpoints[1].address"


def _bad_workers(doc):
    doc["settings"]["workers"] = "two"
    return "settings.workers"


def _negative_drain(doc):
    doc["settings"]["drain_seconds"] = -1
    return "settings.drain_seconds"


def _bad_policy(doc):
    doc["settings"]["outbound_traffic_policy"] = "SOMETIMES"
    return "settings.outbound_traffic_policy"


def _unknown_cluster(doc):
    doc["listeners"][0]["tcp_proxy"]["cluster"] = "no-such-cluster"
    return "listeners[0].tcp_proxy.cluster"


def _bad_listener_address(doc):
    doc["listeners"][0]["address"] = "127.0.0.1:99999"
    return "listeners[0].address"


def _duplicate_listener_name(doc):
    doc["listeners"].append(dict(doc["listeners"][0], address=f"127.0.0.1:{free_port()}"))
    return "listeners[1].name"


BREAKERS = [_bad_endpoint, _bad_workers, _negative_drain, _bad_policy, _unknown_cluster,
            _bad_listener_address, _duplicate_listener_name]


def _broken(breaker, doc=None) -> tuple[dict, str]:
    doc = doc or _valid_doc()
    return doc, breaker(doc)


def _error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("config error: ")]
    assert lines, f"no 'config error: ' line on stderr:\n{stderr[-2000:]}"
    return lines[0]


def test_config_check_accepts_a_valid_file(tmp_path):
    path = write_config(tmp_path / "good.yaml", _valid_doc())
    out = run_cli("config", "check", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "ok"


def test_config_check_accepts_json(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_valid_doc()))
    out = run_cli("config", "check", str(path))
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.strip("_"))
def test_config_check_names_the_bad_field(tmp_path, breaker):
    doc, field = _broken(breaker)
    path = write_config(tmp_path / "bad.yaml", doc)
    out = run_cli("config", "check", str(path))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert _error_line(out.stderr).startswith(f"config error: {field}: "), out.stderr


def test_config_check_quotes_the_bad_value(tmp_path):
    doc, _ = _broken(_bad_endpoint)
    path = write_config(tmp_path / "bad.yaml", doc)
    out = run_cli("config", "check", str(path))
    line = _error_line(out.stderr)
    assert line.startswith("config error: clusters[0].endpoints[1].address: ")
    assert "'nope'" in line and "host:port" in line, line


def test_config_check_rejects_unparseable_yaml(tmp_path):
    path = tmp_path / "garbage.yaml"
    path.write_text("settings: {workers: [1, 2\nlisteners: :::\n")
    out = run_cli("config", "check", str(path))
    assert out.returncode == 1
    _error_line(out.stderr)


def test_config_check_rejects_a_missing_file(tmp_path):
    out = run_cli("config", "check", str(tmp_path / "absent.yaml"))
    assert out.returncode == 1
    _error_line(out.stderr)


def test_run_with_a_bad_file_exits_nonzero_with_the_field_path(start_proxy):
    doc, field = _broken(_bad_endpoint)
    proxy = start_proxy(doc, ready=False)
    rc = proxy.wait_exit(timeout=15)
    assert rc != 0
    assert f"config error: {field}: " in proxy.stderr_tail(), proxy.stderr_tail()
    assert not segments_of(proxy.pid)


@pytest.fixture
def serving(start_proxy):
    """A proxy whose listener "tcp" relays to an echo server tagged "OLD|"."""
    with EchoServer(tag=b"OLD|") as echo:
        port = free_port()
        doc = _valid_doc(echo.address, port)
        proxy = start_proxy(doc)
        assert short_echo("127.0.0.1", port, b"hi") == b"OLD|hi"
        yield proxy, port, doc


@pytest.mark.parametrize("breaker", [_bad_endpoint, _unknown_cluster], ids=["bad_endpoint", "unknown_cluster"])
def test_post_config_rejects_bad_config_and_keeps_serving(serving, breaker):
    proxy, port, good = serving
    admin = proxy.admin
    gen = admin.generation()
    rejected_before = admin.metrics().value_or_zero("fastproxy_config_reloads_total", result="rejected")
    bad, field = _broken(breaker, yaml.safe_load(dump(good)))

    status, body = admin.post("/config", dump(bad))
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error.startswith(f"{field}: "), error

    dump_ = admin.config_dump()
    assert dump_["generation"] == gen
    assert dump_["last_rejected"] is not None
    assert field in dump_["last_rejected"]["error"]
    assert isinstance(dump_["last_rejected"]["source"], str) and dump_["last_rejected"]["source"]
    assert dump_["config"]["clusters"][0]["endpoints"][0]["address"] == good["clusters"][0]["endpoints"][0]["address"]
    m = admin.metrics()
    assert m.value("fastproxy_config_reloads_total", result="rejected") == rejected_before + 1
    assert m.value("fastproxy_config_generation") == gen
    assert short_echo("127.0.0.1", port, b"still") == b"OLD|still"


def test_post_config_rejects_unparseable_body(serving):
    proxy, port, _ = serving
    status, body = proxy.admin.post("/config", b"{{{ not yaml")
    assert status == 400
    assert json.loads(body)["error"]
    assert proxy.admin.config_dump()["last_rejected"] is not None
    assert short_echo("127.0.0.1", port, b"x") == b"OLD|x"


def test_sighup_with_bad_file_is_rejected_and_keeps_serving(serving):
    proxy, port, good = serving
    admin = proxy.admin
    gen = admin.generation()
    rejected_before = admin.metrics().value_or_zero("fastproxy_config_reloads_total", result="rejected")
    bad, field = _broken(_bad_endpoint, yaml.safe_load(dump(good)))
    write_atomically(proxy.config_path, dump(bad))
    proxy.send_signal(signal.SIGHUP)

    rejected = poll_until(lambda: admin.config_dump()["last_rejected"], timeout=10,
                          message="last_rejected after SIGHUP with a bad file")
    assert field in rejected["error"], rejected
    assert isinstance(rejected["source"], str) and rejected["source"]
    assert admin.generation() == gen
    poll_until(lambda: admin.metrics().value("fastproxy_config_reloads_total", result="rejected")
               >= rejected_before + 1, timeout=5, message="reloads_total{result=rejected} incremented")
    assert short_echo("127.0.0.1", port, b"still") == b"OLD|still"
    assert proxy.running()
    assert all(w["alive"] and w["restarts"] == 0 for w in admin.workers())


def test_a_good_config_after_a_rejected_one_is_applied(serving):
    proxy, port, good = serving
    admin = proxy.admin
    bad, _ = _broken(_bad_endpoint, yaml.safe_load(dump(good)))
    assert admin.post("/config", dump(bad))[0] == 400
    with EchoServer(tag=b"NEW|") as fresh:
        newer = yaml.safe_load(dump(good))
        newer["clusters"][0]["endpoints"] = [{"address": fresh.address, "weight": 1}]
        status, body = admin.post("/config", dump(newer))
        assert status == 200, body
        poll_until(lambda: short_echo("127.0.0.1", port, b"y") == b"NEW|y", timeout=5,
                   message="the good config to take effect")
