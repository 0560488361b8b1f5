"""The scenarios: what one sample of one contender measures, and how samples sum up.

- bulk: 1 GiB through the contender on one connection (bench.blast);
  Gbit/s as the receiver saw it, plus the proxy's CPU seconds per GiB.
- rps: many short connections (wrk, Connection: close) to a 13-byte nginx
  answer; requests per CPU-second of the proxy process tree, requests/s and
  wrk's latency percentiles.

A sample starts the contender, measures, and stops it; the driver in
__main__ alternates contenders (A B A B ...) across rounds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

from bench import load, net, procs, upstreams
from bench.contenders import Contender, Setup

GIB = 2**30
# A sample whose wrk errors exceed this share of its requests is flagged.
ERROR_SHARE_FLAG = 0.01


@dataclass
class Params:
    rounds: int
    duration_s: float
    warmup_s: float
    connections: int
    bulk_bytes: int
    load_cpu: str | None
    proxy_cpu: str | None


@dataclass
class Sample:
    scenario: str
    contender: str
    round: int
    metrics: dict[str, float] = field(default_factory=dict)
    detail: dict = field(default_factory=dict)
    error: str | None = None
    flagged: str | None = None


class Scenario:
    name = ""
    title = ""
    needs: tuple[str, ...] = ()
    # ratio column -> the metric it divides (contender's median / baseline's median)
    ratios: dict[str, str] = {}

    def __init__(self) -> None:
        self.upstream: dict = {}
        self.load_command = ""

    def describe(self, params: Params) -> str:
        return self.title

    def prepare(self, setup: Setup, params: Params) -> None:
        """Start what lives for the whole run (an upstream)."""

    def sample(self, setup: Setup, params: Params, contender: Contender, round_no: int,
               tick: Callable[[], None]) -> Sample:
        raise NotImplementedError

    def finish(self, setup: Setup) -> None:
        """Stop what prepare() started."""


class Bulk(Scenario):
    name = "bulk"
    needs = ()
    ratios = {"xdirect": "gbit_s", "xhaproxy": "gbit_s", "xenvoy": "gbit_s"}

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


class ShortConnections(Scenario):
    name = "rps"
    needs = ("nginx", "wrk")
    # Beside direct, which has no proxy CPU, the request rate is what compares.
    ratios = {"xdirect": "rps", "xhaproxy": "req_per_cpu_s", "xenvoy": "req_per_cpu_s"}

    def __init__(self) -> None:
        super().__init__()
        self._nginx = None
        self._port = 0

    def describe(self, params: Params) -> str:
        return (f"Short connections: wrk -t1 -c{params.connections} -d{params.duration_s:g}s "
                f"(after {params.warmup_s:g}s warm-up), Connection: close (one TCP connection "
                f"per request), nginx answering 13 bytes")

    def prepare(self, setup, params) -> None:
        started, port, command, config = upstreams.start_nginx(
            setup.procs, setup.tools.path("nginx"), setup.workdir, params.load_cpu)
        self._nginx, self._port = started, port
        self.upstream = {"command": command, "config": config}

    def finish(self, setup) -> None:
        if self._nginx is not None:
            setup.procs.stop(self._nginx)
            self._nginx = None

    def sample(self, setup, params, contender, round_no, tick) -> Sample:
        s = Sample(self.name, contender.name, round_no)
        if self._nginx is None or self._nginx.exited() is not None:
            raise RuntimeError("the nginx upstream is not running")
        wrk = setup.tools.path("wrk")
        running = contender.start(setup, self._port, self.name)
        try:
            status, body = net.http_get(running.port)
            if status != 200 or body != upstreams.BODY:
                raise RuntimeError(f"GET through {contender.name} gave {status} {body[:40]!r}")
            if params.warmup_s > 0:
                load.wrk_run(wrk, running.port, connections=params.connections,
                             seconds=params.warmup_s, cpu=params.load_cpu, tick=tick)
            cpu0 = procs.tree_cpu_seconds(running.pid) if running.pid else None
            clock0 = procs.cpu_times_now()
            result = load.wrk_run(wrk, running.port, connections=params.connections,
                                  seconds=params.duration_s, cpu=params.load_cpu, tick=tick)
            clock1 = procs.cpu_times_now()
            cpu1 = procs.tree_cpu_seconds(running.pid) if running.pid else None
            s.detail["observed"] = contender.observe(running)
        finally:
            contender.stop(setup, running)
        self.load_command = result.command
        s.metrics["rps"] = result.rps
        s.metrics["p50_ms"] = result.latency_us["p50"] / 1000
        s.metrics["p90_ms"] = result.latency_us["p90"] / 1000
        s.metrics["p99_ms"] = result.latency_us["p99"] / 1000
        s.metrics["errors"] = result.error_count
        s.detail.update(requests=result.requests, seconds=result.seconds,
                        errors=result.errors, latency_us=result.latency_us)
        _cpu_load(s, params, clock0, clock1)
        if cpu0 is not None:
            cpu = cpu1 - cpu0
            s.metrics["proxy_cpu_s"] = cpu
            if cpu > 0:
                s.metrics["req_per_cpu_s"] = result.requests / cpu
        if result.requests and result.error_count > ERROR_SHARE_FLAG * result.requests:
            s.flagged = f"{result.error_count} wrk errors in {result.requests} requests: {result.errors}"
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


ALL = {c.name: c for c in (Bulk, ShortConnections)}


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


def ratio(summary: dict[str, dict[str, Spread]], contender: str, baseline: str,
          metric: str) -> float | None:
    """Median of contender / median of baseline for metric, None when either is missing."""
    a = summary.get(contender, {}).get(metric)
    b = summary.get(baseline, {}).get(metric)
    if a is None or b is None or b.median == 0:
        return None
    return a.median / b.median
