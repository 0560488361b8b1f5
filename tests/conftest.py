"""Fixtures shared by the Python tests, and the hypothesis profile they run under.

`start_proxy(doc)` launches a real proxy on a written config and waits for
/ready; at teardown every proxy still running gets SIGTERM and must exit 0
and leave no /dev/shm/fastproxy-<pid>-* behind. When a test fails, the tail
of each proxy's stderr is attached to the report.
"""
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# Property tests draw the same examples on every run (derandomize), so `make
# test` is repeatable and CI never turns red on a new random draw; a hunt for
# new inputs sets FASTPROXY_HYPOTHESIS_RANDOM=1 (and a larger
# FASTPROXY_PROPERTY_EXAMPLES), and whatever it finds is added as a case.
hypothesis_settings.register_profile("repeatable", derandomize=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile("explore" if os.environ.get("FASTPROXY_HYPOTHESIS_RANDOM") == "1" else "repeatable")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.admin_client import AdminClient  # noqa: E402
from tests.support.echo_server import EchoServer  # noqa: E402
from tests.support.proxy_config import (  # noqa: E402
    cluster, proxy_config, tcp_listener, hermetic_settings, write_config)
from tests.support.ports import free_port  # noqa: E402
from tests.support.proxy_process import ProxyProcess  # noqa: E402

PROXIES = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proxy in item.stash.get(PROXIES, []):
            if proxy.proc is not None:
                report.sections.append(
                    (f"fastproxy pid {proxy.pid} stderr (tail)", proxy.stderr_tail()))


@pytest.fixture
def launched_proxies(request) -> list:
    """Every ProxyProcess of this test; their stderr tails go into the report
    of a failing test. Fixtures that run a proxy themselves append to it."""
    return request.node.stash.setdefault(PROXIES, [])


@pytest.fixture
def start_proxy(launched_proxies, tmp_path):
    """Factory: start_proxy(doc, env=None, ready=True, prefix=None, admin=None)."""
    launched: list[ProxyProcess] = []
    counter = iter(range(1000))

    def _start(doc: dict, env: dict | None = None, ready: bool = True,
               prefix: list[str] | None = None, admin: AdminClient | None = None,
               config_path: Path | None = None) -> ProxyProcess:
        n = next(counter)
        path = config_path or tmp_path / f"proxy{n}.yaml"
        write_config(path, doc)
        admin_port = int((env or {}).get("FASTPROXY_ADMIN_PORT", doc["settings"]["admin_port"]))
        proxy = ProxyProcess(path, admin or AdminClient(admin_port), tmp_path / f"proxy{n}.stderr",
                             env=env, prefix=prefix)
        launched.append(proxy)
        launched_proxies.append(proxy)
        proxy.start()
        if ready:
            proxy.wait_ready()
        return proxy

    yield _start

    problems = []
    for proxy in launched:
        if proxy.proc is None:
            continue
        handled_by_test = proxy.stopped_by_test and not proxy.running()
        drain = float(proxy_drain_seconds(proxy))
        try:
            if not handled_by_test:
                rc = proxy.terminate(timeout=drain + 15) if proxy.running() else proxy.proc.returncode
                proxy.assert_clean_exit(rc)
        except AssertionError as exc:
            problems.append(str(exc))
        finally:
            proxy.kill()
            proxy.close_files()
    if problems:
        pytest.fail("proxy teardown:\n" + "\n\n".join(problems), pytrace=False)


def proxy_drain_seconds(proxy: ProxyProcess) -> float:
    import yaml
    try:
        doc = yaml.safe_load(proxy.config_path.read_text())
        return float(doc["settings"].get("drain_seconds", 5))
    except Exception:  # noqa: BLE001 - a deliberately broken config file
        return 5.0


@pytest.fixture
def echo_server():
    with EchoServer() as server:
        yield server


@dataclass
class Relay:
    """An explicit listener `name` on 127.0.0.1:port relaying to `cluster`."""
    proxy: ProxyProcess
    port: int
    name: str
    cluster: str
    doc: dict

    @property
    def admin(self) -> AdminClient:
        return self.proxy.admin


@pytest.fixture
def relay_to(start_proxy):
    """Factory: relay_to(*upstream_addresses, workers=2, **settings) -> Relay,
    a proxy with one explicit listener "tcp" -> cluster "upstream"."""

    def _relay(*upstreams: str, workers: int = 2, env: dict | None = None, **settings) -> Relay:
        port = free_port()
        doc = proxy_config(hermetic_settings(workers=workers, **settings),
                           [tcp_listener("tcp", port, "upstream")],
                           [cluster("upstream", *upstreams)])
        return Relay(start_proxy(doc, env=env), port, "tcp", "upstream", doc)

    return _relay
