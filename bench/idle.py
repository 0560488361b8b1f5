"""Idle keep-alive connections: `python -m bench.idle --port P --count N --result F`.

Opens up to N connections to 127.0.0.1:P, sends one keep-alive GET on each
and reads its whole response, so every connection is a live HTTP/1.1
keep-alive connection through the proxy (the proxy has parsed a request on
it and holds whatever per-connection state it keeps between requests).
Then it writes {"open", "failed", "seconds"} as JSON to --result and holds
the connections, sending nothing, until SIGTERM or --hold seconds.

Bounded: at most --inflight connections are being opened at once, and the
opening phase gives up after --timeout seconds, or after --stall seconds
without one more connection completing (a proxy at its connection limit
stops accepting); what is open by then counts.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import signal
import socket
import sys
import time

HOST = "127.0.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


class _Conn:
    """One connection being opened: connect, send the GET, read the response."""

    __slots__ = ("sock", "sent", "buf", "need")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self.buf = b""
        self.need = -1  # total bytes of head + body once the head is in

    def response_complete(self) -> bool:
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            self.need = end + 4 + length
        return len(self.buf) >= self.need


def open_idle(port: int, count: int, inflight: int, timeout: float,
              stall: float) -> tuple[list[socket.socket], int]:
    """(connections left idle after one full response each, connections that failed)."""
    sel = selectors.DefaultSelector()
    done: list[socket.socket] = []
    failed = 0
    started = 0
    deadline = time.monotonic() + timeout
    progress_at = time.monotonic()
    pending = 0

    def fail(c: _Conn) -> None:
        nonlocal failed, pending
        sel.unregister(c.sock)
        c.sock.close()
        failed += 1
        pending -= 1

    while ((started < count or pending) and time.monotonic() < deadline
           and time.monotonic() - progress_at < stall):
        while started < count and pending < inflight:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((HOST, port))
            started += 1
            if err not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
                continue
            sel.register(s, selectors.EVENT_WRITE, _Conn(s))
            pending += 1
        for key, events in sel.select(timeout=0.2):
            c: _Conn = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        fail(c)
                        continue
                    c.sent += c.sock.send(REQUEST[c.sent:])
                    if c.sent == len(REQUEST):
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                data = c.sock.recv(65536)
            except OSError:
                fail(c)
                continue
            if not data:
                fail(c)
                continue
            c.buf += data
            if c.response_complete():
                sel.unregister(c.sock)
                pending -= 1
                done.append(c.sock)
                progress_at = time.monotonic()
    for key in list(sel.get_map().values()):
        key.fileobj.close()
        failed += 1
    sel.close()
    return done, failed


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.idle")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--result", required=True, help="where to write the JSON result")
    ap.add_argument("--inflight", type=int, default=256, help="connections opened at once")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to open them all")
    ap.add_argument("--stall", type=float, default=5.0,
                    help="seconds without a completed connection before giving up")
    ap.add_argument("--hold", type=float, default=120.0, help="seconds to hold them at most")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    t0 = time.monotonic()
    conns, failed = open_idle(args.port, args.count, args.inflight, args.timeout, args.stall)
    doc = {"open": len(conns), "failed": failed, "seconds": time.monotonic() - t0}
    tmp = args.result + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, args.result)
    # Hold: the connections stay open and silent until SIGTERM (sys.exit
    # closes them) or the hold time is up.
    time.sleep(args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
