"""The namespace lab: a NetnsPair (support/netns.py) with the proxy running
in namespace a as gid 1337, as Istio's sidecar runs, so the REDIRECT rules
that exclude gid 1337 never capture the proxy's own upstream connections;
echo upstreams in namespace b; clients started inside namespace a."""
import json
import subprocess

from tests.support.admin_client import NetnsAdminClient
from tests.support.echo_process import EchoProcess, HttpUpstreamProcess
from tests.support.netns import NetnsPair
from tests.support.proxy_config import write_config
from tests.support.proxy_process import PYTHON, REPO_ROOT, ProxyProcess

ADMIN_PORT = 15000
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
PROXY_GID = 1337


def lab_settings(**overrides) -> dict:
    settings = {"workers": 2, "admin_port": ADMIN_PORT, "stats_port": 0, "merged_metrics_port": 0,
                "health_port": 0, "outbound_port": OUTBOUND_PORT, "inbound_port": INBOUND_PORT,
                "drain_seconds": 2, "connect_timeout_ms": 2000, "config_poll_ms": 1000}
    settings.update(overrides)
    return settings


class Lab:
    def __init__(self, pair: NetnsPair, tmp_path, launched: list):
        self.pair = pair
        self.tmp_path = tmp_path
        self.launched = launched
        self.upstreams: list[EchoProcess] = []
        self.proxy: ProxyProcess | None = None

    def start_upstream(self, port: int, tag: str = "", ns: str | None = None) -> EchoProcess:
        """An echo server on 0.0.0.0:port and [::]:port in namespace `ns`
        (default: b, the remote side)."""
        server = EchoProcess([f"0.0.0.0:{port}", f"[::]:{port}"], tag=tag,
                             prefix=["ip", "netns", "exec", ns or self.pair.b])
        self.upstreams.append(server)
        return server

    def start_http_upstream(self, port: int, name: str, ns: str | None = None) -> "HttpUpstreamProcess":
        """tests.support.http_upstreams' server on 0.0.0.0:port in namespace
        `ns` (default: b), as a child process; requests() counts what it served."""
        server = HttpUpstreamProcess([f"0.0.0.0:{port}"], name, prefix=["ip", "netns", "exec", ns or self.pair.b])
        self.upstreams.append(server)
        return server

    def start_proxy(self, doc: dict) -> ProxyProcess:
        path = write_config(self.tmp_path / "lab.yaml", doc)
        prefix = ["ip", "netns", "exec", self.pair.a,
                  "setpriv", f"--regid={PROXY_GID}", "--clear-groups"]
        self.proxy = ProxyProcess(path, NetnsAdminClient(self.pair.a, ADMIN_PORT),
                                  self.tmp_path / "lab-proxy.stderr", prefix=prefix)
        self.launched.append(self.proxy)
        self.proxy.start().wait_ready(timeout=20)
        return self.proxy

    def client(self, target: str, nbytes: int = 100_000, seed: int = 7, expect_prefix: str = "",
               ns: str | None = None) -> dict:
        """One echo-verified transfer from a fresh process in namespace `ns`
        (default: a, as root's gid, so the OUTPUT REDIRECT rules apply)."""
        argv = self.pair.exec_argv(ns or self.pair.a, PYTHON, "-m", "tests.support.tcp_client",
                                   "--connect", target, "--bytes", str(nbytes), "--seed", str(seed),
                                   "--timeout", "10")
        if expect_prefix:
            argv += ["--expect-prefix", expect_prefix]
        out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert out.stdout.strip(), f"client printed nothing: {out.stderr}"
        return json.loads(out.stdout.strip().splitlines()[-1])

    def teardown(self) -> list[str]:
        problems = []
        if self.proxy is not None and self.proxy.proc is not None:
            try:
                if self.proxy.running():
                    rc = self.proxy.terminate(timeout=15)
                    self.proxy.assert_clean_exit(rc)
            except AssertionError as exc:
                problems.append(str(exc))
            finally:
                self.proxy.kill()
                self.proxy.close_files()
        for server in self.upstreams:
            server.stop()
        return problems


