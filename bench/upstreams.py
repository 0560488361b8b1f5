"""The upstreams every contender relays to, pinned to the load CPU.

- nginx: one process (master_process off, 1 worker), access_log off;
  / answers `return 200 "Hello, World!"` (13 bytes), /1mb sends a 1 MiB file
  from its prefix directory; started once per run (a second one on the proxy
  CPU for the one-core scenario).
- bench.blast recv: a fresh one-shot bulk receiver for each bulk sample, so
  a broken transfer can never leave a busy server behind for the next
  contender.
"""

from __future__ import annotations

import os
import sys

from bench import net, procs, templates
from bench.procs import Processes, Started

READY_TIMEOUT_S = 15.0
BODY = b"Hello, World!"
STREAM_PATH = "/1mb"
STREAM_BYTES = 1 << 20
# Room for the idle-connections scenario (each proxy may open one upstream
# connection per client connection) on top of the load's connections.
WORKER_CONNECTIONS = 32768


def start_nginx(
    p: Processes, nginx: str, workdir: str, cpu: str | None, name: str = "nginx",
) -> tuple[Started, int, str, str]:
    """Start nginx; returns (process, port, command line, config text)."""
    (port,) = net.free_ports(1)
    prefix = os.path.join(workdir, name)
    os.makedirs(prefix, exist_ok=True)
    with open(os.path.join(prefix, "1mb.bin"), "wb") as f:
        f.write(os.urandom(STREAM_BYTES))
    config = templates.render("nginx.conf", prefix=prefix, listen_port=port,
                              worker_connections=WORKER_CONNECTIONS)
    path = templates.write(prefix, "nginx.conf", config)
    # -e: the error log before the config is read goes to our prefix too,
    # never to /var/log (which a non-root user cannot write).
    argv = [nginx, "-p", prefix, "-c", path, "-e", os.path.join(prefix, "nginx-error.log")]
    started = p.start(name, argv, cpu=cpu)
    try:
        net.wait_until("nginx listening", lambda: net.is_listening(port),
                       timeout=READY_TIMEOUT_S, alive=lambda: _dead(started))
        status, body = net.http_get(port)
        if status != 200 or body != BODY:
            raise RuntimeError(f"nginx answered {status} {body[:40]!r}, expected 200 {BODY!r}")
        status, body = net.http_get(port, STREAM_PATH)
        if status != 200 or len(body) != STREAM_BYTES:
            raise RuntimeError(f"nginx answered {status} with {len(body)} bytes for {STREAM_PATH}")
    except BaseException:
        p.stop(started)
        raise
    return started, port, procs.command_line(started.argv), config


def start_blast_receiver(
    p: Processes, repo_root: str, workdir: str, nbytes: int, timeout: float, cpu: str | None,
) -> tuple[Started, int, str]:
    """Start a one-shot bulk receiver; returns (process, port, result file)."""
    (port,) = net.free_ports(1)
    result = os.path.join(workdir, f"blast-{port}.json")
    argv = [sys.executable, "-m", "bench.blast", "recv", "--port", str(port),
            "--bytes", str(nbytes), "--result", result, "--timeout", f"{timeout:g}"]
    started = p.start("blast-recv", argv, cpu=cpu, cwd=repo_root)
    try:
        net.wait_until("bulk receiver listening", lambda: net.is_listening(port),
                       timeout=READY_TIMEOUT_S, alive=lambda: _dead(started))
    except BaseException:
        p.stop(started)
        raise
    return started, port, result


def _dead(started: Started) -> str | None:
    code = started.exited()
    if code is None:
        return None
    return f"exited with {code}: {started.log_tail()}"
