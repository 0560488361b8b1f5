"""Acceptance 5 (issue 4): SIGTERM under load.

A real proxy (2 workers) relays to an upstream that holds every request for
HOLD_S before answering, so at any moment most of the CLIENTS requests are in
flight inside the proxy. Then SIGTERM:
  - every request whose connection was accepted completes, byte-exact;
  - new connections are refused only once readiness is off: no connection
    is refused before the last moment /ready was seen answering 200;
  - the manager exits 0 within drain_seconds (plus a small slack), and its
    workers and shared memory are gone.

A prober opens a new (empty) connection every few ms, so the moment the
proxy starts refusing is known precisely, and connections accepted during the
listener close are checked too: each must end with a clean EOF, not a reset.

The load is bounded: CLIENTS threads and the prober, one connection at a time
each, and each stops at its first refused connection. Every wait has a timeout; processes
are signalled by PID only (ProxyProcess).
"""
import hashlib
import http.client
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.support.payload import small_payload
from tests.support.polling import poll_until
from tests.support.tcp_client import recv_exactly, recv_until_eof

CLIENTS = 12
HOLD_S = 0.4             # the upstream's think time per request
REQUEST_BYTES = 4096
RESPONSE_BYTES = 96 * 1024
DRAIN_S = 4.0
EXIT_SLACK_S = 1.5       # process teardown on a loaded CI machine
WARMUP_REQUESTS = 2 * CLIENTS
PROBE_EVERY_S = 0.002


def response_for(request: bytes) -> bytes:
    """The upstream's answer: derived from every request byte, so a mixed-up or
    truncated relay cannot pass for a correct one."""
    seed = hashlib.sha256(request).digest()
    blocks = RESPONSE_BYTES // 64 + 1
    out = b"".join(hashlib.sha512(seed + i.to_bytes(4, "big")).digest() for i in range(blocks))
    return out[:RESPONSE_BYTES]


class SlowUpstream:
    """Reads one request, waits HOLD_S, answers, closes. A thread per connection
    (at most CLIENTS at once)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.served = 0
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.listener.getsockname()[1]

    def __enter__(self) -> "SlowUpstream":
        self._acceptor.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._acceptor.join(timeout=10)
        for t in self.threads:
            t.join(timeout=10)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(15)
        with conn:
            try:
                request = recv_exactly(conn, REQUEST_BYTES)
                time.sleep(HOLD_S)
                conn.sendall(response_for(request))
                conn.shutdown(socket.SHUT_WR)
            except (OSError, EOFError):
                return
        with self.lock:
            self.served += 1


@dataclass
class Record:
    """What the clients and the readiness poller saw, on one monotonic clock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    completed: list = field(default_factory=list)     # (connected_at, done_at)
    failures: list = field(default_factory=list)      # (connected_at, what went wrong)
    refusals: list = field(default_factory=list)      # time connect() was refused
    probes: list = field(default_factory=list)        # (connected_at, done_at) of accepted probes
    in_flight: int = 0
    ready_polls: list = field(default_factory=list)   # (sent_at, answered_at, status or None)


def client(n: int, port: int, rec: Record, stop: threading.Event) -> None:
    seq = 0
    while not stop.is_set():
        request = small_payload(n * 100_000 + seq, REQUEST_BYTES)
        seq += 1
        s = socket.socket()
        s.settimeout(15)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            with rec.lock:
                rec.refusals.append(time.monotonic())
            s.close()
            return
        except OSError as exc:
            with rec.lock:
                rec.failures.append((time.monotonic(), f"connect: {exc!r}"))
            s.close()
            return
        connected = time.monotonic()
        with rec.lock:
            rec.in_flight += 1
        try:
            with s:
                s.sendall(request)
                s.shutdown(socket.SHUT_WR)
                got = recv_until_eof(s, limit=2 * RESPONSE_BYTES)
            if got == response_for(request):
                with rec.lock:
                    rec.completed.append((connected, time.monotonic()))
            else:
                with rec.lock:
                    rec.failures.append((connected, f"{len(got)} bytes back, not the {RESPONSE_BYTES} expected "
                                                    "(or different ones)"))
        except OSError as exc:
            with rec.lock:
                rec.failures.append((connected, f"during the request: {exc!r}"))
        finally:
            with rec.lock:
                rec.in_flight -= 1


def prober(port: int, rec: Record, stop: threading.Event) -> None:
    """New connections every PROBE_EVERY_S, so the moment the proxy starts refusing
    is known to a few ms. Each accepted probe is a whole (empty) exchange: the
    client half-closes at once, and must then see a clean EOF, not a reset."""
    while not stop.is_set():
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            with rec.lock:
                rec.refusals.append(time.monotonic())
            s.close()
            return
        except OSError as exc:
            with rec.lock:
                rec.failures.append((time.monotonic(), f"probe connect: {exc!r}"))
            s.close()
            return
        connected = time.monotonic()
        try:
            with s:
                s.shutdown(socket.SHUT_WR)
                tail = recv_until_eof(s)
            with rec.lock:
                if tail == b"":
                    rec.probes.append((connected, time.monotonic()))
                else:
                    rec.failures.append((connected, f"probe got {tail[:20]!r} instead of EOF"))
        except OSError as exc:
            with rec.lock:
                rec.failures.append((connected, f"probe: {exc!r}"))
        time.sleep(PROBE_EVERY_S)


def poll_ready(admin_port: int, rec: Record, stop: threading.Event) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        status = None
        try:
            conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=1)
            try:
                conn.request("GET", "/ready")
                status = conn.getresponse().status
            finally:
                conn.close()
        except OSError:
            pass
        with rec.lock:
            rec.ready_polls.append((sent, time.monotonic(), status))
        time.sleep(0.005)


@pytest.mark.slow
def test_sigterm_under_load(relay_to):
    rec = Record()
    stop_clients, stop_poller = threading.Event(), threading.Event()
    with SlowUpstream() as upstream:
        relay = relay_to(upstream.address, workers=2, drain_seconds=DRAIN_S)
        proxy = relay.proxy
        poller = threading.Thread(target=poll_ready, args=(relay.admin.port, rec, stop_poller), daemon=True)
        clients = [threading.Thread(target=client, args=(n, relay.port, rec, stop_clients), daemon=True)
                   for n in range(CLIENTS)]
        clients.append(threading.Thread(target=prober, args=(relay.port, rec, stop_clients), daemon=True))
        try:
            poller.start()
            for t in clients:
                t.start()
            poll_until(lambda: len(rec.completed) >= WARMUP_REQUESTS, timeout=30,
                       message=f"{WARMUP_REQUESTS} requests through the proxy before SIGTERM")
            poll_until(lambda: rec.in_flight >= CLIENTS // 2, timeout=10, interval=0.005,
                       message="requests in flight")
            assert not rec.failures, f"failures before SIGTERM: {rec.failures[:5]}"

            sigterm_at = time.monotonic()
            proxy.send_signal(signal.SIGTERM)
            rc = proxy.wait_exit(timeout=DRAIN_S + 15)
            exited_at = time.monotonic()
        finally:
            stop_clients.set()
            for t in clients:
                t.join(timeout=20)
            stop_poller.set()
            poller.join(timeout=10)
    assert not any(t.is_alive() for t in clients), "a client thread did not finish"

    # The process: exit 0, within the drain time, nothing left behind.
    proxy.assert_clean_exit(rc)
    took = exited_at - sigterm_at
    assert took < DRAIN_S + EXIT_SLACK_S, f"exited {took:.2f}s after SIGTERM; drain_seconds={DRAIN_S}"

    # In-flight requests: every accepted connection completed, byte-exact.
    assert not rec.failures, f"{len(rec.failures)} accepted requests did not complete: {rec.failures[:5]}"
    in_flight = [c for c in rec.completed if c[0] < sigterm_at < c[1]]
    assert len(in_flight) >= CLIENTS // 2, f"only {len(in_flight)} requests spanned the SIGTERM"

    # Refusals: they happen, and only once readiness is off. A refusal seen before
    # a /ready request that was then answered 200 would prove the listener closed
    # while the proxy still called itself ready.
    assert rec.refusals, "no new connection was refused before the proxy exited"
    first_refusal = min(rec.refusals)
    assert first_refusal > sigterm_at
    last_ready = max((sent for sent, _, status in rec.ready_polls if status == 200), default=None)
    first_not_ready = min((done for _, done, status in rec.ready_polls if status == 503), default=None)
    assert last_ready is not None and last_ready < first_refusal, (
        f"a connection was refused {last_ready - first_refusal:.4f}s before /ready last answered 200")
    assert first_not_ready is not None, "/ready never answered 503 during the drain"
    assert all(status != 200 for sent, _, status in rec.ready_polls if sent > first_not_ready), \
        "/ready turned 200 again during the drain"
    assert upstream.served == len(rec.completed)
    print(f"\nSIGTERM with {len(in_flight)} requests in flight: all completed; "
          f"/ready 503 seen {1000 * (first_not_ready - sigterm_at):.1f} ms after SIGTERM, first refusal "
          f"{1000 * (first_refusal - sigterm_at):.1f} ms after; exit 0 after {took:.2f}s "
          f"({len(rec.completed)} requests, {len(rec.probes)} probes, {len(rec.refusals)} refusals)")
