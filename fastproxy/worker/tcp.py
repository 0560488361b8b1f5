"""The worker's L4 path: accept -> original destination -> (HTTP path | route -> connect -> splice relay).

Per connection, Python does: one generation check, one or two dict lookups,
and hands the two sockets to the C relay. Bytes never pass through Python.

Every relay (explicit and capture listeners, and the HTTP connections the
HTTP engine detaches: tunnels, TLS, HTTP/2, opaque) is counted in the Istio
TCP series of its (listener block, cluster block): opened when the relay
starts, closed when it ends, and its bytes to and from the client by the C
relay itself (stats/names.py T_*). The series' base slot comes from the HTTP
engine, which owns the series area's allocator.
"""
from __future__ import annotations

import errno
import time

from .._native import relay as native
from ..config.schema import hostport
from ..interception.flags import INBOUND_PASSTHROUGH_V6, InitConfig
from ..routing.table import MODE_OUTBOUND, MODE_TCP, ClusterRoute, ListenerRoute
from ..stats.names import (
    C_CONNECT_FAIL,
    C_CONNECT_TIMEOUT,
    C_CX_DESTROY,
    C_CX_TOTAL,
    C_RX_BYTES,
    C_TX_BYTES,
    FLAG_UF,
    FLAG_UH,
    G_ACCEPT_ERRORS,
    G_COPIED_BYTES,
    G_IDLE_TIMEOUTS,
    G_SPLICED_BYTES,
    L_CX_DESTROY,
    L_CX_TOTAL,
    L_DETECT_OPAQUE,
    L_REFUSED_LOOP,
    L_REFUSED_NO_ROUTE,
    L_RX_BYTES,
    L_TX_BYTES,
    T_CLOSED,
    T_OPENED,
    T_RX_BYTES,
    T_TX_BYTES,
    tcp_key,
)

_CONNECT_FAILED = (native.CLOSED_CONNECT_FAIL, native.CLOSED_CONNECT_TIMEOUT)
_ACCEPT_BACKOFF_S = 0.1
PIPE_POOL = 256   # empty pipes kept per worker for new connections
# TPROXY source preservation marks the app-side socket with the mark that
# `fastproxy init -m TPROXY` routes back to this host by default (-t), as
# Istio's original_src filter uses its fixed 1337.
TPROXY_MARK = InitConfig.tproxy_mark


class L4Path:
    """Owns this worker's relays and does the per-connection decisions."""

    def __init__(self, loop, counters, worker, chunk: int):
        self.loop = loop
        self.ctr = counters                 # CounterView of this worker's region
        self.ctr_base = counters.address    # the C relay bumps byte counters here directly
        self.worker = worker                # .current() -> RouteTable (checks the generation)
        self.relays: set = set()            # for idle sweeps and drain; the engine drives them
        self.chunk = chunk
        self.engine = native.Engine(loop, chunk, PIPE_POOL, self)
        self.http = None                    # the HTTP path (worker/http.py), set by the worker
        self.log = None                     # its access log (observe/sink.py), when one is configured
        self.series: dict[tuple[int, int], int] = {}   # (listener block, cluster block) -> TCP series base slot
        self.series_generation = 0

    # -- accept ------------------------------------------------------------------

    def on_accept(self, listener: ListenerRoute, lfd: int) -> None:
        try:
            fds = native.accept_batch(lfd)
        except OSError as e:
            self.ctr.add(G_ACCEPT_ERRORS, 1)
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._pause(listener, lfd)
            return
        table = self.worker.current()
        if listener.generation != table.generation:
            # The callback was registered under an older table: route by the new one.
            listener = table.by_name.get(listener.name, listener)
        for fd in fds:
            self.handle(table, listener, fd)

    def _pause(self, listener: ListenerRoute, lfd: int) -> None:
        """Out of descriptors: stop accepting briefly instead of spinning on a ready socket."""
        self.loop.remove_reader(lfd)
        self.loop.call_later(_ACCEPT_BACKOFF_S, self._resume, listener, lfd)

    def _resume(self, listener: ListenerRoute, lfd: int) -> None:
        if self.worker.listeners.is_bound(lfd):
            self.loop.add_reader(lfd, self.on_accept, listener, lfd)

    # -- per connection --------------------------------------------------------------

    def handle(self, table, listener: ListenerRoute, fd: int) -> None:
        """A new client connection: to the HTTP path, or relayed as TCP."""
        lb = listener.block
        self.ctr.add(lb + L_CX_TOTAL, 1)
        if listener.mode == MODE_TCP:
            if listener.protocol == "http":
                self.http.start(table, listener, fd, None, detect=False)
            else:
                self.relay(table, listener, fd, None)
            return
        try:
            dst, redirected = native.original_dst(fd)
        except OSError:
            self._refuse(fd, lb + L_REFUSED_NO_ROUTE, lb)
            return
        if table.would_loop(dst, redirected, listener):
            self._refuse(fd, lb + L_REFUSED_LOOP, lb)
            return
        if listener.transparent:
            # TPROXY inbound stays L4: the HTTP engine cannot yet connect
            # from the client's own address.
            self.relay(table, listener, fd, dst)
        elif dst[1] in table.opaque_ports:
            self.ctr.add(lb + L_DETECT_OPAQUE, 1)   # counted as opaque without looking
            self.relay(table, listener, fd, dst)
        else:
            # Protocol detection: HTTP/1 stays in the HTTP engine; anything
            # else comes back through relay() with every byte still unread.
            self.http.start(table, listener, fd, dst, detect=True)

    def relay(self, table, listener: ListenerRoute, fd: int, dst) -> None:
        """Relays the connection as TCP: dst is the original destination (None on explicit listeners)."""
        ctr = self.ctr
        lb = listener.block
        src_ip = None
        transparent = False
        original = dst
        mode = listener.mode
        if mode == MODE_TCP or mode == MODE_OUTBOUND:
            if mode == MODE_TCP:
                cluster = listener.cluster
            else:
                cluster = table.outbound(dst)
                if cluster is None:
                    self._refuse(fd, lb + L_REFUSED_NO_ROUTE, lb, table.blackhole)
                    return
            if not cluster.passthrough:
                # as the HTTP path picks: the cluster's balancer over its available endpoints
                dst = self.http.endpoint(table, cluster, fd)
                if dst is None:
                    self._no_healthy(fd, lb, cluster.block, _hostport(original))
                    return
        else:  # MODE_INBOUND: to the app at the original destination
            cluster = table.inbound_passthrough
            if listener.transparent:
                # TPROXY: from the client's own address, as Istio does; the
                # mark makes the init rules return the app's replies to us.
                try:
                    src_ip = native.peer_addr(fd)[0]
                except OSError:
                    self._refuse(fd, lb + L_REFUSED_NO_ROUTE, lb)
                    return
                transparent = True
            elif ":" in dst[0]:
                # From ::6 (put on lo by `fastproxy init --dual-stack`), so the init rules do not recapture it.
                src_ip = INBOUND_PASSTHROUGH_V6
            else:
                src_ip = table.settings["inbound_passthrough_source"]   # 127.0.0.6, likewise
        cb = cluster.block
        ctr.add(cb + C_CX_TOTAL, 1)
        try:
            ufd, in_progress = native.connect(dst[0], dst[1], src_ip, transparent, TPROXY_MARK)
        except OSError:
            ctr.add(cb + C_CONNECT_FAIL, 1)
            if self.log is not None:
                self.log.tcp_closed(time.time_ns() // 1000, 0, 0, 0, lb, cb, _peer(fd), _hostport(original),
                                    _hostport(dst), FLAG_UF)
            self._unopened(fd, -1, lb, cb)
            return
        r = self._start(fd, ufd, in_progress, lb, cb, cluster.connect_timeout)
        if r is not None and self.log is not None:
            r.log = (time.time_ns() // 1000, _peer(fd), _hostport(original), _hostport(dst))

    def tunnel(self, listener: ListenerRoute, fd: int, ufd: int, cb: int) -> None:
        """An HTTP connection upgraded (101) or CONNECTed: splice the rest.
        The HTTP engine counted the upstream connection's opening."""
        r = self._start(fd, ufd, False, listener.block, cb, 0.0)
        if r is not None and self.log is not None:
            r.log = (time.time_ns() // 1000, _peer(fd), "", _peer(ufd))

    def _series(self, lb: int, cb: int) -> int:
        """The base slot of the TCP series of (lb, cb), or -1 past the
        series cap (the engine then counted the connection as overflow, so
        a refused key is asked again for each connection)."""
        gen = self.worker.generation
        if gen != self.series_generation:   # blocks of removed names go with their generation
            self.series = {}
            self.series_generation = gen
        base = self.series.get((lb, cb))
        if base is None:
            base = self.http.engine.series_slot(tcp_key(lb, cb))
            if base >= 0:
                self.series[(lb, cb)] = base
        return base

    def _start(self, fd: int, ufd: int, in_progress: bool, lb: int, cb: int, connect_timeout: float):
        """Hands the two sockets to the splice engine: the Relay, or None if it could not take them."""
        r = native.Relay(fd, ufd, self.chunk)
        s = self._series(lb, cb)
        r.route = (lb, cb, s)
        if s >= 0:
            r.set_counters(self.ctr_base, lb + L_RX_BYTES, lb + L_TX_BYTES, cb + C_RX_BYTES, cb + C_TX_BYTES,
                           s + T_RX_BYTES, s + T_TX_BYTES)
        else:
            r.set_counters(self.ctr_base, lb + L_RX_BYTES, lb + L_TX_BYTES, cb + C_RX_BYTES, cb + C_TX_BYTES)
        try:
            self.engine.add(r, in_progress, connect_timeout)
        except OSError:
            self._unopened(fd, ufd, lb, cb)
            return None
        if s >= 0:
            self.ctr.add(s + T_OPENED, 1)
        self.relays.add(r)
        return r

    def unopened(self, fd: int, lb: int) -> None:
        """The HTTP engine could not take the connection: count it closed, reset the client."""
        self.ctr.add(lb + L_CX_DESTROY, 1)
        native.abort(fd)

    def _unopened(self, fd: int, ufd: int, lb: int, cb: int) -> None:
        """The relay never started: count both connections closed, reset the client."""
        self.ctr.add(cb + C_CX_DESTROY, 1)
        self.ctr.add(lb + L_CX_DESTROY, 1)
        native.abort(fd)
        if ufd >= 0:
            native.close(ufd)

    def _no_healthy(self, fd: int, lb: int, cb: int, original: str) -> None:
        """No available endpoint in the cluster: reset the client (Envoy's UH)."""
        self.ctr.add(cb + C_CX_TOTAL, 1)
        if self.log is not None:
            self.log.tcp_closed(time.time_ns() // 1000, 0, 0, 0, lb, cb, _peer(fd), original, "", FLAG_UH)
        self._unopened(fd, -1, lb, cb)

    def _refuse(self, fd: int, reason_slot: int, lb: int, cluster: ClusterRoute | None = None) -> None:
        ctr = self.ctr
        ctr.add(reason_slot, 1)
        ctr.add(lb + L_CX_DESTROY, 1)
        if cluster is not None:
            ctr.add(cluster.block + C_CX_TOTAL, 1)
            ctr.add(cluster.block + C_CX_DESTROY, 1)
        native.abort(fd)

    def relay_closed(self, r, how: int, err: int) -> None:
        """Called once by the engine when a relay ends (its sockets are already closed)."""
        self.relays.discard(r)
        lb, cb, s = r.route
        ctr = self.ctr
        ctr.add(lb + L_CX_DESTROY, 1)
        ctr.add(cb + C_CX_DESTROY, 1)
        if s >= 0:
            ctr.add(s + T_CLOSED, 1)
        if how in _CONNECT_FAILED:
            ctr.add(cb + C_CONNECT_FAIL, 1)
            if how == native.CLOSED_CONNECT_TIMEOUT:
                ctr.add(cb + C_CONNECT_TIMEOUT, 1)
        ctr.add(G_SPLICED_BYTES, r.spliced)
        ctr.add(G_COPIED_BYTES, r.copied)
        if r.log is not None and self.log is not None:
            start_us, peer, original, upstream = r.log
            self.log.tcp_closed(start_us, time.time_ns() // 1000 - start_us, r.received, r.sent, lb, cb, peer,
                                original, upstream, FLAG_UF if how in _CONNECT_FAILED else 0)

    # -- housekeeping -------------------------------------------------------------------

    def sweep_idle(self, now: float, idle_timeout: float) -> None:
        """Aborts relays that moved no byte for idle_timeout seconds."""
        for r in list(self.relays):
            a = r.activity
            if a != r.seen_activity:
                r.seen_activity = a
                r.idle_since = now
            elif now - r.idle_since >= idle_timeout:
                self.ctr.add(G_IDLE_TIMEOUTS, 1)
                self.engine.finish(r)

    def abort_all(self) -> None:
        for r in list(self.relays):
            self.engine.finish(r)

    def close(self) -> None:
        self.engine.close(self.relays)


def _hostport(addr) -> str:
    return "" if addr is None else hostport(*addr)


def _peer(fd: int) -> str:
    try:
        return _hostport(native.peer_addr(fd))
    except OSError:
        return ""
