"""The worker's access log writer: batched, non-blocking, bounded.

Lines are kept in one bytearray of at most `cap` bytes and written with
non-blocking write()s after each batch of records and on the worker's tick.
A line that does not fit is dropped whole and counted in the worker slot
G_ACCESS_LOG_DROPPED, so a slow reader costs lines, never the data path's
time, and nothing is queued without bound.

The destination is opened once per worker:
- a regular file: O_APPEND (a write to it never waits for a reader);
- a pipe or FIFO (stdout under a container runtime, usually): opened again
  through /proc/self/fd, which gives this worker its own file description,
  so O_NONBLOCK does not leak to the manager or the other workers sharing
  the pipe. Writes go in pieces of whole lines of at most PIPE_BUF bytes,
  which the kernel writes atomically: lines from several workers never
  interleave;
- a socket: send() with MSG_DONTWAIT on a duplicate of the descriptor.
A FIFO with no reader yet cannot be opened without blocking: the sink
retries on later ticks and counts the lines dropped meanwhile.
"""
from __future__ import annotations

import errno
import os
import socket
import stat

from ..stats.names import G_ACCESS_LOG_DROPPED
from .accesslog import AccessLog
from .record import tcp_record

PIPE_BUF = 4096           # POSIX: pipe writes up to this size are atomic
REOPEN_S = 1.0            # how often an unopenable destination is retried
STDOUT = ("", "-", "/dev/stdout")

_FILE, _PIPE, _SOCKET = 0, 1, 2


class AccessLogSink:
    """One per worker. write(records) after each engine batch, flush() on the tick."""

    def __init__(self, path: str, log: AccessLog, counters, cap: int, clock=None):
        self.path = path
        self.log = log
        self.ctr = counters            # CounterView (add(slot, n))
        self.cap = cap
        self.pending = bytearray()
        self.fd = -1
        self.kind = _FILE
        self.sock: socket.socket | None = None
        self.dropped = 0               # lines, also counted in the worker slot
        self.written = 0               # lines fully handed to the kernel (file and pipe kinds)
        self.clock = clock             # () -> seconds, for the reopen back-off
        self.next_open = 0.0
        self._open()

    # -- destination -----------------------------------------------------------------

    def _open(self) -> None:
        path = "/proc/self/fd/1" if self.path in STDOUT else self.path
        try:
            st = os.stat(path)
        except OSError:
            st = None
        try:
            if st is not None and stat.S_ISSOCK(st.st_mode):
                fd = 1 if self.path in STDOUT else -1
                if fd < 0:
                    raise OSError(errno.ENOTSUP, "a socket path is not supported; use its file descriptor")
                self.sock = socket.socket(fileno=os.dup(fd))
                self.kind = _SOCKET
                self.fd = self.sock.fileno()
                return
            flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK
            if st is None:
                flags |= os.O_CREAT
            self.fd = os.open(path, flags, 0o644)
            self.kind = _FILE if stat.S_ISREG(os.fstat(self.fd).st_mode) else _PIPE
        except OSError:
            self.fd = -1       # e.g. ENXIO: a FIFO nobody reads yet; retried later

    # -- the data path's side -----------------------------------------------------------

    def write(self, records: list) -> None:
        """Formats what the filter and sampling keep, buffers it, and writes what the sink takes now."""
        log = self.log
        records = log.select(records)
        if not records:
            return
        pending = self.pending
        room = self.cap - len(pending)
        if room <= 0:
            self._drop(len(records))
        else:
            lines = log.lines(records)
            data = b"".join(lines)
            if len(data) <= room:
                pending += data
            else:
                kept = 0
                for line in lines:
                    if len(line) > room:
                        break
                    pending += line
                    room -= len(line)
                    kept += 1
                self._drop(len(lines) - kept)
        self.flush()

    def tcp_closed(self, start_us: int, duration_us: int, bytes_received: int, bytes_sent: int,
                   listener_block: int, cluster_block: int, peer: str, original_dst: str,
                   upstream_host: str, flags: int) -> None:
        """One line for a TCP connection that closed. Addresses as "ip:port"
        ("" if unknown); flags: H1_F_* bits (e.g. FLAG_UF for a connect failure)."""
        self.write([tcp_record(start_us, duration_us, bytes_received, bytes_sent, listener_block,
                               cluster_block, peer.encode(), original_dst.encode(), upstream_host.encode(),
                               flags)])

    def _drop(self, n: int) -> None:
        if n:
            self.dropped += n
            self.ctr.add(G_ACCESS_LOG_DROPPED, n)

    # -- I/O ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Writes as much as the destination takes without waiting."""
        pending = self.pending
        if not pending:
            return
        if self.fd < 0:
            now = self.clock() if self.clock else 0.0
            if now < self.next_open:
                return
            self.next_open = now + REOPEN_S
            self._open()
            if self.fd < 0:
                return
        try:
            if self.kind == _FILE:
                n = os.write(self.fd, pending)
                self.written += pending.count(b"\n", 0, n)
                del pending[:n]
            elif self.kind == _PIPE:
                self._write_pipe(pending)
            else:
                n = self.sock.send(pending, socket.MSG_DONTWAIT)
                del pending[:n]
        except BlockingIOError:
            pass
        except OSError:
            # The reader went away (EPIPE) or the device failed: what is
            # pending is lost; reopen later.
            self._drop(pending.count(b"\n"))
            pending.clear()
            self._close_fd()

    def _write_pipe(self, pending: bytearray) -> None:
        fd = self.fd
        while pending:
            end = len(pending)
            if end > PIPE_BUF:
                end = pending.rfind(b"\n", 0, PIPE_BUF) + 1
                if end <= 0:   # one line longer than PIPE_BUF: written alone, not atomically
                    end = pending.find(b"\n") + 1 or len(pending)
            n = os.write(fd, pending[:end])
            self.written += pending.count(b"\n", 0, n)
            del pending[:n]
            if n < end:
                return

    def _close_fd(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def close(self) -> None:
        """A last non-blocking flush; lines still pending are counted as dropped."""
        self.flush()
        if self.pending:
            self._drop(self.pending.count(b"\n"))
            self.pending.clear()
        self._close_fd()
