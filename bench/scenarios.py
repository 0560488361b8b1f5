"""The scenarios: what one sample of one contender measures, and how samples sum up.

Each scenario runs the contenders of its layer(s) (bench/contenders.py) and,
unless it says otherwise, direct. HTTP scenarios talk to one nginx upstream
(bench/upstreams.py) that answers 13 bytes on / and 1 MiB on /1mb.

- keepalive: wrk over keep-alive connections, 13-byte answers: requests per
  CPU-second of the proxy, CPU-seconds per 1,000 requests, req/s,
  p50/p99/p99.9, and the proxy's RSS at rest and under this load;
- paced1, paced50: latency at a modest rate: 1 connection sending a request
  every ~1 ms, and 50 connections with exponential gaps of mean 50 ms
  (~1,000 req/s in all); percentiles and what they add over direct;
- onecore: 1 connection, closed loop, with load, upstream and proxy all on
  the proxy CPU (no wake-up across CPUs hides the proxy's own path);
- newconn: wrk with Connection: close, a new TCP connection per request,
  through the HTTP and the TCP contenders;
- stream: wrk fetching 1 MiB bodies over keep-alive connections;
- bulk: 1 GiB through the TCP contenders on one connection (bench.blast);
- idle: N idle keep-alive connections (bench.idle, one GET each): the
  proxy's RSS with them open, against at rest.

A sample starts the contender, checks it answers, measures, and stops it;
the driver in __main__ alternates contenders (A B A B ...) across rounds.
Each scenario also lists the columns of its table (Col) for the report.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from bench import load, net, procs, upstreams
from bench.contenders import HTTP, TCP, Contender, Setup

GIB = 2**30
MIB = 2**20
# A sample whose wrk errors exceed this share of its requests is flagged.
ERROR_SHARE_FLAG = 0.01
# idle: how long the client may take to open its connections, and how long
# the proxy gets to settle before its memory is read.
IDLE_OPEN_TIMEOUT_S = 60.0
IDLE_SETTLE_S = 0.5


@dataclass
class Params:
    rounds: int
    duration_s: float
    warmup_s: float
    connections: int
    bulk_bytes: int
    load_cpu: str | None
    proxy_cpu: str | None
    workers: int = 1
    paced_s: float = 5.0
    stream_connections: int = 8
    idle_connections: int = 10000


@dataclass
class Sample:
    scenario: str
    contender: str
    round: int
    metrics: dict[str, float] = field(default_factory=dict)
    detail: dict = field(default_factory=dict)
    error: str | None = None
    flagged: str | None = None


@dataclass(frozen=True)
class Col:
    """One column of a scenario's table.

    kind: "spread" median [min, max] of metric; "median" its median;
    "ratio" contender's median / baseline's median; "minus" contender's
    median - baseline's; "busy" the load/proxy CPU busy shares; "notes".
    baseline: a contender name, or "envoy"/"haproxy", meaning the one of
    the row's layer (envoy-http for HTTP rows, envoy-tcp for TCP rows).
    """

    header: str
    kind: str = "median"
    metric: str = ""
    digits: int = 0
    baseline: str = ""


BUSY = Col("busy load/proxy", "busy")
NOTES = Col("notes", "notes")


class Scenario:
    name = ""
    title = ""
    layers: tuple[str, ...] = (HTTP,)
    with_direct = True
    needs: tuple[str, ...] = ()
    columns: tuple[Col, ...] = ()
    legend = ""

    def __init__(self) -> None:
        self.upstream: dict = {}
        self.load_command = ""

    def describe(self, params: Params) -> str:
        return self.title

    def runs(self, contender: Contender) -> bool:
        """Whether this scenario measures the contender."""
        only = getattr(contender, "only", None)
        if only is not None and self.name not in only:
            return False
        if contender.layer is None:
            return self.with_direct
        return contender.layer in self.layers

    def prepare(self, setup: Setup, params: Params, shared: dict) -> None:
        """Start what lives for the whole run (an upstream); shared holds the common ones."""

    def sample(self, setup: Setup, params: Params, contender: Contender, round_no: int,
               tick: Callable[[], None]) -> Sample:
        raise NotImplementedError

    def finish(self, setup: Setup) -> None:
        """Stop what prepare() started."""


# ---- the shared nginx upstream ---------------------------------------------


class Upstream:
    """One nginx upstream, started on first use and shared by the HTTP scenarios."""

    def __init__(self, name: str, cpu: str | None) -> None:
        self.name = name
        self.cpu = cpu
        self.started = None
        self.port = 0
        self.doc: dict = {}

    def ensure(self, setup: Setup) -> None:
        if self.started is None:
            started, port, command, config = upstreams.start_nginx(
                setup.procs, setup.tools.path("nginx"), setup.workdir, self.cpu, name=self.name)
            self.started, self.port = started, port
            self.doc = {"command": command, "config": config}
        if self.started.exited() is not None:
            raise RuntimeError(f"the {self.name} upstream is not running")

    def stop(self, setup: Setup) -> None:
        if self.started is not None:
            setup.procs.stop(self.started)
            self.started = None


class HttpScenario(Scenario):
    """Against the nginx upstream (on the load CPU unless upstream_on_proxy_cpu)."""

    needs = ("nginx", "wrk")
    path = "/"
    upstream_on_proxy_cpu = False

    def __init__(self) -> None:
        super().__init__()
        self._up: Upstream | None = None
        self._own = False

    def prepare(self, setup, params, shared) -> None:
        if self.upstream_on_proxy_cpu:
            self._up = Upstream(f"nginx-upstream-{self.name}", params.proxy_cpu)
            self._own = True
        else:
            self._up = shared.setdefault("nginx", Upstream("nginx-upstream", params.load_cpu))
        self._up.ensure(setup)
        self.upstream = self._up.doc

    def finish(self, setup) -> None:
        if self._up is not None:
            self._up.stop(setup)

    def _wrk_metrics(self, s: Sample, params: Params, m) -> None:
        """What every wrk-driven sample records: the command, latency, CPU load and proxy CPU-seconds."""
        self.load_command = m.wrk.command
        _latency_metrics(s, m.wrk)
        _cpu_load(s, params, *m.clock)
        if m.cpu_s is not None:
            s.metrics["proxy_cpu_s"] = m.cpu_s

    def _start_checked(self, setup: Setup, contender: Contender):
        """Start the contender on the upstream and check one GET of self.path through it."""
        self._up.ensure(setup)
        running = contender.start(setup, self._up.port, self.name)
        try:
            try:
                status, body = net.http_get(running.port, self.path)
            except OSError as e:
                # The contender's own last words say more than the timeout.
                tail = running.started.log_tail(1) if running.started else ""
                raise RuntimeError(f"GET {self.path} through {contender.name} failed: "
                                   f"{type(e).__name__}: {e}"
                                   + (f" (its log ends: {tail.strip()})" if tail.strip() else "")) from None
            want = upstreams.STREAM_BYTES if self.path == upstreams.STREAM_PATH else len(upstreams.BODY)
            if status != 200 or len(body) != want or (want == len(upstreams.BODY) and body != upstreams.BODY):
                raise RuntimeError(f"GET {self.path} through {contender.name} gave {status}, "
                                   f"{len(body)} bytes {body[:40]!r}")
        except BaseException:
            contender.stop(setup, running)
            raise
        return running


# ---- measuring one wrk run -------------------------------------------------


@dataclass
class Measured:
    wrk: load.Wrk
    cpu_s: float | None
    clock: tuple
    memory_load: dict | None


def _measure_wrk(setup: Setup, running, wrk_kwargs: dict, *, cpu: str | None, tick,
                 memory_at: float | None = None) -> Measured:
    """One wrk run; the proxy's CPU time over it, and its memory at memory_at s in."""
    wrk = setup.tools.path("wrk")
    memory: dict = {}
    timer = None
    if memory_at is not None and running.pid:
        timer = threading.Timer(memory_at, lambda: memory.update(procs.tree_memory(running.pid)))
        timer.daemon = True
    cpu0 = procs.tree_cpu_seconds(running.pid) if running.pid else None
    clock0 = procs.cpu_times_now()
    if timer:
        timer.start()
    try:
        result = load.wrk_run(wrk, running.port, cpu=cpu, tick=tick, **wrk_kwargs)
    finally:
        if timer:
            timer.cancel()
            timer.join()
    clock1 = procs.cpu_times_now()
    cpu1 = procs.tree_cpu_seconds(running.pid) if running.pid else None
    return Measured(result, None if cpu0 is None else cpu1 - cpu0, (clock0, clock1), memory or None)


def _latency_metrics(s: Sample, w: load.Wrk, prefix: str = "") -> None:
    s.metrics[prefix + "rps"] = w.rps
    s.metrics[prefix + "p50_us"] = w.latency_us["p50"]
    s.metrics[prefix + "p99_us"] = w.latency_us["p99"]
    s.metrics[prefix + "p99_9_us"] = w.latency_us["p99_9"]
    s.metrics[prefix + "errors"] = w.error_count
    s.detail[prefix + "wrk"] = {"requests": w.requests, "seconds": w.seconds, "bytes": w.bytes,
                                "errors": w.errors, "latency_us": w.latency_us}
    s.detail[prefix + "curve"] = w.curve
    if w.requests and w.error_count > ERROR_SHARE_FLAG * w.requests:
        s.flagged = f"{w.error_count} wrk errors in {w.requests} requests: {w.errors}"


def _mib(n: int) -> float:
    return n / MIB


# ---- the scenarios ---------------------------------------------------------


class KeepAlive(HttpScenario):
    name = "keepalive"
    columns = (
        Col("req/CPU-s", "spread", "req_per_cpu_s"),
        Col("xEnvoy", "ratio", "req_per_cpu_s", 2, "envoy"),
        Col("xnginx", "ratio", "req_per_cpu_s", 2, "nginx"),
        Col("xfastproxy", "ratio", "req_per_cpu_s", 2, "fastproxy-http"),
        Col("CPU-s/1k req", "median", "cpu_s_per_1k", 3),
        Col("req/s", "spread", "rps"),
        Col("xdirect", "ratio", "rps", 2, "direct"),
        Col("p50 µs", "median", "p50_us"),
        Col("p99 µs", "median", "p99_us"),
        Col("p99.9 µs", "median", "p99_9_us"),
        Col("RSS/worker MiB rest", "median", "rss_worker_rest_mib", 1),
        Col("RSS/worker MiB load", "median", "rss_worker_load_mib", 1),
        BUSY, NOTES,
    )
    legend = ("xEnvoy/xnginx: req/CPU-s over theirs (higher is better); xfastproxy: over "
              "fastproxy-http's (fastproxy-governed: every traffic policy configured, none "
              "triggered; 0.95 or more means the policies cost under 5%); xdirect: req/s over "
              "direct's; CPU-s/1k req: proxy CPU-seconds per 1,000 requests (Istio quotes 0.35 "
              "vCPU per 1,000 req/s for Envoy); RSS/worker: RSS of all the proxy's processes / "
              "workers, at rest (after one request) and halfway through the measured run")

    def describe(self, params: Params) -> str:
        return (f"HTTP/1.1 keep-alive, 13-byte answers: wrk -t1 -c{params.connections} "
                f"-d{params.duration_s:g}s (after {params.warmup_s:g}s warm-up)")

    def sample(self, setup, params, contender, round_no, tick) -> Sample:
        s = Sample(self.name, contender.name, round_no)
        running = self._start_checked(setup, contender)
        try:
            rest = procs.tree_memory(running.pid) if running.pid else None
            if params.warmup_s > 0:
                load.wrk_run(setup.tools.path("wrk"), running.port, connections=params.connections,
                             seconds=params.warmup_s, cpu=params.load_cpu, tick=tick)
            m = _measure_wrk(setup, running, {"connections": params.connections,
                                              "seconds": params.duration_s},
                             cpu=params.load_cpu, tick=tick, memory_at=params.duration_s / 2)
            s.detail["observed"] = contender.observe(running)
        finally:
            contender.stop(setup, running)
        self._wrk_metrics(s, params, m)
        if m.cpu_s:
            s.metrics["req_per_cpu_s"] = m.wrk.requests / m.cpu_s
            s.metrics["cpu_s_per_1k"] = 1000 * m.cpu_s / m.wrk.requests
        if rest:
            s.metrics["rss_worker_rest_mib"] = _mib(rest["rss"]) / params.workers
            s.metrics["pss_rest_mib"] = _mib(rest["pss"])
            s.detail["memory_rest"] = rest
        if m.memory_load:
            s.metrics["rss_worker_load_mib"] = _mib(m.memory_load["rss"]) / params.workers
            s.metrics["pss_load_mib"] = _mib(m.memory_load["pss"])
            s.detail["memory_load"] = m.memory_load
        return s


_LATENCY_COLUMNS = (
    Col("req/s", "median", "rps"),
    Col("p50 µs", "spread", "p50_us"),
    Col("p99 µs", "median", "p99_us"),
    Col("p99.9 µs", "median", "p99_9_us"),
    Col("+p50 µs", "minus", "p50_us", 0, "direct"),
    Col("+p99 µs", "minus", "p99_us", 0, "direct"),
    Col("+p99.9 µs", "minus", "p99_9_us", 0, "direct"),
    Col("xdirect", "ratio", "p50_us", 2, "direct"),
    Col("xEnvoy", "ratio", "p50_us", 2, "envoy"),
    Col("xnginx", "ratio", "p50_us", 2, "nginx"),
    BUSY, NOTES,
)
_LATENCY_LEGEND = ("+pN: the contender's percentile minus direct's (the latency the proxy adds); "
                   "xdirect/xEnvoy/xnginx: p50 over theirs (lower is better)")


class Paced(HttpScenario):
    """Latency at a modest, paced rate (wrk's delay() hook; see configs/wrk_paced.lua)."""

    conns = 1
    pace_ms = 1
    poisson = False
    columns = _LATENCY_COLUMNS
    legend = _LATENCY_LEGEND

    def describe(self, params: Params) -> str:
        how = (f"exponential gaps of mean {self.pace_ms} ms per connection (Poisson arrivals)"
               if self.poisson else f"a {self.pace_ms} ms pause before each request")
        return (f"Latency at a modest rate: {self.conns} keep-alive connection(s), {how}, "
                f"~{self.conns * 1000 // self.pace_ms:,} req/s offered, {params.paced_s:g}s "
                f"(wrk -t1 -c{self.conns}; closed loop per connection: wrk has no open-loop mode)")

    def sample(self, setup, params, contender, round_no, tick) -> Sample:
        s = Sample(self.name, contender.name, round_no)
        script = load.wrk_script(setup.workdir, pace_ms=self.pace_ms, poisson=self.poisson)
        running = self._start_checked(setup, contender)
        try:
            m = _measure_wrk(setup, running, {"connections": self.conns, "seconds": params.paced_s,
                                              "script": script},
                             cpu=params.load_cpu, tick=tick)
        finally:
            contender.stop(setup, running)
        self._wrk_metrics(s, params, m)
        return s


class Paced1(Paced):
    name = "paced1"


class Paced50(Paced):
    name = "paced50"
    conns = 50
    pace_ms = 50
    poisson = True


class OneCore(HttpScenario):
    """1 connection with wrk, upstream and proxy all on the proxy CPU."""

    name = "onecore"
    upstream_on_proxy_cpu = True
    columns = _LATENCY_COLUMNS
    legend = _LATENCY_LEGEND

    def describe(self, params: Params) -> str:
        where = f"CPU {params.proxy_cpu}" if params.proxy_cpu is not None else "unpinned (no pinning possible)"
        return (f"One core: 1 keep-alive connection, closed loop (wrk -t1 -c1 "
                f"-d{params.duration_s:g}s), wrk, its own nginx upstream and the proxy all on "
                f"{where}")

    def sample(self, setup, params, contender, round_no, tick) -> Sample:
        s = Sample(self.name, contender.name, round_no)
        running = self._start_checked(setup, contender)
        try:
            if params.warmup_s > 0:
                load.wrk_run(setup.tools.path("wrk"), running.port, connections=1,
                             seconds=params.warmup_s, cpu=params.proxy_cpu, tick=tick)
            m = _measure_wrk(setup, running, {"connections": 1, "seconds": params.duration_s},
                             cpu=params.proxy_cpu, tick=tick)
        finally:
            contender.stop(setup, running)
        self._wrk_metrics(s, params, m)
        return s


class NewConnections(HttpScenario):
    name = "newconn"
    layers = (HTTP, TCP)
    columns = (
        Col("req/CPU-s", "spread", "req_per_cpu_s"),
        Col("xEnvoy", "ratio", "req_per_cpu_s", 2, "envoy"),
        Col("xnginx", "ratio", "req_per_cpu_s", 2, "nginx"),
        Col("req/s", "spread", "rps"),
        Col("xdirect", "ratio", "rps", 2, "direct"),
        Col("p50 µs", "median", "p50_us"),
        Col("p99 µs", "median", "p99_us"),
        Col("errors", "median", "errors"),
        BUSY, NOTES,
    )
    legend = ("xEnvoy/xnginx: req/CPU-s over theirs, Envoy of the row's layer (envoy-http for "
              "HTTP rows, envoy-tcp for TCP rows); xdirect: req/s over direct's; higher is better")

    def describe(self, params: Params) -> str:
        return (f"New connection per request: wrk -t1 -c{params.connections} "
                f"-d{params.duration_s:g}s (after {params.warmup_s:g}s warm-up), "
                f"Connection: close, 13-byte answers; HTTP and TCP contenders")

    def sample(self, setup, params, contender, round_no, tick) -> Sample:
        s = Sample(self.name, contender.name, round_no)
        running = self._start_checked(setup, contender)
        try:
            if params.warmup_s > 0:
                load.wrk_run(setup.tools.path("wrk"), running.port, connections=params.connections,
                             seconds=params.warmup_s, cpu=params.load_cpu, close=True, tick=tick)
            m = _measure_wrk(setup, running, {"connections": params.connections,
                                              "seconds": params.duration_s, "close": True},
                             cpu=params.load_cpu, tick=tick)
            s.detail["observed"] = contender.observe(running)
        finally:
            contender.stop(setup, running)
        self._wrk_metrics(s, params, m)
        if m.cpu_s:
            s.metrics["req_per_cpu_s"] = m.wrk.requests / m.cpu_s
        return s


class Stream(HttpScenario):
    name = "stream"
    path = upstreams.STREAM_PATH
    columns = (
        Col("Gbit/s", "spread", "gbit_s", 2),
        Col("xdirect", "ratio", "gbit_s", 2, "direct"),
        Col("xEnvoy", "ratio", "gbit_s", 2, "envoy"),
        Col("xnginx", "ratio", "gbit_s", 2, "nginx"),
        Col("req/s", "median", "rps"),
        Col("proxy CPU-s/GiB", "median", "proxy_cpu_s_per_gib", 3),
        Col("p50 ms", "median", "p50_ms", 2),
        Col("p99 ms", "median", "p99_ms", 2),
        BUSY, NOTES,
    )
    legend = "ratios: Gbit/s over theirs, higher is better; Gbit/s counts wrk's bytes (bodies + heads)"

    def describe(self, params: Params) -> str:
        return (f"Streaming 1 MiB bodies: wrk -t1 -c{params.stream_connections} "
                f"-d{params.duration_s:g}s {upstreams.STREAM_PATH} (after {params.warmup_s:g}s "
                f"warm-up), keep-alive; nginx upstream sends the file with sendfile")

    def sample(self, setup, params, contender, round_no, tick) -> Sample:
        s = Sample(self.name, contender.name, round_no)
        running = self._start_checked(setup, contender)
        kwargs = {"connections": params.stream_connections, "path": self.path}
        try:
            if params.warmup_s > 0:
                load.wrk_run(setup.tools.path("wrk"), running.port, seconds=params.warmup_s,
                             cpu=params.load_cpu, tick=tick, **kwargs)
            m = _measure_wrk(setup, running, {**kwargs, "seconds": params.duration_s},
                             cpu=params.load_cpu, tick=tick)
        finally:
            contender.stop(setup, running)
        w = m.wrk
        self.load_command = w.command
        _latency_metrics(s, w)
        s.metrics["p50_ms"] = w.latency_us["p50"] / 1000
        s.metrics["p99_ms"] = w.latency_us["p99"] / 1000
        s.metrics["gbit_s"] = w.bytes * 8 / w.seconds / 1e9
        _cpu_load(s, params, *m.clock)
        if m.cpu_s is not None:
            s.metrics["proxy_cpu_s"] = m.cpu_s
            s.metrics["proxy_cpu_s_per_gib"] = m.cpu_s / (w.bytes / GIB)
        return s


class Idle(HttpScenario):
    name = "idle"
    with_direct = False
    needs = ("nginx",)
    columns = (
        Col("open", "median", "open"),
        Col("RSS MiB rest", "median", "rss_rest_mib", 1),
        Col("RSS MiB idle conns", "spread", "rss_idle_mib", 1),
        Col("KiB/conn", "median", "kib_per_conn", 1),
        Col("xEnvoy", "ratio", "rss_idle_mib", 2, "envoy"),
        Col("xnginx", "ratio", "rss_idle_mib", 2, "nginx"),
        Col("PSS MiB idle conns", "median", "pss_idle_mib", 1),
        Col("RSS/worker MiB idle", "median", "rss_worker_idle_mib", 1),
        NOTES,
    )
    legend = ("RSS: summed over the proxy's processes; PSS counts pages shared between them once; "
              "KiB/conn: (RSS with the connections - RSS at rest) / open connections; "
              "xEnvoy/xnginx: RSS with the connections over theirs (lower is better)")

    def describe(self, params: Params) -> str:
        return (f"Idle keep-alive connections: {params.idle_connections:,} connections "
                f"(python -m bench.idle: one GET each, then silent); the proxy's memory")

    def sample(self, setup, params, contender, round_no, tick) -> Sample:
        s = Sample(self.name, contender.name, round_no)
        running = self._start_checked(setup, contender)
        client = None
        try:
            time.sleep(IDLE_SETTLE_S)
            rest = procs.tree_memory(running.pid)
            client, result = _open_idle(setup, params, running.port, tick)
            time.sleep(IDLE_SETTLE_S)
            held = procs.tree_memory(running.pid)
            if client.exited() is not None:
                raise RuntimeError(f"bench.idle exited early: {client.log_tail()}")
        finally:
            if client is not None:
                setup.procs.stop(client)
            contender.stop(setup, running)
        self.load_command = procs.command_line(client.argv)
        opened = result["open"]
        s.metrics.update(
            open=opened, failed=result["failed"], open_seconds=result["seconds"],
            rss_rest_mib=_mib(rest["rss"]), rss_idle_mib=_mib(held["rss"]),
            pss_rest_mib=_mib(rest["pss"]), pss_idle_mib=_mib(held["pss"]),
            rss_worker_idle_mib=_mib(held["rss"]) / params.workers,
        )
        if opened:
            s.metrics["kib_per_conn"] = (held["rss"] - rest["rss"]) / 1024 / opened
        s.detail.update(memory_rest=rest, memory_idle=held, client=result)
        if opened < params.idle_connections:
            s.flagged = f"only {opened} of {params.idle_connections} connections opened ({result['failed']} failed)"
        return s


def _open_idle(setup: Setup, params: Params, port: int, tick):
    """Start bench.idle on port; (its process, its result) once it holds the connections."""
    result_path = os.path.join(setup.workdir, f"idle-{port}.json")
    argv = [sys.executable, "-m", "bench.idle", "--port", str(port),
            "--count", str(params.idle_connections), "--result", result_path,
            "--timeout", f"{IDLE_OPEN_TIMEOUT_S:g}", "--hold", f"{IDLE_OPEN_TIMEOUT_S * 2:g}"]
    client = setup.procs.start("bench-idle", argv, cpu=params.load_cpu, cwd=setup.repo_root)
    try:
        deadline = time.monotonic() + IDLE_OPEN_TIMEOUT_S + 15
        while not os.path.exists(result_path):
            if client.exited() is not None:
                raise RuntimeError(f"bench.idle exited {client.exited()}: {client.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError("bench.idle did not report its connections in time")
            tick()
            time.sleep(0.1)
        with open(result_path) as f:
            result = json.load(f)
    except BaseException:
        setup.procs.stop(client)
        raise
    os.unlink(result_path)
    return client, result


class Bulk(Scenario):
    name = "bulk"
    layers = (TCP,)
    needs = ()
    columns = (
        Col("Gbit/s", "spread", "gbit_s", 2),
        Col("xdirect", "ratio", "gbit_s", 2, "direct"),
        Col("xHAProxy", "ratio", "gbit_s", 2, "haproxy"),
        Col("xEnvoy", "ratio", "gbit_s", 2, "envoy"),
        Col("proxy CPU-s/GiB", "median", "proxy_cpu_s_per_gib", 3),
        BUSY, NOTES,
    )
    legend = "ratios: Gbit/s over theirs (haproxy-tcp, envoy-tcp), higher is better"

    def describe(self, params: Params) -> str:
        return (f"TCP bulk: {params.bulk_bytes / GIB:g} GiB per sample, one connection "
                f"(bench.blast: sendfile sender, receiver times first to last byte)")

    def sample(self, setup, params, contender, round_no, tick) -> Sample:
        s = Sample(self.name, contender.name, round_no)
        timeout = 60 + params.bulk_bytes / GIB * 60
        receiver, up_port, result_path = upstreams.start_blast_receiver(
            setup.procs, setup.repo_root, setup.workdir, params.bulk_bytes, timeout, params.load_cpu)
        self.upstream = {"command": procs.command_line(receiver.argv).replace(str(up_port), "<port>")}
        try:
            running = contender.start(setup, up_port, self.name)
            try:
                cpu0 = procs.tree_cpu_seconds(running.pid) if running.pid else None
                clock0 = procs.cpu_times_now()
                result = load.blast_send(running.port, params.bulk_bytes, receiver=receiver,
                                         result_path=result_path, repo_root=setup.repo_root,
                                         cpu=params.load_cpu, timeout=timeout, tick=tick)
                clock1 = procs.cpu_times_now()
                cpu1 = procs.tree_cpu_seconds(running.pid) if running.pid else None
                s.detail["observed"] = contender.observe(running)
            finally:
                contender.stop(setup, running)
        finally:
            setup.procs.stop(receiver)
        self.load_command = result.command
        s.metrics["gbit_s"] = result.gbit_s
        s.detail.update(bytes=result.bytes, seconds=result.seconds)
        _cpu_load(s, params, clock0, clock1)
        if cpu0 is not None:
            cpu = cpu1 - cpu0
            s.metrics["proxy_cpu_s"] = cpu
            s.metrics["proxy_cpu_s_per_gib"] = cpu / (result.bytes / GIB)
        return s


def _cpu_load(s: Sample, params: Params, before: list, after: list) -> None:
    """How busy the load and proxy CPUs were during the measurement (which side limited it)."""
    for key, spec in (("load_cpu_busy", params.load_cpu), ("proxy_cpu_busy", params.proxy_cpu)):
        if spec is not None:
            busy = procs.cpu_busy(before, after, cpu_set(spec))
            if busy is not None:
                s.metrics[key] = busy


def cpu_set(spec: str) -> set[int]:
    """taskset list '0', '1-3', '0,2' -> {CPU numbers}."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


ALL = {c.name: c for c in (KeepAlive, Paced1, Paced50, OneCore, NewConnections, Stream, Bulk, Idle)}


@dataclass
class Spread:
    median: float
    min: float
    max: float
    n: int


def summarize(samples: list[Sample]) -> dict[str, dict[str, dict[str, Spread]]]:
    """scenario -> contender -> metric -> median/min/max over the good samples."""
    values: dict[str, dict[str, dict[str, list[float]]]] = {}
    for s in samples:
        if s.error:
            continue
        per = values.setdefault(s.scenario, {}).setdefault(s.contender, {})
        for metric, v in s.metrics.items():
            per.setdefault(metric, []).append(v)
    return {
        scenario: {
            contender: {
                m: Spread(statistics.median(vs), min(vs), max(vs), len(vs))
                for m, vs in metrics.items()
            }
            for contender, metrics in by_contender.items()
        }
        for scenario, by_contender in values.items()
    }


def median_curve(samples: list[Sample], scenario: str, contender: str) -> list[list[float]]:
    """[[percentile, us], ...]: at each percentile, the median over the good samples."""
    curves = [s.detail["curve"] for s in samples
              if s.scenario == scenario and s.contender == contender and not s.error
              and s.detail.get("curve")]
    if not curves:
        return []
    return [[p, statistics.median(c[i][1] for c in curves)] for i, (p, _) in enumerate(curves[0])]


def resolve_baseline(baseline: str, layer: str | None, scenario: Scenario) -> str:
    """A column's baseline contender for a row of the given layer ("envoy" -> envoy-http/-tcp)."""
    if baseline in ("envoy", "haproxy"):
        return f"{baseline}-{layer or scenario.layers[0]}"
    return baseline


def column_value(summary: dict[str, dict[str, Spread]], col: Col, contender: str,
                 baseline: str) -> float | None:
    """The number a ratio/minus column shows for a contender, None when either side is missing."""
    a = summary.get(contender, {}).get(col.metric)
    b = summary.get(baseline, {}).get(col.metric)
    if a is None or b is None:
        return None
    if col.kind == "minus":
        return a.median - b.median
    return a.median / b.median if b.median else None
