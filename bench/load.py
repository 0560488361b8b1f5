"""Load generators, pinned to the load CPU: bench.blast (bulk), wrk (HTTP), bench.idle.

Each reports machine-readable results (the receiver's JSON file, wrk through
configs/wrk_report.lua, bench.idle's JSON file), so no human-readable output
is scraped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

from bench import net, procs, templates
from bench.procs import Started

WRK_MARKER = "BENCH-JSON "
# How long the bulk receiver may take to write its result after the sender ended.
RECEIVER_EXIT_S = 10.0


class LoadError(RuntimeError):
    """The load generator failed or reported an error."""


@dataclass
class Bulk:
    """What one bulk transfer measured, on the receiver."""

    bytes: int
    seconds: float
    gbit_s: float
    command: str


def blast_argv(port: int, nbytes: int, timeout: float) -> list[str]:
    return [sys.executable, "-m", "bench.blast", "send", "--port", str(port),
            "--bytes", str(nbytes), "--timeout", f"{timeout:g}"]


def blast_send(
    port: int, nbytes: int, *, receiver: Started, result_path: str, repo_root: str,
    cpu: str | None, timeout: float, tick: Callable[[], None] | None = None,
) -> Bulk:
    """Send nbytes through port to the receiver; its measurement once it has them all."""
    argv = blast_argv(port, nbytes, timeout)
    try:
        r = procs.run(argv, cpu=cpu, timeout=timeout + 10, tick=tick, cwd=repo_root)
    except subprocess.TimeoutExpired:
        raise LoadError(f"sender did not finish {nbytes} bytes within {timeout:.0f}s") from None
    if r.returncode != 0:
        raise LoadError(f"sender exited {r.returncode}: {r.stderr.strip()[-300:]}")
    try:
        receiver.popen.wait(RECEIVER_EXIT_S)
    except subprocess.TimeoutExpired:
        raise LoadError(f"receiver still running {RECEIVER_EXIT_S:.0f}s after the sender ended") from None
    try:
        with open(result_path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        raise LoadError(f"receiver exited {receiver.exited()} without a result: {receiver.log_tail()}") from None
    if not doc.get("complete") or doc["bytes"] != nbytes:
        raise LoadError(f"receiver got {doc.get('bytes')} of {nbytes} bytes")
    return Bulk(bytes=doc["bytes"], seconds=doc["seconds"], gbit_s=doc["gbit_s"],
                command=procs.command_line(procs.pinned(argv, cpu)))


@dataclass
class Wrk:
    """What one wrk run measured."""

    requests: int
    seconds: float
    bytes: int
    errors: dict
    latency_us: dict
    curve: list  # [[percentile, us], ...] from wrk's latency distribution
    command: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def wrk_script(workdir: str, *, pace_ms: int | None = None, poisson: bool = False) -> str:
    """The wrk Lua script: the JSON report alone, or pacing (configs/wrk_paced.lua) plus it."""
    if pace_ms is None:
        return templates.path("wrk_report.lua")
    with open(templates.path("wrk_report.lua")) as f:
        report = f.read()
    text = templates.render("wrk_paced.lua", mean_ms=pace_ms, poisson=int(poisson)) + report
    return templates.write(workdir, f"wrk-paced-{pace_ms}ms-{'poisson' if poisson else 'steady'}.lua", text)


def wrk_argv(
    wrk: str, port: int, *, connections: int, seconds: float, path: str = "/",
    close: bool = False, script: str | None = None,
) -> list[str]:
    """One wrk thread (the load shares its CPU with the upstream).

    close=True sends Connection: close, so every request is a new TCP
    connection through the proxy (accept, upstream connect, relay, two
    closes); otherwise connections are kept alive.
    """
    # wrk takes whole seconds.
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "2s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv += ["-s", script or templates.path("wrk_report.lua"), f"http://{net.HOST}:{port}{path}"]
    return argv


def wrk_run(
    wrk: str, port: int, *, connections: int, seconds: float, cpu: str | None,
    path: str = "/", close: bool = False, script: str | None = None,
    tick: Callable[[], None] | None = None,
) -> Wrk:
    argv = wrk_argv(wrk, port, connections=connections, seconds=seconds, path=path,
                    close=close, script=script)
    timeout = seconds + 30
    try:
        r = procs.run(argv, cpu=cpu, timeout=timeout, tick=tick)
    except subprocess.TimeoutExpired:
        raise LoadError(f"wrk did not end within {timeout:.0f}s") from None
    line = next((l for l in r.stdout.splitlines() if l.startswith(WRK_MARKER)), None)
    if r.returncode != 0 or line is None:
        raise LoadError(f"wrk exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
    doc = json.loads(line[len(WRK_MARKER):])
    if not doc["requests"]:
        raise LoadError(f"wrk completed no request (errors {doc['errors']})")
    return Wrk(
        requests=int(doc["requests"]),
        seconds=doc["duration_us"] / 1e6,
        bytes=int(doc["bytes"]),
        errors=doc["errors"],
        latency_us=doc["latency_us"],
        curve=doc["curve"],
        command=procs.command_line(procs.pinned(argv, cpu)),
    )
