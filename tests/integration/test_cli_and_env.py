"""Acceptance 9: `config env` documents every FASTPROXY_* variable, an
environment variable overrides the file, and `--version` works."""
import re

import pytest

from tests.support.admin_client import AdminClient
from tests.support.echo_server import EchoServer
from tests.support.ports import free_port
from tests.support.proxy_config import cluster, hermetic_settings, proxy_config, tcp_listener
from tests.support.proxy_process import run_cli
from tests.support.tcp_client import short_echo

# Every setting in the contract, with its documented default.
SETTINGS_DEFAULTS = {
    "workers": None,  # defaults to the CPU count
    "admin_port": "15000",
    "stats_port": "15090",
    "merged_metrics_port": "15020",
    "health_port": "15021",
    "outbound_port": "15001",
    "inbound_port": "15006",
    "drain_seconds": "5",
    "connect_timeout_ms": "10000",
    "idle_timeout_s": "3600",
    "buffer_bytes": "65536",
    "outbound_traffic_policy": "ALLOW_ANY",
    "inbound_passthrough_source": "127.0.0.6",
    "config_poll_ms": "1000",
}


def _env_blocks(text: str) -> dict[str, str]:
    """Splits `config env` output into {VARIABLE: its text up to the next one}."""
    names = list(re.finditer(r"\bFASTPROXY_[A-Z0-9_]+\b", text))
    blocks: dict[str, str] = {}
    for i, match in enumerate(names):
        end = names[i + 1].start() if i + 1 < len(names) else len(text)
        blocks.setdefault(match.group(), text[match.end():end])
    return blocks


def _shows_value(text: str, default: str) -> bool:
    """True if `text` shows `default` as a token; numbers compare by value (5 == 5.0)."""
    tokens = re.findall(r"[\w.:]+", text)
    if re.fullmatch(r"\d+", default):
        return any(re.fullmatch(r"\d+(\.0+)?", t) and float(t) == float(default) for t in tokens)
    return default in tokens


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert re.search(r"\d+\.\d+\.\d+", out.stdout + out.stderr), out.stdout


@pytest.mark.parametrize("key", sorted(SETTINGS_DEFAULTS))
def test_config_env_lists_every_setting_with_default_and_meaning(key):
    out = run_cli("config", "env")
    assert out.returncode == 0, out.stderr
    blocks = _env_blocks(out.stdout)
    var = f"FASTPROXY_{key.upper()}"
    assert var in blocks, f"{var} missing from `config env`:\n{out.stdout}"
    text = blocks[var]
    default = SETTINGS_DEFAULTS[key]
    if default is not None:
        assert _shows_value(text, default), f"{var}: default {default} not shown: {text!r}"
    words = re.findall(r"[A-Za-z]{3,}", text)
    assert len(words) >= 3, f"{var} has no meaning described: {text!r}"


def test_env_overrides_workers_from_the_file(start_proxy):
    with EchoServer() as echo:
        port = free_port()
        doc = proxy_config(hermetic_settings(workers=1), [tcp_listener("tcp", port, "upstream")],
                           [cluster("upstream", echo.address)])
        proxy = start_proxy(doc, env={"FASTPROXY_WORKERS": "3"})
        workers = proxy.admin.workers()
        assert len(workers) == 3, workers
        assert len({w["pid"] for w in workers}) == 3
        assert all(w["alive"] for w in workers)
        assert sorted(w["id"] for w in workers) == [0, 1, 2]
        assert short_echo("127.0.0.1", port, b"three") == b"three"


def test_env_overrides_admin_port_from_the_file(start_proxy):
    with EchoServer() as echo:
        file_port, env_port, port = free_port(), free_port(), free_port()
        doc = proxy_config(hermetic_settings(workers=1, admin_port=file_port),
                           [tcp_listener("tcp", port, "upstream")], [cluster("upstream", echo.address)])
        proxy = start_proxy(doc, env={"FASTPROXY_ADMIN_PORT": str(env_port)})
        assert proxy.admin.port == env_port
        assert proxy.admin.get("/healthz")[0] == 200
        with pytest.raises(OSError):
            AdminClient(file_port).get("/healthz", timeout=1)


def test_bad_env_value_is_a_config_error(tmp_path, start_proxy):
    doc = proxy_config(hermetic_settings(workers=1), None, [])
    proxy = start_proxy(doc, env={"FASTPROXY_WORKERS": "lots"}, ready=False)
    rc = proxy.wait_exit(timeout=15)
    assert rc != 0
    assert "config error: " in proxy.stderr_tail() and "workers" in proxy.stderr_tail().lower()
