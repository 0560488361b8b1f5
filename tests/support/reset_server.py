"""An upstream that answers with a TCP reset.

For each connection it waits for the first bytes from the client (so the
relay is known to be established end to end), optionally sends
`before_reset` bytes, then closes with SO_LINGER {on, 0}: the kernel sends
RST instead of FIN.
"""
import socket
import struct
import threading

from .threaded_listener import ThreadedListener


class ResetServer(ThreadedListener):
    def __init__(self, before_reset: bytes = b""):
        self.before_reset = before_reset
        super().__init__(64)
        self.resets = 0
        self._waited = 0
        self._reset_done = threading.Condition()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    if not conn.recv(65536):
                        continue
                    if self.before_reset:
                        conn.sendall(self.before_reset)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    continue
            with self._reset_done:
                self.resets += 1
                self._reset_done.notify_all()

    def wait_reset(self, timeout: float, count: int | None = None) -> bool:
        """Waits until `count` connections (default: one more than were
        reset when the previous wait returned) have been reset."""
        with self._reset_done:
            target = count if count is not None else self._waited + 1
            ok = self._reset_done.wait_for(lambda: self.resets >= target, timeout)
            if ok:
                self._waited = target
            return ok
