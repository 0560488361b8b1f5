"""An upstream that answers with a TCP reset.

For each connection it waits for the first bytes from the client (so the
relay is known to be established end to end), optionally sends
`before_reset` bytes, then closes with SO_LINGER {on, 0}: the kernel sends
RST instead of FIN.
"""
import socket
import struct
import threading


class ResetServer:
    def __init__(self, before_reset: bytes = b""):
        self.before_reset = before_reset
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.resets = 0
        self._waited = 0
        self._reset_done = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.listener.getsockname()[1]

    def start(self) -> "ResetServer":
        self._thread.start()
        return self

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

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "ResetServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
