"""Loopback-only networking for the harness: free ports, readiness, one GET.

Nothing here talks to any address but 127.0.0.1, and nothing reads proxy
settings from the environment (http.client, never urllib).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import time
from typing import Callable


HOST = "127.0.0.1"
# Istio's fixed ports; the bench never binds them, so it can run beside a
# real sidecar or a developer's `make run`.
RESERVED = range(15000, 15091)
SS = shutil.which("ss") or next((p for p in ("/usr/sbin/ss", "/sbin/ss", "/usr/bin/ss") if os.access(p, os.X_OK)), None)


def free_ports(count: int) -> list[int]:
    """count distinct free TCP ports on 127.0.0.1 (held together while chosen)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            held.append(s)
            port = s.getsockname()[1]
            if port not in RESERVED:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def is_listening(port: int) -> bool:
    """True when some TCP socket is in LISTEN on port (any local address).

    Read from the kernel's socket table rather than by connecting, so the
    check never opens a connection through a proxy to its upstream (the
    one-shot bulk receiver would take it for its one client). `ss` asks the
    kernel for LISTEN sockets only (netlink), which stays instant while
    /proc/net/tcp holds the 100k TIME_WAIT entries a short-connection run
    leaves behind; /proc is the fallback where ss is missing.
    """
    if SS is not None:
        try:
            r = subprocess.run([SS, "-Hltn", f"sport = :{port}"], capture_output=True,
                               text=True, timeout=5)
            if r.returncode == 0:
                return bool(r.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    for table, any_remote in (("/proc/net/tcp", "0" * 8), ("/proc/net/tcp6", "0" * 32)):
        needle = f":{port:04X} {any_remote}:0000 0A "
        try:
            with open(table) as f:
                if needle in f.read():
                    return True
        except OSError:
            continue
    return False


def wait_until(
    what: str,
    ready: Callable[[], bool],
    *,
    timeout: float,
    alive: Callable[[], str | None] = lambda: None,
    interval: float = 0.05,
) -> None:
    """Poll ready() until True; raise TimeoutError, or RuntimeError when alive() says why not."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        dead = alive()
        if dead:
            raise RuntimeError(f"{what}: {dead}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(interval)


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status of GET http://127.0.0.1:port/path, or None when it fails."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def http_get(port: int, path: str = "/", timeout: float = 3.0) -> tuple[int, bytes]:
    """One GET with Connection: close; returns (status, body). Raises on failure."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
