"""The worker's HTTP/1.1 path: the C engine does the bytes, this module answers "where to?".

Per request the engine asks decide() (through fastproxy._native.h1proxy) and
gets a Decision. Decisions are immutable and cached: per route and endpoint,
per cluster and endpoint, or per connection for passthrough, so a request
costs one route match, one endpoint pick and a dict lookup. The caches are
dropped when the table's generation changes (the old decisions stay alive
while requests still use them: the engine holds a reference).

Observability: with an access log or tracing on, the engine keeps a record
per finished request and hands each batch to http_records() at the end of
its run: the access log sink formats and buffers them (written without
blocking), and the sampled ones are queued for span export. The worker's
tick (expire) flushes both. Records name listeners and clusters by counter
block; BlockNames turns those into names, per table generation.
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from random import random

from .._native import h1proxy as native
from .._native.relay import peer_addr
from .._native.rewrite import RewriteOps
from ..config.schema import hostport
from ..interception.flags import INBOUND_PASSTHROUGH_V6
from ..observe.accesslog import AccessLog
from ..observe.exporter import SpanExporter
from ..observe.record import BlockNames
from ..observe.sink import AccessLogSink
from ..observe.spans import sampled
from ..policy.retry import ISTIO_DEFAULT
from ..routing.table import (
    MODE_INBOUND,
    MODE_TCP,
    ClusterRoute,
    ListenerRoute,
    RouteTable,
)
from ..stats.names import L_CX_DESTROY, ledger_area, series_area
from .govern import ClusterGov, retry_cfg, signature

log = logging.getLogger("fastproxy.worker")

_HASH = 2654435761   # Knuth's multiplicative hash: consecutive requests spread over the 100 weight slots


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


class HttpPath:
    """Owns the HTTP engine of this worker and decides each request's route."""

    def __init__(self, loop, counters, worker, l4, settings: dict):
        self.worker = worker              # .current() -> RouteTable
        self.l4 = l4                      # TCP path: detached connections go there
        self.ctr = counters
        self.names = BlockNames()
        self.access_log = _access_log(loop, counters, settings, self.names)   # AccessLogSink or None
        self.spans = _span_exporter(loop, counters, settings, self.names)     # SpanExporter or None
        series_base, series_max = series_area(settings)
        self.records = self.access_log is not None or self.spans is not None
        self.engine = native.HttpEngine(
            loop, self, counters.address, counters.nslots,
            max_head_bytes=settings["http_max_head_bytes"], max_headers=settings["http_max_headers"],
            max_line_bytes=settings["http_max_request_line_bytes"], buffer_bytes=settings["buffer_bytes"],
            pool_max_idle=settings["upstream_pool_max_idle"],
            pool_idle_ms=settings["upstream_idle_timeout_ms"],
            client_idle_ms=settings["http_idle_timeout_s"] * 1000,
            series_base=series_base, series_max=series_max,
            records=self.records,
            tracing=bool(settings["tracing"]), trace_sampling=float(settings["trace_sampling"]),
            gv_base=worker.govern.address, gv_ledger=counters.address + 8 * ledger_area(settings)[0])
        self.generation = 0
        self.targets: dict = {}           # (cluster, endpoint, native route) -> Target, this generation
        self.gov: dict = {}               # ClusterRoute -> ClusterGov, this generation
        self.gov_prev: dict = {}          # cluster name -> ClusterGov of the generation before
        self.govern = worker.govern       # the governance segment (csrc/govern.h), shared by the workers
        self.seq = 0                      # weighted picks: request number, hashed
        self.no_route = native.Reply(404, b"Not Found", b"", b"no route matched this request\n", native.FLAG_NR)
        self.no_healthy = native.Reply(503, b"Service Unavailable", b"",
                                       b"no healthy upstream\n", native.FLAG_UH)
        self.aborts: dict[tuple, object] = {}   # fault (abort status, delay ms, route) -> Reply
        self.stopped = None               # _fault's Reply when it stops a request
        self.default_native = None        # a route-less request's engine form (Istio's default retries)

    # -- connections ------------------------------------------------------------------

    def start(self, table: RouteTable, listener: ListenerRoute, fd: int, dst, detect: bool) -> None:
        """Hands an accepted client socket to the engine."""
        try:
            ip, port = peer_addr(fd)[:2]
            peer = ip.encode()
        except OSError:
            ip, port, peer = "", 0, b""
        host = b"" if dst is None else hostport(*dst).encode()
        # For records only (the engine ignores it otherwise): the client as ip:port.
        client = hostport(ip, port).encode() if ip and self.records else b""
        s = table.settings
        try:
            self.engine.add(fd, native.Conn(listener, dst, ip or None), detect=detect,
                            detect_ms=s["detect_timeout_ms"], listener_block=listener.block, peer=peer,
                            proto=b"http", default_host=host, request_id=bool(s["generate_request_id"]),
                            peer_addr=client, original_dst=host,
                            headers_timeout_ms=listener.request_headers_timeout_ms)
        except OSError:
            self.l4.unopened(fd, listener.block)

    def http_records(self, records: list) -> None:
        """A batch of finished requests' records (obs-spec §3 field order), after the engine's run."""
        if self.access_log is not None:
            self.access_log.write(records)
        if self.spans is not None:
            traced = sampled(records)
            if traced:
                self.spans.add(traced)

    def http_closed(self, conn, requests: int) -> None:
        self.ctr.add(conn.listener.block + L_CX_DESTROY, 1)

    def http_detached(self, conn, kind: int, fd: int, upstream_fd: int, cluster_block: int) -> None:
        if kind == native.DETACH_TUNNEL:
            self.l4.tunnel(conn.listener, fd, upstream_fd, cluster_block)
        else:   # not HTTP/1: relay it as TCP, every byte still in the socket
            table = self.worker.current()
            self.l4.relay(table, self._listener(table, conn), fd, conn.dst)

    # -- per request ----------------------------------------------------------------------

    def decide(self, conn, method: bytes, target: bytes, authority: bytes, headers):
        table = self.worker.current()
        if table.generation != self.generation:
            self._new_table(table)
        listener = conn.listener
        if listener.generation != table.generation:
            listener = self._listener(table, conn)
        if listener.mode == MODE_INBOUND:
            return conn.cache or self._inbound(table, conn)
        http = table.http
        route = http.select(authority, method, target, headers) if http is not None else None
        if route is None:
            if listener.mode == MODE_TCP:
                cluster = listener.http_cluster
                return self.no_route if cluster is None else self._target(cluster, None, conn, headers)
            return conn.cache or self._outbound(table, conn, headers)
        native_route = route.native
        if native_route is None:
            native_route = route.native = _compile_route(route, table.settings, self.govern)
        delay = 0
        if native_route.fault is not None:
            delay = self._fault(native_route)
            if delay < 0:
                return self.stopped
        kind = route.kind
        if kind == "route":
            self.seq += 1
            cluster = route.clusters[(self.seq * _HASH) % 100]
            return self._target(cluster, native_route, conn, headers, delay)
        if kind == "redirect":
            loc = route.redirect.location(b"http", authority, target)
            return native.Reply(route.redirect.code, _reason(route.redirect.code), b"location: " + loc + b"\r\n",
                                name=_name(route), limits=native_route.limits)
        return native_route.reply   # a direct response: one Reply for every request

    def _listener(self, table: RouteTable, conn) -> ListenerRoute:
        listener = table.by_name.get(conn.listener.name, conn.listener)
        conn.listener = listener
        conn.cache = None
        return listener

    def _new_table(self, table: RouteTable) -> None:
        self.generation = table.generation
        self.targets = {}
        self.gov_prev = {g.cluster.name: g for g in self.gov.values()}
        self.gov = {}
        self.default_native = _Native(None, None, b"", retry_cfg(ISTIO_DEFAULT),
                                      table.settings["http_request_timeout_ms"], 0, 0)

    # -- governance ---------------------------------------------------------------------

    def _fault(self, nr) -> int:
        """The route's fault: the delay to apply (ms, 0: none), or -1 when
        the request stops here with its abort Reply left in self.stopped (FI,
        after the delay when both fire, as Envoy's fault filter)."""
        delay_ms, delay_pct, abort, abort_pct = nr.fault
        # a draw only where the percentage can fire
        delay = delay_ms if delay_pct and random() * 100.0 < delay_pct else 0
        if not (abort_pct and random() * 100.0 < abort_pct):
            return delay
        key = (abort, delay, nr)
        r = self.aborts.get(key)
        if r is None:
            r = self.aborts[key] = native.Reply(abort, _reason(abort), b"", b"fault filter abort\n",
                                                native.FLAG_FI, delay_ms=delay, limits=nr.limits)
        self.stopped = r
        return -1

    def _cluster_gov(self, cluster: ClusterRoute) -> ClusterGov:
        sig = signature(cluster)
        g = self.gov_prev.get(cluster.name)
        if g is not None and g.sig == sig:
            g.cluster = cluster           # unchanged by the reload: its balancers and rotation stay
        else:
            g = ClusterGov(cluster, self.govern, sig)
        self.gov[cluster] = g
        return g

    def _target(self, cluster: ClusterRoute, native_route, conn, headers, delay: int = 0):
        """The Target for the next endpoint of cluster, with the route's policy and header ops."""
        if cluster.passthrough:
            return self.no_route
        if native_route is None:
            native_route = self.default_native
        g = self.gov.get(cluster) or self._cluster_gov(cluster)
        ep = g.pick(conn, headers)
        if ep is None:
            return self.no_healthy
        if delay:
            return self._new_target(cluster, g, ep, native_route, delay)
        key = (cluster, ep.slot, native_route)
        t = self.targets.get(key)
        if t is None:
            t = self.targets[key] = self._new_target(cluster, g, ep, native_route, 0)
        return t

    @staticmethod
    def _new_target(cluster: ClusterRoute, g: ClusterGov, ep, nr, delay: int):
        connect_ms = nr.connect_timeout_ms or int(cluster.connect_timeout * 1000)
        return native.Target(ep.ip, ep.port, None, cluster.block, connect_ms, nr.timeout_ms, nr.req, nr.resp,
                             nr.name, gcl=g.gcl, gcfg=g.cfg, gep=g.eps.get(ep.slot, 0), ep_slot=ep.slot,
                             retry=nr.retry, idle_timeout_ms=nr.idle_timeout_ms, delay_ms=delay,
                             cluster=cluster, route=nr, limits=nr.limits)

    def endpoint(self, table: RouteTable, cluster: ClusterRoute, fd: int) -> tuple[str, int] | None:
        """The TCP path's pick: the cluster's balancer over its available
        endpoints, as for a request (None: none available, UH)."""
        if table.generation != self.generation:
            self._new_table(table)
        g = self.gov.get(cluster) or self._cluster_gov(cluster)
        ep = g.pick(_TcpPeer(fd) if g.hash_source else None, None)
        return None if ep is None else (ep.ip, ep.port)

    def retry(self, conn, target, tried: tuple[int, ...]):
        """Another endpoint for a retry (the engine asks; see csrc/h1proxy.h),
        from the cluster of that name in the current table (a reload may
        have changed it since the request was routed)."""
        if target.cluster is None:
            return None
        table = self.worker.current()
        if table.generation != self.generation:
            self._new_table(table)
        cluster = table.clusters.get(target.cluster.name)
        if cluster is None or not cluster.endpoints:
            return None
        g = self.gov.get(cluster) or self._cluster_gov(cluster)
        ep = g.pick_other(tried)
        if ep is None:
            return None
        nr = target.route
        key = (cluster, ep.slot, nr)
        t = self.targets.get(key)
        if t is None:
            t = self.targets[key] = self._new_target(cluster, g, ep, nr, 0)
        return t

    def _outbound(self, table: RouteTable, conn, headers):
        """No route matched on a capture listener: as the TCP path would route it."""
        cluster = table.outbound(conn.dst)
        if cluster is None:
            return self.no_route                # REGISTRY_ONLY (flag NR)
        if not cluster.passthrough:
            return self._target(cluster, None, conn, headers)
        ip, port = conn.dst
        d = conn.cache = native.Target(ip, port, None, cluster.block, int(cluster.connect_timeout * 1000),
                                       table.settings["http_request_timeout_ms"])
        return d

    def _inbound(self, table: RouteTable, conn):
        """To the app at the original destination, from the passthrough source (not recaptured)."""
        ip, port = conn.dst
        src = INBOUND_PASSTHROUGH_V6 if ":" in ip else table.settings["inbound_passthrough_source"]
        cluster = table.inbound_passthrough
        d = conn.cache = native.Target(ip, port, src, cluster.block, int(cluster.connect_timeout * 1000),
                                       table.settings["http_request_timeout_ms"])
        return d

    # -- housekeeping -------------------------------------------------------------------

    def expire(self) -> None:
        """The worker's tick: idle connections, and the access log and spans waiting to leave."""
        self.engine.expire()
        if self.access_log is not None:
            self.access_log.flush()
        if self.spans is not None:
            self.spans.tick()

    @property
    def count(self) -> int:
        return self.engine.count

    def drain(self) -> None:
        self.engine.drain()

    def close(self) -> None:
        self.engine.close()
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None
        if self.spans is not None:
            self.spans.close()
            self.spans = None


def _access_log(loop, counters, settings: dict, names: BlockNames) -> AccessLogSink | None:
    if not settings["access_log"]:
        return None
    try:
        fmt = AccessLog(settings["access_log_format"], settings["access_log_fields"],
                        settings["access_log_filter"], settings["access_log_sampling"], names)
    except ValueError as e:   # e.g. an unknown field: log every field rather than none
        log.error("access log: %s; writing every field", e)
        fmt = AccessLog(settings["access_log_format"], "", settings["access_log_filter"],
                        settings["access_log_sampling"], names)
    return AccessLogSink(settings["access_log"], fmt, counters, settings["access_log_buffer_bytes"],
                         clock=loop.time)


def _span_exporter(loop, counters, settings: dict, names: BlockNames) -> SpanExporter | None:
    if not settings["tracing"] or not settings["trace_collector"]:
        return None
    try:
        return SpanExporter(loop, settings["trace_collector"], settings["trace_format"], counters, names,
                            settings["workload_name"], settings["workload_namespace"])
    except ValueError as e:
        log.error("tracing: %s; spans are not exported", e)
        return None


class _TcpPeer:
    """A relayed connection's client, for a source-ip hash pick."""

    __slots__ = ("peer",)

    def __init__(self, fd: int):
        try:
            self.peer = peer_addr(fd)[0]
        except OSError:
            self.peer = None


class _Native:
    """A route's engine form: header operations, name, retry policy and
    timeouts shared by every Target of a kind route; the Reply of a direct
    response; whether rate limits or a fault gate its requests."""

    __slots__ = ("req", "resp", "name", "retry", "timeout_ms", "idle_timeout_ms", "connect_timeout_ms", "limits",
                 "fault", "reply")

    def __init__(self, req, resp, name: bytes, retry, timeout_ms: int, idle_timeout_ms: int,
                 connect_timeout_ms: int, limits: tuple = (), fault: tuple | None = None, reply=None):
        self.req, self.resp, self.name, self.retry = req, resp, name, retry
        self.timeout_ms, self.idle_timeout_ms, self.connect_timeout_ms = timeout_ms, idle_timeout_ms, connect_timeout_ms
        # the engine takes the rate-limit tokens: (bucket address, max_tokens,
        # tokens_per_fill, fill_interval_ms), the virtual host's first
        self.limits = limits
        # (delay_ms, delay %, abort status, abort %) for _fault; None: no fault that can fire
        self.fault = fault
        self.reply = reply


def _compile_route(route, settings: dict, govern) -> _Native:
    """A route's engine form (see _Native)."""
    limits = tuple((govern.bucket_address(slot), b.max_tokens, b.tokens_per_fill, b.fill_interval_ms)
                   for b, slot in ((route.vh_rate_limit, route.vh_rate_limit_slot),
                                   (route.rate_limit, route.rate_limit_slot)) if b is not None)
    f = route.fault
    fault = None
    if f is not None and ((f.delay_ms and f.delay_percent) or (f.abort_status and f.abort_percent)):
        fault = (f.delay_ms, f.delay_percent if f.delay_ms else 0.0, f.abort_status,
                 f.abort_percent if f.abort_status else 0.0)
    if route.kind == "route":
        rq, rs = route.request_headers, route.response_headers
        req = None
        if not rq.empty or route.rewrite_uri is not None or route.rewrite_authority is not None:
            req = RewriteOps(rq.set, rq.add, rq.remove, path=route.rewrite_uri,
                             path_prefix_len=route.rewrite_prefix_len, authority=route.rewrite_authority)
        resp = None if rs.empty else RewriteOps(rs.set, rs.add, rs.remove)
        return _Native(req, resp, _name(route), retry_cfg(route.retry),
                       settings["http_request_timeout_ms"] if route.timeout_ms is None else route.timeout_ms,
                       route.idle_timeout_ms,
                       route.connect_timeout_ms, limits, fault)
    reply = None
    if route.kind == "direct_response":
        reply = native.Reply(route.direct_status, _reason(route.direct_status), b"content-type: text/plain\r\n",
                             route.direct_body, name=_name(route), limits=limits)
    return _Native(None, None, b"", None, 0, 0, 0, limits, fault, reply)   # a redirect is built per request


def _name(route) -> bytes:
    """The route's name for the access log: its own, else its VirtualService's."""
    return (route.name or route.virtual_service or "").encode()
