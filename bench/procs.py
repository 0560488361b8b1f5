"""Every process the bench starts: pinned on start, stopped by PID, CPU-timed.

Rules kept here so no other module has to remember them:
- each long-running process is registered and stopped by its own PID
  (SIGTERM, bounded wait, SIGKILL), then any descendant it left behind is
  stopped by PID too; nothing is ever signalled by name;
- each short command runs with a timeout;
- pinning is a `taskset -c N` prefix, which execs, so the PID we hold is the
  PID of the program itself and the recorded command can be pasted in a shell.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

import psutil

STOP_GRACE_S = 10.0
KILL_GRACE_S = 5.0


def pinned(argv: list[str], cpu: str | None) -> list[str]:
    """argv prefixed with `taskset -c cpu` (a taskset CPU list), or argv itself when cpu is None."""
    if cpu is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


def command_line(argv: list[str]) -> str:
    """argv as one shell-quoted line, for reports."""
    return shlex.join(argv)


def taskset_available() -> bool:
    return shutil.which("taskset") is not None


@dataclass
class Started:
    """One long-running process started by the bench."""

    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> int | None:
        """Exit code if the process has ended, else None."""
        return self.popen.poll()

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class Processes:
    """Registry of the processes of one bench run; `stop_all` ends them all."""

    def __init__(self, log_dir: str) -> None:
        self._log_dir = log_dir
        self._live: dict[int, Started] = {}
        os.makedirs(log_dir, exist_ok=True)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cpu: str | None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Started:
        """Start argv pinned to cpu, stdout+stderr to logs/<name>.log."""
        full = pinned(argv, cpu)
        log_path = os.path.join(self._log_dir, f"{name}.log")
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {command_line(full)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                # Own session: a Ctrl-C on the terminal reaches only the
                # harness, which then stops everything in order.
                start_new_session=True,
            )
        started = Started(name=name, argv=full, popen=popen, log_path=log_path)
        self._live[popen.pid] = started
        return started

    def stop(self, started: Started) -> None:
        """SIGTERM the PID, wait, SIGKILL if needed; then its leftover descendants."""
        self._live.pop(started.pid, None)
        try:
            descendants = psutil.Process(started.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        if started.popen.poll() is None:
            _signal_pid(started.pid, signal.SIGTERM)
            try:
                started.popen.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_pid(started.pid, signal.SIGKILL)
                try:
                    started.popen.wait(KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
        # psutil.Process remembers the create time, so a recycled PID is
        # never signalled by mistake.
        alive = [p for p in descendants if p.is_running()]
        for p in alive:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, still = psutil.wait_procs(alive, timeout=KILL_GRACE_S)
        for p in still:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(still, timeout=KILL_GRACE_S)

    def stop_all(self) -> None:
        """Stop every registered process, newest first."""
        for started in reversed(list(self._live.values())):
            self.stop(started)


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def run(
    argv: list[str],
    *,
    timeout: float,
    cpu: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    tick: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run a short command to completion, capturing its output.

    Killed (by its PID) and TimeoutExpired raised at the timeout; tick() is
    called about once a second while it runs (for the progress line).
    """
    full = pinned(argv, cpu)
    deadline = time.monotonic() + timeout
    with subprocess.Popen(
        full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=cwd,
    ) as popen:
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    out, err = popen.communicate(timeout=max(0.01, min(1.0, remaining)))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        raise subprocess.TimeoutExpired(full, timeout) from None
                    if tick is not None:
                        tick()
        except BaseException:
            # Timeout, Ctrl-C or SIGTERM: end this child now, by its PID.
            popen.kill()
            popen.communicate()
            raise
    return subprocess.CompletedProcess(full, popen.returncode, out, err)


def tree_cpu_seconds(pid: int) -> float:
    """user+system seconds of pid and all its descendants, live and reaped.

    A live process contributes its own user+system plus children_user and
    children_system (the descendants it has already waited for), so a
    worker that exits and is reaped between two readings is still counted.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def tree_pids(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


def cpu_times_now() -> list:
    """Per-CPU time counters, to pair with cpu_busy()."""
    return psutil.cpu_times(percpu=True)


def cpu_busy(before: list, after: list, cpus: set[int]) -> float | None:
    """Share of the time the given CPUs were busy (not idle/iowait) between two readings."""
    busy = total = 0.0
    for i in cpus:
        if i >= len(before) or i >= len(after):
            return None
        b, a = before[i], after[i]
        t = sum(a) - sum(b)
        idle = (a.idle - b.idle) + (getattr(a, "iowait", 0.0) - getattr(b, "iowait", 0.0))
        busy += t - idle
        total += t
    return min(1.0, max(0.0, busy / total)) if total > 0 else None


def tree_memory(pid: int) -> dict:
    """Memory of pid and its descendants, in bytes.

    rss sums each process's resident set (pages shared between the processes,
    such as a forked worker's copy-on-write interpreter, count once per
    process); pss shares each such page out between its processes, so the
    sum counts it once. per_process lists (pid, rss) for each.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"rss": 0, "pss": 0, "processes": 0, "per_process": []}
    rss = pss = 0
    per = []
    for p in procs:
        try:
            m = p.memory_full_info()
        except psutil.Error:
            continue
        rss += m.rss
        pss += getattr(m, "pss", m.rss)
        per.append((p.pid, m.rss))
    return {"rss": rss, "pss": pss, "processes": len(per), "per_process": per}
