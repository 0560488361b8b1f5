"""Upstreams that exercise TCP half-close, one connection at a time.

mode "reply_after_eof": reads until the client's EOF, then sends `reply`
    and closes. The reply can only reach the client if the client's FIN was
    relayed as a half-close (the return path stayed open).
mode "shut_then_read": sends `greeting`, shuts down its write side at once,
    then reads until EOF. The client must see EOF after the whole greeting
    and still be able to send.

Each finished connection puts a result in `results`:
{"received": bytes, "sent": int, "error": str | None}.
"""
import queue
import socket
import threading

from .tcp_client import recv_until_eof
from .threaded_listener import ThreadedListener


class HalfCloseServer(ThreadedListener):
    def __init__(self, mode: str, reply: bytes = b"", greeting: bytes = b""):
        assert mode in ("reply_after_eof", "shut_then_read"), mode
        self.mode = mode
        self.reply = reply
        self.greeting = greeting
        self.results: queue.Queue = queue.Queue()
        super().__init__(16)

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        received = b""
        sent = 0
        error = None
        try:
            if self.mode == "reply_after_eof":
                received = recv_until_eof(conn)
                conn.sendall(self.reply)
                sent = len(self.reply)
            else:
                conn.sendall(self.greeting)
                sent = len(self.greeting)
                conn.shutdown(socket.SHUT_WR)
                received = recv_until_eof(conn)
        except OSError as exc:
            error = repr(exc)
        finally:
            conn.close()
        self.results.put({"received": received, "sent": sent, "error": error})
