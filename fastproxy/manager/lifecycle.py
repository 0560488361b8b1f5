"""Lifecycle: the proxy exits by itself once the app is gone (settings.app_pid_file).

The problem is Kubernetes Jobs and CronJobs. A pod completes only when all of
its containers have exited, and a sidecar proxy never exits on its own, so the
Job hangs after its work is done. The usual answers:
  - the app calls /quitquitquit (Istio) or /shutdown (linkerd, via the
    `linkerd-await --shutdown` wrapper) when it is done. fastproxy serves
    /quitquitquit already. But it needs the app (or its command) changed, and
    an app that crashes never calls it;
  - native sidecars (Kubernetes >= 1.28: an init container with
    restartPolicy: Always, `fastproxy inject --native-sidecar`) end the
    proxy after the app. That needs a recent cluster.
This is the fallback for the rest: the proxy watches the app's process and
shuts down (exactly as on /quitquitquit: readiness off, drain, exit 0) once it
is gone, however it ended.

Why a PID and not the app's port: a Job's app is usually a client and listens
on no port at all, so "the app's port stopped accepting" would never fire for
the workloads that need this most; and for servers a slow or restarting
listener would look like an exit.

Contract:
  settings.app_pid_file  (FASTPROXY_APP_PID_FILE) names a file holding the
  app's PID in decimal, e.g. written by `sh -c 'echo $$ > /run/app/pid; exec my-job'`
  on a volume both containers mount. Every POLL_S (1 s) the manager reads it:
  - no file yet, or no number in it: the app has not started; keep waiting;
  - a PID that is running: watch it (its start time is recorded, so a PID
    reused by another process is not mistaken for the app);
  - the watched process is gone (no /proc entry, a zombie, or a different
    start time): shut down. If the file names a new running PID by then (the
    app container restarted), watch that one instead.
  A PID never seen running never triggers an exit: a proxy that cannot see
  the app's processes (Kubernetes without shareProcessNamespace: true, or
  /proc mounted hidepid) must not take the network away from a live app. It
  logs a warning instead, once. A PID that is this proxy or one of its
  ancestors (the file written from another PID namespace, where the app is
  often PID 1) is ignored with a warning, likewise.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("fastproxy.manager")

POLL_S = 1.0
UNSEEN_WARN_POLLS = 10     # warn once when the file's PID has not been seen running for this many polls
_STAT_STATE, _STAT_STARTTIME = 0, 19   # fields 3 and 22 of /proc/PID/stat, counted after the ")" of comm

Probe = Callable[[int], "int | None"]


def process_start_time(pid: int, proc: str = "/proc") -> int | None:
    """The start time (clock ticks after boot) of a running process, or None when
    there is no such process (or only its zombie) in this PID namespace."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    if len(fields) <= _STAT_STARTTIME or fields[_STAT_STATE] in (b"Z", b"X", b"x"):
        return None
    return int(fields[_STAT_STARTTIME])


def own_lineage(proc: str = "/proc") -> frozenset[int]:
    """This process and its ancestors: PIDs a correct pid file can never name."""
    pids, pid = set(), os.getpid()
    while pid > 0 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"{proc}/{pid}/stat", "rb") as f:
                stat = f.read()
            pid = int(stat[stat.rfind(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return frozenset(pids)


def parse_pid(text: str | None) -> int | None:
    """The PID in a pid file's text (the first word), or None."""
    words = (text or "").split()
    if not words or not words[0].isdigit():
        return None
    return int(words[0]) or None


@dataclass
class AppWatch:
    """The decisions, without I/O: poll() gets the file's text and a probe of /proc."""

    path: str
    lineage: frozenset[int] = frozenset()
    pid: int | None = None          # the app process being watched (seen running)
    start: int | None = None        # its start time
    unseen: int = 0                 # polls since the file named a PID that was never seen running
    warned: set = field(default_factory=set)

    def poll(self, text: str | None, probe: Probe) -> str | None:
        """One check. Returns why the app is considered gone, or None to keep running."""
        named = parse_pid(text)
        if named is not None and named in self.lineage:
            self._warn_once("lineage", "%s names PID %d, which is this proxy or one of its ancestors: the "
                            "app's PID namespace is not shared with the proxy (in Kubernetes set "
                            "shareProcessNamespace: true); not watching it", self.path, named)
            named = None
        if named is not None and named != self.pid:
            start = probe(named)
            if start is not None:
                if self.pid is None:
                    log.info("watching app process %d (from %s): the proxy exits when it does", named, self.path)
                else:
                    log.info("%s now names app process %d (was %d); watching it", self.path, named, self.pid)
                self.pid, self.start, self.unseen = named, start, 0
                return None
        if self.pid is not None:
            if probe(self.pid) != self.start:
                return f"app process {self.pid} (from {self.path}) exited"
            return None
        if named is not None:
            self.unseen += 1
            if self.unseen >= UNSEEN_WARN_POLLS:
                self._warn_once("unseen", "%s names PID %d, which this proxy has never seen running; the proxy "
                                "will not exit for it (in Kubernetes the app's processes are visible only with "
                                "shareProcessNamespace: true)", self.path, named)
        return None

    def _warn_once(self, key: str, msg: str, *args) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(msg, *args)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(64)
    except OSError:
        return None


async def watch_app_exit(manager, poll_s: float = POLL_S, probe: Probe = process_start_time) -> None:
    """Runs in the manager for its whole life. Reads manager.settings["app_pid_file"]
    on every poll (so a reload can set, change or clear it) and calls
    manager.request_shutdown(why) once the app is gone, then returns."""
    lineage = own_lineage()
    watch: AppWatch | None = None
    while not manager.shutdown.is_set():
        await asyncio.sleep(poll_s)
        path = manager.settings.get("app_pid_file") or ""
        if not path:
            watch = None
            continue
        if watch is None or watch.path != path:
            watch = AppWatch(path, lineage)
        why = watch.poll(_read(path), probe)
        if why:
            manager.request_shutdown(why)
            return
