"""Bounded HTTP load: N client threads, each on its own keep-alive
connection, recording every request's outcome with its send and finish times.

Every run is bounded both in requests (`total`, shared by the threads) and
in time (`seconds`, never more than MAX_SECONDS); stop() ends it early. A
request that raises (reset, closed without a response, timeout) is recorded
with status 0 and the error, and the thread goes on with a new connection.
"""
from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass

from .governed_proxy import HOST

MAX_SECONDS = 60.0


@dataclass(slots=True)
class Outcome:
    client: int
    index: int
    path: str
    sent: float              # time.monotonic() before the request's first byte
    done: float              # ... after the response's last byte (or the error)
    status: int              # 0: no response (see error)
    upstream: str | None     # the X-Upstream header (which HttpUpstream answered)
    overloaded: bool         # x-fastproxy-overloaded: true
    error: str | None = None

    @property
    def elapsed(self) -> float:
        return self.done - self.sent


def plain_get(path: str = "/load", headers: dict | None = None):
    """A request factory: the same GET each time (the path gets /<client>/<index>
    appended when it ends with '/')."""
    def make(client: int, index: int):
        p = f"{path}{client}/{index}" if path.endswith("/") else path
        return "GET", p, dict(headers or {}), None
    return make


class LoadClients:
    def __init__(self, port: int, clients: int, *, total: int | None = None, seconds: float | None = None,
                 request=None, host: str = HOST, timeout: float = 10.0, pause_after=None):
        """request(client, index) -> (method, path, headers, body|None);
        pause_after(outcome) -> seconds to sleep before the next request (or 0)."""
        assert total is not None or seconds is not None, "a load is bounded by a count or a time"
        self.port = port
        self.clients = clients
        self.total = total
        self.seconds = min(seconds if seconds is not None else MAX_SECONDS, MAX_SECONDS)
        self.request = request or plain_get("/load/")
        self.host = host
        self.timeout = timeout
        self.pause_after = pause_after
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._tickets = itertools.count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = self.finished = 0.0

    # -- running ------------------------------------------------------------------------------

    def start(self) -> "LoadClients":
        self.started = time.monotonic()
        self._deadline = self.started + self.seconds
        self._threads = [threading.Thread(target=self._client, args=(c,), daemon=True, name=f"load-{c}")
                         for c in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> "LoadClients":
        self._stop.set()
        return self.join()

    def join(self) -> "LoadClients":
        for t in self._threads:
            t.join(timeout=self.seconds + self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a load client did not finish"
        self.finished = time.monotonic()
        return self

    def run(self) -> "LoadClients":
        return self.start().join()

    def __enter__(self) -> "LoadClients":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _client(self, cid: int) -> None:
        conn = None
        index = 0
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                ticket = next(self._tickets)
                if self.total is not None and ticket >= self.total:
                    return
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                method, path, headers, body = self.request(cid, index)
                index += 1
                hdrs = {"Host": self.host, **headers}
                sent = time.monotonic()
                try:
                    conn.request(method, path, body=body, headers=hdrs)
                    resp = conn.getresponse()
                    resp.read()
                    out = Outcome(cid, index, path, sent, time.monotonic(), resp.status,
                                  resp.getheader("X-Upstream"),
                                  (resp.getheader("x-fastproxy-overloaded") or "").lower() == "true")
                except (OSError, http.client.HTTPException) as exc:
                    out = Outcome(cid, index, path, sent, time.monotonic(), 0, None, False, repr(exc))
                    conn.close()
                    conn = None
                with self._lock:
                    self.outcomes.append(out)
                pause = self.pause_after(out) if self.pause_after else 0
                if pause:
                    time.sleep(pause)
        finally:
            if conn is not None:
                conn.close()

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def statuses(self) -> Counter:
        return Counter(o.status for o in self.snapshot())

    def upstreams(self, status: int = 200) -> Counter:
        return Counter(o.upstream for o in self.snapshot() if o.status == status)

    def failures(self, allowed=lambda o: o.status == 200) -> list[Outcome]:
        return [o for o in self.snapshot() if not allowed(o)]


def describe(outcomes: list[Outcome], limit: int = 5) -> str:
    """A short summary of some outcomes, for assertion messages."""
    return "; ".join(f"#{o.client}/{o.index} {o.path} -> {o.status or o.error}" for o in outcomes[:limit])
