"""The compiled table as a worker decodes it: lookups, weights, loop guard."""
from collections import Counter

from fastproxy.config.load import load_text
from fastproxy.routing.http import REDIRECT, ROUTE, TOTAL_WEIGHT
from fastproxy.routing.table import (
    MODE_INBOUND,
    MODE_OUTBOUND,
    MODE_TCP,
    PROTOCOL_DETECT,
    PROTOCOL_HTTP,
    PROTOCOL_TCP,
    RouteTable,
    compile_table,
    encode,
)
from fastproxy.stats.names import BLOCK, FIRST_BLOCK, SlotRegistry

CFG = """
listeners:
  - {name: echo, address: "127.0.0.1:18080", tcp_proxy: {cluster: echo}}
  - {name: out, address: "0.0.0.0:15001", use_original_dst: true, traffic_direction: OUTBOUND}
  - {name: in, address: "0.0.0.0:15006", use_original_dst: true, traffic_direction: INBOUND}
  - {name: svc, address: "10.0.0.1:80", bind_to_port: false, tcp_proxy: {cluster: echo}}
  - {name: anyip, address: "0.0.0.0:5432", bind_to_port: false, tcp_proxy: {cluster: db}}
clusters:
  - {name: echo, endpoints: [{address: "127.0.0.1:9000", weight: 4}, {address: "127.0.0.1:9001", weight: 1}]}
  - {name: db, endpoints: [{address: "127.0.0.1:5433"}]}
"""


def table(text=CFG, env=None, slots=None):
    slots = slots or SlotRegistry(1024)
    return RouteTable.decode(7, encode(compile_table(load_text(text, env or {}), slots))), slots


def test_modes_and_virtual_lookups():
    t, _ = table()
    modes = {l.name: l.mode for l in t.listeners}
    assert modes == {"echo": MODE_TCP, "out": MODE_OUTBOUND, "in": MODE_INBOUND}
    assert t.outbound(("10.0.0.1", 80)).name == "echo"
    assert t.outbound(("10.9.9.9", 5432)).name == "db"
    assert t.outbound(("10.0.0.2", 80)).name == "PassthroughCluster"


def test_registry_only_refuses_unknown():
    t, _ = table(env={"FASTPROXY_OUTBOUND_TRAFFIC_POLICY": "REGISTRY_ONLY"})
    assert t.outbound(("10.0.0.2", 80)) is None
    assert t.outbound(("10.0.0.1", 80)).name == "echo"


def test_weighted_round_robin_is_exact_and_interleaved():
    from fastproxy.policy import lb

    t, _ = table()
    c = t.clusters["echo"]
    rr = lb.build(c.lb_doc["policy"], c.endpoints, c.lb_doc)   # as the worker builds it
    picks = [rr.pick() for _ in range(50)]
    assert Counter(p.port for p in picks) == {9000: 40, 9001: 10}
    # smooth: the light endpoint is never picked twice in a row
    assert all(not (a.port == b.port == 9001) for a, b in zip(picks, picks[1:]))


def test_slot_blocks_are_stable_across_recompiles():
    t1, slots = table()
    t2, _ = table(CFG.replace("name: db", "name: db2").replace("cluster: db}", "cluster: db2}"), slots=slots)
    assert t1.clusters["echo"].block == t2.clusters["echo"].block
    assert t2.clusters["db2"].block not in {c.block for c in t1.clusters.values()}
    assert min(c.block for c in t1.clusters.values()) >= FIRST_BLOCK * BLOCK


def test_loop_guard():
    t, _ = table()
    out = next(l for l in t.listeners if l.name == "out")
    assert t.would_loop(("10.1.1.1", 15001), False, out)       # reached the capture port directly
    assert not t.would_loop(("10.1.1.1", 80), False, out)       # TPROXY-style: real port
    assert t.would_loop(("127.0.0.1", 18080), True, out)        # NAT target is our own explicit listener
    assert not t.would_loop(("10.1.1.1", 18080), True, out)     # a remote host on the same port is fine


# -- HTTP -------------------------------------------------------------------------

HTTP_CFG = """
listeners:
  - {name: tcp, address: "127.0.0.1:18080", tcp_proxy: {cluster: v1}}
  - {name: web, address: "127.0.0.1:18081", http: {cluster: v1}}
  - {name: strict, address: "127.0.0.1:18082", http: {}}
  - {name: out, address: "0.0.0.0:15001", use_original_dst: true, traffic_direction: OUTBOUND}
  - {name: in, address: "0.0.0.0:15006", use_original_dst: true, traffic_direction: INBOUND}
clusters:
  - {name: v1, endpoints: [{address: "127.0.0.1:9000"}]}
  - {name: v2, endpoints: [{address: "127.0.0.1:9001"}]}
virtual_services:
  - name: reviews
    hosts: [reviews.example.com]
    http:
      - match: [{uri: {prefix: /moved}}]
        redirect: {uri: /new}
      - match: [{uri: {prefix: /canary}}, {method: {exact: PUT}}]
        route: [{destination: {host: v2}}]
      - route:
          - {destination: {host: v1}, weight: 90}
          - {destination: {host: v2}, weight: 10}
"""


def test_listener_protocols_and_http_cluster():
    t, _ = table(HTTP_CFG)
    by = t.by_name
    assert {n: l.protocol for n, l in by.items()} == {
        "tcp": PROTOCOL_TCP, "web": PROTOCOL_HTTP, "strict": PROTOCOL_HTTP, "out": PROTOCOL_DETECT,
        "in": PROTOCOL_DETECT}
    assert by["tcp"].cluster is t.clusters["v1"] and by["tcp"].http_cluster is None
    assert by["web"].http_cluster is t.clusters["v1"] and by["web"].cluster is None
    assert by["strict"].http_cluster is None
    assert by["web"].mode == MODE_TCP and by["out"].mode == MODE_OUTBOUND
    assert by["out"].http_cluster is None and by["out"].cluster is None


def test_http_routes_resolve_their_clusters_once():
    t, _ = table(HTTP_CFG)
    route = t.http.select(b"reviews.example.com", b"GET", b"/books")
    assert route.kind == ROUTE and route.native is None
    assert len(route.clusters) == TOTAL_WEIGHT
    assert all(c is t.clusters[c.name] for c in route.clusters)
    for r in range(3 * TOTAL_WEIGHT):
        assert route.cluster_for(r) is t.clusters[route.pick(r).host]
    assert Counter(c.name for c in route.clusters) == {"v1": 90, "v2": 10}
    # every match block of a route carries the same resolution
    blocks = [t.http.select(b"reviews.example.com", b"GET", b"/canary"),
              t.http.select(b"reviews.example.com", b"PUT", b"/x")]
    assert blocks[0] is not blocks[1]
    assert all(b.clusters == (t.clusters["v2"],) * TOTAL_WEIGHT for b in blocks)
    redirect = t.http.select(b"reviews.example.com", b"GET", b"/moved/a")
    assert redirect.kind == REDIRECT and redirect.clusters == ()
    assert t.http.select(b"other.example.com", b"GET", b"/") is None


def test_each_generation_has_its_own_routes():
    t1, slots = table(HTTP_CFG)
    t2, _ = table(HTTP_CFG, slots=slots)
    r1 = t1.http.select(b"reviews.example.com", b"GET", b"/")
    r2 = t2.http.select(b"reviews.example.com", b"GET", b"/")
    r1.native = object()
    assert r2.native is None
    assert r2.cluster_for(0) is t2.clusters["v1"] and r2.cluster_for(0) is not r1.cluster_for(0)
    assert r1.cluster_for(0).block == r2.cluster_for(0).block


def test_table_document_carries_virtual_services_and_settings():
    config = load_text(HTTP_CFG, {"FASTPROXY_DETECT_TIMEOUT_MS": "20"})
    doc = compile_table(config, SlotRegistry(1024))
    assert doc["virtual_services"] == list(config.virtual_services)
    assert doc["settings"]["detect_timeout_ms"] == 20
    assert {l["name"]: (l["protocol"], l["http_cluster"]) for l in doc["listeners"]} == {
        "tcp": ("tcp", None), "web": ("http", "v1"), "strict": ("http", None), "out": ("detect", None),
        "in": ("detect", None)}
    t = RouteTable.decode(3, encode(doc))
    assert t.settings["detect_timeout_ms"] == 20
    assert t.settings["generate_request_id"] is True


def test_opaque_ports():
    t, _ = table(HTTP_CFG)
    assert t.opaque_ports == frozenset({25, 587, 3306, 4444, 5432, 6379, 9300, 11211})
    t, _ = table(HTTP_CFG, env={"FASTPROXY_OPAQUE_PORTS": "9092, 5672"})
    assert t.opaque_ports == frozenset({9092, 5672})
    t, _ = table(HTTP_CFG, env={"FASTPROXY_OPAQUE_PORTS": ""})
    assert t.opaque_ports == frozenset()


def test_http_needs_headers_only_when_a_route_matches_on_them():
    t, _ = table(HTTP_CFG)
    assert t.http_needs_headers is False and t.http_header_names == frozenset()
    t, _ = table()  # no virtual services at all
    assert t.http_needs_headers is False and t.http.select(b"a", b"GET", b"/") is None
    with_headers = HTTP_CFG + """
  - hosts: [ratings.example.com]
    http:
      - match: [{headers: {X-User: {exact: jason}}}, {withoutHeaders: {cookie: {}}}]
        route: [{destination: {host: v2}}]
"""
    t, _ = table(with_headers)
    assert t.http_needs_headers is True
    assert t.http_header_names == frozenset({b"x-user", b"cookie"})
    route = t.http.select(b"ratings.example.com", b"GET", b"/", {b"x-user": b"jason", b"cookie": b"a"})
    assert route.cluster_for(7) is t.clusters["v2"]


# -- traffic governance ------------------------------------------------------------

GOV_CFG = """
listeners:
  - {name: web, address: "127.0.0.1:18081", http: {cluster: lr}, request_headers_timeout_ms: 2500}
  - {name: api, address: "127.0.0.1:18082", http: {}}
  - {name: tcp, address: "127.0.0.1:18083", tcp_proxy: {cluster: lr}}
  - {name: out, address: "0.0.0.0:15001", use_original_dst: true, traffic_direction: OUTBOUND,
     request_headers_timeout_ms: 0}
clusters:
  - name: lr
    endpoints: [{address: "127.0.0.1:9000", weight: 2}, {address: "[::1]:9001"}]
    lb_policy: LEAST_REQUEST
    least_request_lb_config: {choice_count: 3}
    common_lb_config: {healthy_panic_threshold: 25}
    circuit_breakers: {max_connections: 7, retry_budget: {budget_percent: 30}}
    outlier_detection: {consecutive_5xx: 2}
    health_checks: [{interval_ms: 100, http_health_check: {path: /h, host: x.local}}]
  - name: ring
    endpoints: [{address: "127.0.0.1:9002"}]
    lb_policy: RING_HASH
    hash_policy: {cookie: sid}
    ring_hash_lb_config: {minimum_ring_size: 16, maximum_ring_size: 64}
virtual_services:
  - name: a
    hosts: [a.example]
    localRateLimit: {maxTokens: 100, fillInterval: 1s}
    http:
      - match: [{uri: {prefix: /x}}, {uri: {prefix: /y}}]
        route: [{destination: {host: lr}}]
        localRateLimit: {maxTokens: 5, tokensPerFill: 5, fillInterval: 200ms}
        timeout: 1s
      - route: [{destination: {host: ring}}]
  - name: b
    hosts: [b.example]
    http:
      - directResponse: {status: 204}
        localRateLimit: {maxTokens: 1, fillInterval: 1s}
      - route: [{destination: {host: ring}}]
"""


def test_cluster_documents_carry_governance():
    from fastproxy.policy.breakers import ISTIO_DEFAULT

    slots = SlotRegistry(1024)
    doc = compile_table(load_text(GOV_CFG, {}), slots)
    lr = doc["clusters"]["lr"]
    assert lr["slot"] == lr["block"] // BLOCK
    assert lr["endpoints"] == [["127.0.0.1", 9000, 2, slots.endpoint("lr", "127.0.0.1", 9000)],
                               ["::1", 9001, 1, slots.endpoint("lr", "::1", 9001)]]
    assert lr["lb"] == {"policy": "LEAST_REQUEST", "hash": None, "choice_count": 3, "ring_min": 1024,
                        "ring_max": 8388608, "maglev_size": 65537}
    assert lr["panic"] == 25
    assert lr["breakers"] == {"max_connections": 7, "max_pending_requests": 2**32 - 1, "max_requests": 2**32 - 1,
                              "max_retries": 2**32 - 1, "budget_percent": 30.0, "min_retry_concurrency": 3}
    assert lr["outlier"] == {"consecutive_5xx": 2, "consecutive_gateway_failure": 5, "interval_ms": 10000,
                             "base_ejection_time_ms": 30000, "max_ejection_time_ms": 300000,
                             "max_ejection_percent": 10}
    assert lr["health_check"] == {"kind": "http", "interval_ms": 100, "timeout_ms": 1000, "healthy_threshold": 2,
                                  "unhealthy_threshold": 3, "path": "/h", "host": "x.local",
                                  "expected": [[200, 201]]}
    ring = doc["clusters"]["ring"]
    assert ring["lb"]["hash"] == {"cookie": "sid"} and (ring["lb"]["ring_min"], ring["lb"]["ring_max"]) == (16, 64)
    assert ring["outlier"] is None and ring["health_check"] is None
    assert ring["breakers"] == ISTIO_DEFAULT.to_doc()
    pt = doc["clusters"]["PassthroughCluster"]
    assert (pt["endpoints"], pt["lb"]["policy"], pt["slot"], pt["outlier"]) == (
        [], "ORIGINAL_DST", pt["block"] // BLOCK, None)
    # one bucket per owner: the VS, and each route (not each match block)
    assert doc["rate_limit_slots"] == {"virtual_services[0]": 0, "virtual_services[0].http[0]": 1,
                                       "virtual_services[1].http[0]": 2}
    assert slots.bucket_slots() == doc["rate_limit_slots"]
    assert set(slots.endpoint_slots()) == {("lr", "127.0.0.1", 9000), ("lr", "::1", 9001), ("ring", "127.0.0.1", 9002)}
    assert {l["name"]: l["request_headers_timeout_ms"] for l in doc["listeners"]} == {
        "web": 2500, "api": 10000, "tcp": 10000, "out": 0}


def test_decoded_clusters_and_routes_carry_governance():
    from fastproxy.policy.breakers import Breakers
    from fastproxy.policy.health import HealthCheck
    from fastproxy.policy.lb import Endpoint
    from fastproxy.policy.outlier import OutlierDetection

    t, slots = table(GOV_CFG, env={"FASTPROXY_HTTP_REQUEST_HEADERS_TIMEOUT_MS": "750"})
    lr = t.clusters["lr"]
    assert lr.slot == lr.block // BLOCK
    assert lr.endpoints == (Endpoint("127.0.0.1", 9000, 2, slots.endpoint("lr", "127.0.0.1", 9000)),
                            Endpoint("::1", 9001, 1, slots.endpoint("lr", "::1", 9001)))
    assert lr.lb_doc["policy"] == "LEAST_REQUEST" and lr.lb_doc["choice_count"] == 3 and lr.panic == 25
    assert lr.breakers == Breakers(7, 2**32 - 1, 2**32 - 1, 2**32 - 1, 30.0, 3)
    assert lr.outlier == OutlierDetection(consecutive_5xx=2)
    assert lr.health_check == HealthCheck("http", 100, 1000, 2, 3, b"/h", b"x.local")
    assert t.clusters["ring"].outlier is None and t.clusters["ring"].health_check is None
    assert t.passthrough.endpoints == () and t.passthrough.passthrough
    assert {n: l.request_headers_timeout_ms for n, l in t.by_name.items()} == {
        "web": 2500, "api": 750, "tcp": 750, "out": 0}
    x = t.http.select(b"a.example", b"GET", b"/x")
    y = t.http.select(b"a.example", b"GET", b"/y/1")
    other = t.http.select(b"a.example", b"GET", b"/z")
    assert x is not y
    for r in (x, y):
        assert (r.rate_limit_slot, r.vh_rate_limit_slot, r.timeout_ms) == (1, 0, 1000)
        assert r.rate_limit.max_tokens == 5 and r.vh_rate_limit.max_tokens == 100
    assert (other.rate_limit_slot, other.vh_rate_limit_slot, other.rate_limit) == (-1, 0, None)
    direct = t.http.select(b"b.example", b"GET", b"/")
    assert (direct.rate_limit_slot, direct.vh_rate_limit_slot) == (2, -1)


def test_rate_limit_and_endpoint_slots_are_stable_across_recompiles():
    t1, slots = table(GOV_CFG)
    swapped = GOV_CFG.replace('[{address: "127.0.0.1:9000", weight: 2}, {address: "[::1]:9001"}]',
                              '[{address: "[::1]:9001"}, {address: "127.0.0.1:9003"}]')
    t2, _ = table(swapped, slots=slots)
    by_addr1 = {(e.ip, e.port): e.slot for e in t1.clusters["lr"].endpoints}
    by_addr2 = {(e.ip, e.port): e.slot for e in t2.clusters["lr"].endpoints}
    assert by_addr2[("::1", 9001)] == by_addr1[("::1", 9001)]
    assert by_addr2[("127.0.0.1", 9003)] not in by_addr1.values()
    r1 = t1.http.select(b"a.example", b"GET", b"/x")
    r2 = t2.http.select(b"a.example", b"GET", b"/x")
    assert (r1.rate_limit_slot, r1.vh_rate_limit_slot) == (r2.rate_limit_slot, r2.vh_rate_limit_slot)


def test_slot_exhaustion_names_the_setting():
    import pytest

    with pytest.raises(OverflowError, match="settings.max_endpoints"):
        compile_table(load_text(GOV_CFG, {}), SlotRegistry(1024, 2, 10))
    with pytest.raises(OverflowError, match="settings.max_rate_limits"):
        compile_table(load_text(GOV_CFG, {}), SlotRegistry(1024, 10, 2))


def test_table_version_is_checked():
    import pytest

    from fastproxy.routing.table import TABLE_VERSION

    doc = compile_table(load_text(HTTP_CFG, {}), SlotRegistry(1024))
    assert doc["version"] == TABLE_VERSION == 3
    doc["version"] = 2
    with pytest.raises(ValueError, match="version 2, expected 3"):
        RouteTable.decode(1, encode(doc))
