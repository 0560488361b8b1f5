"""Runs `python -m fastproxy run --config FILE` as a real child process.

The child's pid is the manager's pid (shared memory is named after it). It is
signalled by that pid only. stderr goes to a file so a chatty proxy never
blocks on a full pipe, and its tail is attached to failing test reports.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .admin_client import AdminClient
from .polling import poll_until
from .shm_segments import segments_of

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def fastproxy_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "fastproxy", *args]


def hermetic_env(overrides: dict | None = None) -> dict:
    """This environment without any FASTPROXY_* variable, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTPROXY_")}
    env.update(overrides or {})
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(fastproxy_cmd(*args), cwd=REPO_ROOT, env=hermetic_env(env),
                          capture_output=True, text=True, timeout=timeout)


class ProxyProcess:
    def __init__(self, config_path: Path, admin: AdminClient, stderr_path: Path,
                 env: dict | None = None, prefix: list[str] | None = None):
        self.config_path = Path(config_path)
        self.admin = admin
        self.stderr_path = Path(stderr_path)
        self.env = env
        self.prefix = list(prefix or [])
        self.proc: subprocess.Popen | None = None
        self.stopped_by_test = False
        self.seen_worker_pids: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "proxy not started"
        return self.proc.pid

    def start(self) -> "ProxyProcess":
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            self.prefix + fastproxy_cmd("run", "--config", str(self.config_path)),
            cwd=REPO_ROOT, env=hermetic_env(self.env),
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 15.0) -> "ProxyProcess":
        def ready():
            if not self.running():
                raise AssertionError(
                    f"proxy exited with {self.proc.returncode} before /ready:\n{self.stderr_tail()}")
            try:
                return self.admin.is_ready()
            except OSError:
                return False

        deadline = time.monotonic() + timeout
        while True:
            if ready():
                self.note_workers()
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"proxy not ready within {timeout}s:\n{self.stderr_tail()}")
            time.sleep(0.05)

    def note_workers(self) -> None:
        """Remembers the current worker pids (best effort), so that after the
        manager exits we can check that none of them outlived it."""
        try:
            self.seen_worker_pids.update(int(w["pid"]) for w in self.admin.workers())
        except Exception:  # noqa: BLE001 - the admin API may be gone already
            pass

    def send_signal(self, sig: int) -> None:
        assert self.running(), f"proxy already exited with {self.proc.returncode}"
        self.note_workers()
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        """Waits for the exit the test caused; the test then owns checking the
        exit code and /dev/shm (the fixture's teardown skips this proxy)."""
        self.stopped_by_test = True
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"proxy {self.pid} still running {timeout}s later:\n{self.stderr_tail()}")

    def terminate(self, timeout: float) -> int:
        """SIGTERM (graceful drain) and wait; returns the exit code."""
        if self.running():
            self.note_workers()
            os.kill(self.pid, signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """Last resort for teardown after a failure: SIGKILL the manager and
        every worker we know of, each by pid."""
        for pid in self.surviving_workers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            children = [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            children = []
        for pid in [self.proc.pid, *children]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)

    def surviving_workers(self) -> list[int]:
        """Known worker pids that still run a fastproxy process."""
        alive = []
        for pid in sorted(self.seen_worker_pids):
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE and any("fastproxy" in a for a in p.cmdline()):
                    alive.append(pid)
            except psutil.Error:
                pass
        return alive

    def shm_segments(self) -> list[str]:
        return segments_of(self.pid)

    def assert_clean_exit(self, returncode: int | None = None) -> None:
        rc = self.proc.returncode if returncode is None else returncode
        assert rc == 0, f"proxy exited with {rc}, expected 0:\n{self.stderr_tail()}"
        # The manager unlinks its segments before it exits; allow a short race
        # only for a worker that is still being reaped.
        poll_until(lambda: not self.shm_segments(), timeout=2.0,
                   message=f"/dev/shm/fastproxy-{self.pid}-* to be removed ({self.shm_segments()})")
        poll_until(lambda: not self.surviving_workers(), timeout=3.0,
                   message=f"workers {sorted(self.seen_worker_pids)} to exit with their manager")

    def stderr_tail(self, max_lines: int = 200) -> str:
        try:
            self._stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no stderr file)"
        return "\n".join(lines[-max_lines:])

    def close_files(self) -> None:
        try:
            self._stderr.close()
        except Exception:  # noqa: BLE001
            pass
