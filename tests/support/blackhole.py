"""A loopback address whose connects time out instead of being refused.

Linux drops a SYN aimed at a listening socket whose accept queue is full
(tcp_conn_request: "if (sk_acceptq_is_full(sk)) goto drop"), so the
connecting side sees no answer at all and retransmits: exactly what a
firewall DROP gives, without root or a network namespace. The listener
is made with backlog 0, then filled by connections nobody accepts.
"""
from __future__ import annotations

import socket
import time


class BlackholeListener:
    def __init__(self, host: str = "127.0.0.1"):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(0)
        self.fillers: list[socket.socket] = []

    @property
    def address(self) -> str:
        host, port = self.listener.getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> "BlackholeListener":
        # Queue connections until one does not complete: the queue is full.
        host, port = self.listener.getsockname()[:2]
        for _ in range(16):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            self.fillers.append(s)
            try:
                s.connect((host, port))
            except BlockingIOError:
                pass
            time.sleep(0.02)
            if not self._probe_connects(host, port):
                return self
        raise AssertionError("the accept queue never filled; cannot make a blackhole")

    @staticmethod
    def _probe_connects(host: str, port: int) -> bool:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.15)
        try:
            probe.connect((host, port))
            return True          # it got into the queue: keep filling (it holds a slot until closed)
        except (socket.timeout, TimeoutError):
            return False
        finally:
            probe.close()

    def stop(self) -> None:
        for s in self.fillers:
            s.close()
        self.listener.close()

    def __enter__(self) -> "BlackholeListener":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
