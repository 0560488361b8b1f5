"""The routing table: compiled from a Config by the manager, decoded by each worker. Pure.

compile_table() turns a validated Config into a plain document (JSON bytes
via encode()) that the manager publishes into shared memory. A worker decodes
it with RouteTable.decode() into the immutable objects its data path uses:
per-connection work is then a couple of dict lookups.

HTTP: the document carries the VirtualService documents as given; decode
compiles them once per generation (RouteTable.http) and resolves every
route's destinations to ClusterRoute objects (HttpRoute.clusters), so a
request costs the route selection and no name lookup.

Traffic governance: each cluster document carries its slot in the
governance segment (csrc/govern.h; its counter block // BLOCK), its
endpoints with their slots, its load-balancer settings ("lb", "panic"),
and its breakers, outlier detection and health check as the policy
objects' to_doc(). "rate_limit_slots" maps each local rate limit's owner
(the route's or virtual service's config path) to its bucket slot.
"""
from __future__ import annotations

import orjson

from ..config.schema import (
    BLACKHOLE_CLUSTER,
    INBOUND_PASSTHROUGH_CLUSTER,
    PASSTHROUGH_CLUSTER,
    Cluster,
    Config,
    parse_port_list,
)
from ..policy import lb
from ..policy.breakers import Breakers
from ..policy.health import HealthCheck
from ..policy.outlier import OutlierDetection
from ..stats.names import BLOCK, SlotRegistry
from .http import ROUTE, TOTAL_WEIGHT, HttpRouteTable, compile_virtual_services

TABLE_VERSION = 3

# Listener modes
MODE_TCP = 0        # explicit listener (protocol tcp: relay to its cluster; http: route requests)
MODE_OUTBOUND = 1   # capture: route by original destination
MODE_INBOUND = 2    # capture: relay to the local app at the original destination

# Listener protocols
PROTOCOL_TCP = "tcp"        # tcp_proxy: bytes relayed to the listener's cluster
PROTOCOL_HTTP = "http"      # http: HTTP/1.1, each request routed by the virtual services
PROTOCOL_DETECT = "detect"  # capture listener: HTTP/1 or TCP, decided per connection

WILDCARDS = ("0.0.0.0", "::")


def compile_table(config: Config, slots: SlotRegistry) -> dict:
    """The table document for config. Raises OverflowError if counter,
    endpoint or rate-limit slots run out."""
    clusters = {c.name: _cluster_doc(c, config.settings, slots) for c in config.clusters}
    for name in (PASSTHROUGH_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, BLACKHOLE_CLUSTER):
        clusters[name] = _cluster_doc(Cluster(name, (), lb_policy="ORIGINAL_DST"), config.settings, slots)
    rate_limit_slots = {}
    for route in compile_virtual_services(list(config.virtual_services)).routes():
        for key in (route.vh_rate_limit_key, route.rate_limit_key):
            if key is not None and key not in rate_limit_slots:
                rate_limit_slots[key] = slots.bucket(key)
    listeners, virtual = [], []
    for l in config.listeners:
        addrs = [[a.ip, a.port] for a in (l.address, *l.additional_addresses)]
        if not l.bind_to_port:
            virtual.extend([ip, port, l.tcp_proxy.cluster] for ip, port in addrs)
            continue
        if l.use_original_dst:
            mode = MODE_OUTBOUND if l.traffic_direction == "OUTBOUND" else MODE_INBOUND
            protocol = PROTOCOL_DETECT
        else:
            mode = MODE_TCP
            protocol = PROTOCOL_HTTP if l.http is not None else PROTOCOL_TCP
        listeners.append({"name": l.name, "addresses": addrs, "mode": mode, "protocol": protocol,
                          "cluster": l.tcp_proxy.cluster if l.tcp_proxy else None,
                          "http_cluster": l.http.cluster if l.http else None,
                          "block": slots.block("listener", l.name),
                          "request_headers_timeout_ms": config.settings["http_request_headers_timeout_ms"]
                          if l.request_headers_timeout_ms is None else l.request_headers_timeout_ms,
                          # TPROXY delivers inbound connections only to IP_TRANSPARENT sockets.
                          "transparent": mode == MODE_INBOUND
                          and config.settings["inbound_interception_mode"] == "TPROXY"})
    return {"version": TABLE_VERSION, "settings": dict(config.settings), "listeners": listeners,
            "virtual": virtual, "clusters": clusters,
            "virtual_services": list(config.virtual_services), "rate_limit_slots": rate_limit_slots,
            "opaque_ports": sorted(parse_port_list(config.settings["opaque_ports"], "settings.opaque_ports"))}


def _cluster_doc(c: Cluster, settings: dict, slots: SlotRegistry) -> dict:
    block = slots.block("cluster", c.name)
    return {"endpoints": [[e.address.ip, e.address.port, e.weight,
                           slots.endpoint(c.name, e.address.ip, e.address.port)] for e in c.endpoints],
            "connect_timeout_ms": c.connect_timeout_ms or settings["connect_timeout_ms"],
            "lb_policy": c.lb_policy,
            "block": block,
            "slot": block // BLOCK,
            "lb": {"policy": c.lb_policy, "hash": c.hash_policy.to_doc() if c.hash_policy else None,
                   "choice_count": c.choice_count, "ring_min": c.minimum_ring_size,
                   "ring_max": c.maximum_ring_size, "maglev_size": c.maglev_table_size},
            "panic": c.healthy_panic_threshold,
            "breakers": c.breakers.to_doc(),
            "outlier": c.outlier_detection.to_doc() if c.outlier_detection else None,
            "health_check": c.health_check.to_doc() if c.health_check else None}


def encode(doc: dict) -> bytes:
    return orjson.dumps(doc)


class ClusterRoute:
    """A cluster as the data path sees it.

    slot: its slot in the governance segment; endpoints: lb.Endpoint
    objects (each with its own slot); lb_doc: the document lb.build()
    takes (policy, hash, choice_count, ring_min, ring_max, maglev_size);
    panic: healthy_panic_threshold (percent); breakers, outlier (None:
    no outlier detection) and health_check (None: none): the policy
    objects. The worker balances over `endpoints` (worker/govern.py)."""

    __slots__ = ("name", "block", "slot", "connect_timeout", "endpoints", "lb_doc", "panic", "breakers",
                 "outlier", "health_check", "passthrough")

    def __init__(self, name: str, doc: dict):
        self.name = name
        self.block = doc["block"]
        self.slot = doc["slot"]
        self.connect_timeout = doc["connect_timeout_ms"] / 1000.0
        self.endpoints = tuple(lb.Endpoint(ip, port, weight, slot) for ip, port, weight, slot in doc["endpoints"])
        self.lb_doc = doc["lb"]
        self.panic = doc["panic"]
        self.breakers = Breakers.from_doc(doc["breakers"])
        self.outlier = OutlierDetection.from_doc(doc["outlier"]) if doc["outlier"] is not None else None
        self.health_check = HealthCheck.from_doc(doc["health_check"]) if doc["health_check"] is not None else None
        self.passthrough = doc["lb_policy"] == "ORIGINAL_DST"


class ListenerRoute:
    """A bound listener. protocol is PROTOCOL_TCP (cluster: where bytes go),
    PROTOCOL_HTTP (http_cluster: where requests no route matches go; None:
    404 with flag NR) or PROTOCOL_DETECT (a capture listener).
    request_headers_timeout_ms: HTTP requests' time from the first byte of
    the head to its end (0: no limit)."""

    __slots__ = ("name", "addresses", "mode", "protocol", "cluster", "http_cluster", "block", "ports",
                 "generation", "transparent", "request_headers_timeout_ms")

    def __init__(self, doc: dict, clusters: dict[str, ClusterRoute], generation: int):
        self.generation = generation
        self.name = doc["name"]
        self.addresses = [(ip, port) for ip, port in doc["addresses"]]
        self.mode = doc["mode"]
        self.protocol = doc["protocol"]
        self.cluster = clusters[doc["cluster"]] if doc["cluster"] else None
        self.http_cluster = clusters[doc["http_cluster"]] if doc["http_cluster"] else None
        self.block = doc["block"]
        self.ports = {port for _, port in self.addresses}
        self.transparent = doc.get("transparent", False)
        self.request_headers_timeout_ms = doc["request_headers_timeout_ms"]


class RouteTable:
    """The decoded table. Immutable once built; a new generation builds a new one.

    http: the compiled virtual services, each ROUTE's `clusters` resolved
    here; http_needs_headers: whether any route matches on request headers
    (else the caller passes no header mapping); http_header_names: the only
    names any route examines. opaque_ports: settings.opaque_ports, parsed."""

    __slots__ = ("generation", "settings", "listeners", "by_name", "clusters", "virtual", "virtual_port",
                 "own_ports", "passthrough", "inbound_passthrough", "blackhole", "http",
                 "http_needs_headers", "http_header_names", "opaque_ports")

    def __init__(self, generation: int, doc: dict):
        if doc.get("version") != TABLE_VERSION:
            raise ValueError(f"routing table version {doc.get('version')!r}, expected {TABLE_VERSION}")
        self.generation = generation
        self.settings = doc["settings"]
        self.clusters = {name: ClusterRoute(name, c) for name, c in doc["clusters"].items()}
        self.listeners = [ListenerRoute(l, self.clusters, generation) for l in doc["listeners"]]
        self.by_name = {l.name: l for l in self.listeners}
        self.virtual: dict[tuple[str, int], ClusterRoute] = {}
        self.virtual_port: dict[int, ClusterRoute] = {}
        for ip, port, cluster in doc["virtual"]:
            if ip in WILDCARDS:
                self.virtual_port[port] = self.clusters[cluster]
            else:
                self.virtual[(ip, port)] = self.clusters[cluster]
        self.own_ports = frozenset(p for l in self.listeners for p in l.ports)
        self.passthrough = self.clusters[PASSTHROUGH_CLUSTER]
        self.inbound_passthrough = self.clusters[INBOUND_PASSTHROUGH_CLUSTER]
        self.blackhole = self.clusters[BLACKHOLE_CLUSTER]
        self.opaque_ports = frozenset(doc["opaque_ports"])
        self.http = _resolve(compile_virtual_services(doc["virtual_services"]), self.clusters,
                             doc["rate_limit_slots"])
        self.http_needs_headers = self.http.needs_headers
        self.http_header_names = self.http.header_names

    @classmethod
    def decode(cls, generation: int, payload: bytes) -> RouteTable:
        return cls(generation, orjson.loads(payload))

    def outbound(self, dst: tuple[str, int]) -> ClusterRoute | None:
        """The cluster for an outbound original destination; None = refuse (REGISTRY_ONLY)."""
        c = self.virtual.get(dst) or self.virtual_port.get(dst[1])
        if c is not None:
            return c
        if self.settings["outbound_traffic_policy"] == "ALLOW_ANY":
            return self.passthrough
        return None

    def would_loop(self, dst: tuple[str, int], redirected: bool, listener: ListenerRoute) -> bool:
        """True when relaying to dst would come back to this proxy: the client
        reached a capture listener directly (no NAT: dst is the listener's own
        port), or the NAT destination is one of our own listening ports here."""
        if not redirected:
            return dst[1] in listener.ports
        if dst[1] not in self.own_ports:
            return False
        ip = dst[0]
        return ip in WILDCARDS or ip.startswith("127.") or ip == "::1"


def _resolve(http: HttpRouteTable, clusters: dict[str, ClusterRoute],
             rate_limit_slots: dict[str, int]) -> HttpRouteTable:
    """Fills each ROUTE's `clusters` (TOTAL_WEIGHT ClusterRoutes, [r] being
    pick(r)'s) and every route's rate-limit bucket slots."""
    for route in http.routes():
        for key, attr in ((route.rate_limit_key, "rate_limit_slot"), (route.vh_rate_limit_key, "vh_rate_limit_slot")):
            if key is not None:
                if key not in rate_limit_slots:
                    raise ValueError(f"{route.where}: no rate-limit slot for {key} in this table")
                setattr(route, attr, rate_limit_slots[key])
        if route.kind != ROUTE:
            continue
        by_host = {}
        for d in route.destinations:
            c = clusters.get(d.host)
            if c is None:
                raise ValueError(f"{route.where}: destination host {d.host!r} is not a cluster in this table")
            by_host[d.host] = c
        route.clusters = tuple(by_host[route.pick(r).host] for r in range(TOTAL_WEIGHT))
    return http

