"""Bulk TCP sender and receiver: `python -m bench.blast recv|send ...`.

Why not iperf3: its receiver stops counting when the sender reports the end,
so the megabytes still in socket and proxy buffers at that moment are never
counted (3% of 1 GiB through HAProxy here), and a proxy with bigger buffers
looks better than it is. This pair measures what a user of the proxy gets:

- recv: listens on 127.0.0.1:PORT, accepts one connection, reads exactly
  BYTES (spliced into /dev/null: no copy to user space), and writes {"bytes", "seconds", "gbit_s"} as JSON to --result.
  seconds runs from the first byte's arrival to the last byte's arrival;
  the first read's bytes are left out of the rate, so the rate is bytes
  over the time they took. Then it closes.
- send: connects to 127.0.0.1:PORT, sends BYTES with sendfile() from an
  8 MiB file (no user-space copy on the sender, so it spends little of the
  load CPU), half-closes, and waits for the receiver's close, so it exits
  only after every byte has arrived.

Both read and write in large blocks; per byte the CPU goes to the kernel.
Both give up after --timeout seconds.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import sys
import tempfile
import time

HOST = "127.0.0.1"
RECV_BLOCK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SEND_FILE_SIZE = 8 << 20


def receive(port: int, nbytes: int, result: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((HOST, port))
        ls.listen(8)
        ls.settimeout(timeout)
        conn, _ = ls.accept()
    with conn:
        conn.settimeout(max(1.0, deadline - time.monotonic()))
        got, first, seconds = _drain(conn, nbytes)
        doc = {
            "bytes": got,
            "seconds": seconds,
            "gbit_s": (got - first) * 8 / seconds / 1e9 if seconds > 0 else 0.0,
            "complete": got == nbytes,
        }
    with open(result, "w") as f:
        json.dump(doc, f)
    return 0 if got == nbytes else 1


def _drain(conn: socket.socket, nbytes: int) -> tuple[int, int, float]:
    """Read nbytes; returns (bytes read, bytes of the first read, first-to-last-byte seconds).

    The bytes are spliced socket -> pipe -> /dev/null, so the receiver never
    copies them to user space and leaves the shared load CPU to the rest.
    """
    rpipe, wpipe = os.pipe()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        fcntl.fcntl(wpipe, F_SETPIPE_SZ, RECV_BLOCK)
        sock = conn.fileno()
        conn.setblocking(True)
        n = _splice_through(sock, wpipe, rpipe, devnull, min(RECV_BLOCK, nbytes))
        t_first = time.perf_counter()
        first = got = n
        while n and got < nbytes:
            n = _splice_through(sock, wpipe, rpipe, devnull, min(RECV_BLOCK, nbytes - got))
            got += n
        return got, first, time.perf_counter() - t_first
    finally:
        for fd in (rpipe, wpipe, devnull):
            os.close(fd)


def _splice_through(sock: int, wpipe: int, rpipe: int, sink: int, most: int) -> int:
    """Move up to most bytes from sock to sink through the pipe; 0 at EOF."""
    n = os.splice(sock, wpipe, most)
    left = n
    while left:
        left -= os.splice(rpipe, sink, left)
    return n


def send(port: int, nbytes: int, timeout: float) -> int:
    fd, path = tempfile.mkstemp(prefix="bench-blast-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        os.write(fd, os.urandom(SEND_FILE_SIZE))
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(None)
            s.setblocking(True)
            deadline = time.monotonic() + timeout
            sent = 0
            while sent < nbytes:
                offset = sent % SEND_FILE_SIZE
                n = os.sendfile(s.fileno(), fd, offset, min(nbytes - sent, SEND_FILE_SIZE - offset))
                if n == 0:
                    break
                sent += n
                if time.monotonic() > deadline:
                    print(f"blast send: timed out after {sent} bytes", file=sys.stderr)
                    return 1
            s.shutdown(socket.SHUT_WR)
            # Wait for the receiver to close: it has read everything by then.
            s.settimeout(max(1.0, deadline - time.monotonic()))
            while s.recv(65536):
                pass
    finally:
        os.close(fd)
        os.unlink(path)
    print(json.dumps({"sent": sent}))
    return 0 if sent == nbytes else 1


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.blast")
    ap.add_argument("mode", choices=("recv", "send"))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--result", help="recv: where to write the JSON result")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    if args.mode == "recv":
        if not args.result:
            ap.error("recv needs --result")
        return receive(args.port, args.bytes, args.result, args.timeout)
    return send(args.port, args.bytes, args.timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
