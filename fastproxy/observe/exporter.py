"""Batched span export to the collector, on the worker's loop, off the data path.

add() is all the data path does: it appends the sampled records to a
bounded queue (past max_queue they are dropped and counted in the worker
slot G_SPANS_DROPPED). A batch leaves when batch_size spans are waiting or
interval seconds have passed (tick()), as one HTTP/1.1 POST made by a task
on the loop; one export is in flight at a time. Encoding happens in that
task, per batch. A batch the collector does not accept (connect error,
timeout, a non-2xx status) is dropped and counted: spans are telemetry and
are not retried.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque

from ..stats.names import G_SPANS_DROPPED
from .record import BlockNames
from .spans import ENCODERS

log = logging.getLogger("fastproxy.worker")

BATCH_SIZE = 512
INTERVAL_S = 1.0
MAX_QUEUE = 8192
TIMEOUT_S = 5.0


def parse_collector(text: str, fmt: str) -> tuple[str, int, str]:
    """trace_collector ("host:port" or "http://host:port[/path]") -> (host, port, path)."""
    path = ENCODERS[fmt][1]
    rest = text.strip()
    if rest.startswith("http://"):
        rest = rest[len("http://"):]
        rest, slash, p = rest.partition("/")
        if slash and p:
            path = "/" + p
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"trace_collector must be host:port, got {text!r}")
    return host.strip("[]"), int(port), path


class SpanExporter:
    def __init__(self, loop, collector: str, fmt: str, counters, names: BlockNames, service: str,
                 namespace: str = "", batch_size: int = BATCH_SIZE, interval: float = INTERVAL_S,
                 max_queue: int = MAX_QUEUE):
        self.loop = loop
        self.host, self.port, self.path = parse_collector(collector, fmt)
        self.encode = ENCODERS[fmt][0]
        self.ctr = counters
        self.names = names
        self.service = service
        self.namespace = namespace
        self.batch_size = batch_size
        self.interval = interval
        self.max_queue = max_queue
        self.queue: deque = deque()
        self.task: asyncio.Task | None = None
        self.last = loop.time()
        self.exported = 0
        self.dropped = 0
        self.failures = 0

    def add(self, records: list) -> None:
        """Queues sampled records (see spans.sampled)."""
        room = self.max_queue - len(self.queue)
        if len(records) > room:
            self._drop(len(records) - max(room, 0))
            records = records[:max(room, 0)]
        self.queue.extend(records)
        if len(self.queue) >= self.batch_size and self.task is None:
            self._start()

    def tick(self) -> None:
        if self.queue and self.task is None and self.loop.time() - self.last >= self.interval:
            self._start()

    def _drop(self, n: int) -> None:
        if n:
            self.dropped += n
            self.ctr.add(G_SPANS_DROPPED, n)

    def _start(self) -> None:
        q = self.queue
        batch = [q.popleft() for _ in range(min(len(q), self.batch_size))]
        self.last = self.loop.time()
        self.task = self.loop.create_task(self._export(batch))

    async def _export(self, batch: list) -> None:
        try:
            body = self.encode(batch, self.names, self.service, self.namespace)
            status = await asyncio.wait_for(self._post(body), TIMEOUT_S)
            if 200 <= status < 300:
                self.exported += len(batch)
            else:
                self._failed(batch, f"status {status}")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
            self._failed(batch, repr(e))
        finally:
            self.task = None
        if len(self.queue) >= self.batch_size:
            self._start()

    def _failed(self, batch: list, why: str) -> None:
        self._drop(len(batch))
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:   # off the data path; rate-limited
            log.warning("span export to %s:%d failed (%s); %d spans dropped so far",
                        self.host, self.port, why, self.dropped)

    async def _post(self, body: bytes) -> int:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            host = f"[{self.host}]" if ":" in self.host else self.host
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\nUser-Agent: fastproxy\r\n\r\n"
                         % (self.path.encode(), host.encode(), self.port, len(body)) + body)
            await writer.drain()
            line = await reader.readline()
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise ValueError(f"bad status line {line[:80]!r}")
            return int(parts[1])
        finally:
            writer.close()

    def close(self) -> None:
        """Spans not yet exported are dropped (and counted)."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._drop(len(self.queue))
        self.queue.clear()
