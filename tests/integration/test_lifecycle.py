"""Lifecycle: with settings.app_pid_file the proxy shuts down by itself once the
app's process is gone (Jobs/CronJobs), exactly as on /quitquitquit: readiness
off, in-flight connections drained, exit 0, shared memory removed.

The "app" is a real child process of the test that writes its PID into the
file, as `sh -c 'echo $$ > FILE; exec APP'` would. It is killed by its own PID
only. The watcher polls once a second, so the waits below are a few seconds,
each bounded.
"""
import os
import socket
import subprocess
import sys
import time

import pytest

from fastproxy.manager.lifecycle import AppWatch, parse_pid, process_start_time
from tests.support.echo_server import EchoServer
from tests.support.polling import poll_until
from tests.support.tcp_client import connect, echo_once, recv_until_eof

POLL_S = 1.0
# Writes its PID atomically (write + rename, so the proxy never reads half a
# number), then sleeps; exits by itself after argv[2] seconds.
APP = ("import os, sys, time\n"
       "tmp = sys.argv[1] + '.tmp'\n"
       "with open(tmp, 'w') as f: f.write('%d\\n' % os.getpid())\n"
       "os.replace(tmp, sys.argv[1])\n"
       "time.sleep(float(sys.argv[2]))\n")


class App:
    def __init__(self, pid_file, lifetime: float):
        self.proc = subprocess.Popen([sys.executable, "-c", APP, str(pid_file), str(lifetime)],
                                     stdin=subprocess.DEVNULL)
        poll_until(lambda: parse_pid(_read(pid_file)) == self.proc.pid, timeout=10,
                   message="the app to write its pid file")

    def kill(self) -> None:
        """SIGKILL by its PID, left unreaped: the proxy sees a zombie first."""
        if self.proc.returncode is None:
            self.proc.kill()

    def close(self) -> None:
        self.kill()
        self.proc.wait(timeout=10)


def _read(path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _ready_status(admin) -> int | None:
    try:
        return admin.get("/ready", timeout=2)[0]
    except OSError:
        return None


def _stays_up(proxy, seconds: float) -> None:
    """The proxy keeps running and ready for `seconds` (several polls)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proxy.running(), f"proxy exited with {proxy.proc.returncode}:\n{proxy.stderr_tail()}"
        time.sleep(0.1)
    assert proxy.admin.is_ready()


@pytest.mark.slow
def test_exits_zero_after_draining_once_the_app_is_gone(relay_to, tmp_path):
    pid_file = tmp_path / "app.pid"
    app = App(pid_file, lifetime=60)
    drain = 6.0
    try:
        with EchoServer() as echo:
            relay = relay_to(echo.address, workers=2, drain_seconds=drain, app_pid_file=str(pid_file))
            proxy = relay.proxy
            with connect("127.0.0.1", relay.port, timeout=15) as held:
                assert echo_once(held, b"before") == b"before"
                _stays_up(proxy, 2.5 * POLL_S)      # the app is alive: nothing happens

                proxy.note_workers()
                app.kill()
                t0 = time.monotonic()
                poll_until(lambda: _ready_status(relay.admin) == 503, timeout=POLL_S + 4,
                           message="/ready -> 503 after the app exited")
                # Drain as on SIGTERM: the open connection still relays ...
                assert echo_once(held, b"during drain") == b"during drain"
                assert proxy.running()
                held.shutdown(socket.SHUT_WR)
                assert recv_until_eof(held) == b""
            # ... and once it is closed the proxy is done, well before drain_seconds.
            rc = proxy.wait_exit(timeout=POLL_S + drain + 10)
            elapsed = time.monotonic() - t0
        proxy.assert_clean_exit(rc)
        assert elapsed < POLL_S + drain, f"exited {elapsed:.1f}s after the app, drain_seconds={drain}"
    finally:
        app.close()


@pytest.mark.slow
def test_waits_for_an_app_that_starts_later_and_exits_by_itself(relay_to, tmp_path):
    pid_file = tmp_path / "run" / "app.pid"
    pid_file.parent.mkdir()
    with EchoServer() as echo:
        relay = relay_to(echo.address, workers=1, drain_seconds=2, app_pid_file=str(pid_file))
        proxy = relay.proxy
        _stays_up(proxy, 2.5 * POLL_S)              # no file yet: the app has not started
        app = App(pid_file, lifetime=2.5)
        try:
            while app.proc.poll() is None:          # the proxy outlives the app ...
                assert proxy.running(), f"proxy exited while the app ran:\n{proxy.stderr_tail()}"
                time.sleep(0.05)
            assert app.proc.returncode == 0
            rc = proxy.wait_exit(timeout=POLL_S + 2 + 10)   # ... and follows it out
        finally:
            app.close()
    proxy.assert_clean_exit(rc)


@pytest.mark.slow
def test_never_exits_for_a_pid_it_never_saw_running(relay_to, tmp_path):
    """A stale file, a PID of this proxy's own lineage (the file written in another
    PID namespace) or garbage must never take the network away."""
    pid_file = tmp_path / "app.pid"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=10)
    pid_file.write_text(f"{gone.pid}\n")
    with EchoServer() as echo:
        relay = relay_to(echo.address, workers=1, drain_seconds=1, app_pid_file=str(pid_file))
        proxy = relay.proxy
        _stays_up(proxy, 2.5 * POLL_S)
        pid_file.write_text(f"{os.getpid()}\n")     # the test runner: an ancestor of the proxy
        _stays_up(proxy, 2.5 * POLL_S)
        pid_file.write_text("not-a-pid\n")
        _stays_up(proxy, 1.5 * POLL_S)
    # The fixture's teardown stops it with SIGTERM and checks exit 0 and /dev/shm.


def test_a_zombie_counts_as_gone():
    """What the watcher reads from /proc: a killed, unreaped child is no longer running."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start_time(child.pid)
        assert start is not None and process_start_time(child.pid) == start
        child.kill()
        poll_until(lambda: process_start_time(child.pid) is None, timeout=5,
                   message="the zombie to read as not running")
        assert child.poll() is not None   # reaped only now
    finally:
        child.kill()
        child.wait(timeout=10)
    assert process_start_time(child.pid) is None


# The decisions themselves, with a fake /proc (no processes needed).

def _probe(table: dict):
    return lambda pid: table.get(pid)


def test_watch_decisions():
    procs = {100: 5000}
    w = AppWatch("/run/app.pid", lineage=frozenset({1, 7}))
    assert w.poll(None, _probe(procs)) is None                  # no file yet
    assert w.poll("garbage", _probe(procs)) is None
    assert w.poll("100\n", _probe(procs)) is None and w.pid == 100
    assert w.poll("100\n", _probe(procs)) is None
    procs[100] = 9999                                           # the PID now belongs to another process
    assert w.poll("100\n", _probe(procs)) == "app process 100 (from /run/app.pid) exited"


def test_watch_follows_a_restarted_app_and_ignores_its_own_lineage():
    procs = {100: 5000, 200: 6000}
    w = AppWatch("/run/app.pid", lineage=frozenset({1, 7}))
    assert w.poll("1\n", _probe({1: 1})) is None and w.pid is None       # PID 1 here is our own init
    assert w.poll("100", _probe(procs)) is None and w.pid == 100
    del procs[100]
    assert w.poll("200", _probe(procs)) is None and w.pid == 200         # restarted before we noticed
    assert w.poll("200", _probe(procs)) is None
    del procs[200]
    assert w.poll("200", _probe(procs)) == "app process 200 (from /run/app.pid) exited"


def test_a_pid_never_seen_running_never_stops_the_proxy():
    w = AppWatch("/run/app.pid")
    for _ in range(50):
        assert w.poll("4242", _probe({})) is None
    assert w.pid is None and "unseen" in w.warned
