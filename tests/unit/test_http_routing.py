"""HTTP routing (fastproxy/routing/http.py): Istio VirtualService semantics, as tables.

One table of requests against one config (host selection, match conditions,
first match wins), then the actions (weights, rewrites, redirects, direct
responses, header operations, and their hand-over to the C rewriter), then a
table of invalid configs with the field path each error must name.
"""
import base64
import copy
from collections import Counter

import pytest

from fastproxy.config.schema import ConfigError
from fastproxy.routing import http as rh
from fastproxy.routing.http import (
    DIRECT_RESPONSE, REDIRECT, ROUTE, HttpRouteTable, compile_virtual_services)


def dest(host, weight=None, subset=None, port=None):
    d = {"destination": {"host": host}}
    if subset:
        d["destination"]["subset"] = subset
    if port:
        d["destination"]["port"] = {"number": port}
    if weight is not None:
        d["weight"] = weight
    return d


def to(name, *match, **action):
    """An http route named name, routed to a cluster of the same name unless
    action says otherwise."""
    r = {"name": name, **action}
    if match:
        r["match"] = list(match)
    if not any(k in r for k in ("route", "redirect", "directResponse")):
        r["route"] = [dest(name)]
    return r


CONFIG = [
    {"name": "reviews", "hosts": ["reviews", "Reviews.Prod.svc.cluster.local"], "http": [
        to("jason", {"headers": {"end-user": {"exact": "jason"}}}),
        to("api-v1", {"uri": {"prefix": "/api/v1/"}}, {"uri": {"exact": "/legacy"}},
           rewrite={"uri": "/v1/"}, route=[dest("reviews", subset="v1", port=9080)]),
        to("regex", {"uri": {"regex": "/items/[0-9]+"}, "method": {"exact": "GET"}}),
        to("caseless", {"uri": {"prefix": "/CaseLess"}, "ignoreUriCase": True}),
        to("caseless-regex", {"uri": {"regex": "/Rx/.*"}, "ignoreUriCase": True}),
        to("query", {"queryParams": {"debug": {"exact": "1"}, "trace": {}}}),
        to("query-regex", {"queryParams": {"v": {"regex": "[a-c]+"}}}),
        to("hdr-prefix", {"headers": {"X-Tenant": {"prefix": "acme-"}}}),
        to("hdr-regex", {"headers": {"x-version": {"regex": "v[0-9]+"}}}),
        to("hdr-present", {"headers": {"x-canary": {}}}),
        to("hdr-and", {"headers": {"x-a": {"exact": "1"}, "x-b": {"exact": "2"}}}),
        to("not-bot", {"uri": {"prefix": "/shop"},
                       "withoutHeaders": {"user-agent": {"regex": ".*bot.*"}}}),
        to("not-internal", {"uri": {"prefix": "/public"}, "withoutHeaders": {"x-internal": {}}}),
        to("authority", {"authority": {"prefix": "reviews:"}, "uri": {"prefix": "/by-port"}}),
        to("post-put", {"method": {"regex": "POST|PUT"}}),
        to("weighted", {"uri": {"prefix": "/split"}},
           route=[dest("heavy", 80), dest("light", 20)]),
        to("redirect", {"uri": {"exact": "/old"}},
           redirect={"uri": "/new", "authority": "new.example"}),
        to("teapot", {"uri": {"exact": "/teapot"}},
           directResponse={"status": 418, "body": {"string": "short and stout"}}),
        to("default", route=[dest("reviews", subset="v1")],
           headers={"request": {"set": {"X-Env": "prod"}, "add": {"x-route": "default"},
                                "remove": ["x-debug"]},
                    "response": {"remove": ["server"]}}),
    ]},
    {"name": "wild", "hosts": ["*.example.com"], "http": [to("wild")]},
    {"name": "wild-deeper", "hosts": ["*.api.example.com"], "http": [to("wild-deeper")]},
    {"name": "ip", "hosts": ["10.0.0.7", "[fd00::7]"], "http": [to("ip")]},
    {"name": "catch-all", "hosts": ["*"], "http": [to("only", {"uri": {"prefix": "/only"}})]},
]

TABLE = compile_virtual_services(CONFIG)

J = {b"end-user": b"jason"}

# authority, method, target, headers (lower-case names), the route's name (None: no match)
REQUESTS = [
    # ---- virtual hosts ----
    (b"reviews", b"GET", b"/", {}, "default"),
    (b"REVIEWS:9080", b"GET", b"/", {}, "default"),
    (b"reviews.prod.svc.cluster.local", b"GET", b"/", {}, "default"),
    (b"api.example.com", b"GET", b"/", {}, "wild"),
    (b"x.y.example.com:8443", b"GET", b"/", {}, "wild"),
    (b"v1.api.example.com", b"GET", b"/", {}, "wild-deeper"),
    (b"a.b.api.example.com", b"GET", b"/", {}, "wild-deeper"),
    (b"example.com", b"GET", b"/only/x", {}, "only"),          # *.example.com needs a label
    (b".example.com", b"GET", b"/only", {}, "only"),
    (b"example.com.evil", b"GET", b"/only", {}, "only"),
    (b"10.0.0.7:80", b"GET", b"/", {}, "ip"),
    (b"[fd00::7]:8080", b"GET", b"/", {}, "ip"),
    (b"[FD00::7]", b"GET", b"/", {}, "ip"),
    (b"unknown", b"GET", b"/only", {}, "only"),
    (b"unknown", b"GET", b"/", {}, None),                      # host matched, no route
    (b"", b"GET", b"/onlyx", {}, "only"),
    # absolute-form: its authority wins, its path is matched
    (b"ignored", b"GET", b"http://reviews:9080/api/v1/x?y=1", {}, "api-v1"),
    (b"reviews", b"GET", b"http://v1.api.example.com", {}, "wild-deeper"),
    (b"reviews", b"GET", b"http://v1.api.example.com?q", {}, "wild-deeper"),
    # ---- first match wins ----
    (b"reviews", b"GET", b"/api/v1/users", J, "jason"),
    (b"reviews", b"GET", b"/", {b"end-user": b"Jason"}, "default"),
    # ---- uri ----
    (b"reviews", b"GET", b"/api/v1/users", {}, "api-v1"),
    (b"reviews", b"GET", b"/api/v1/", {}, "api-v1"),
    (b"reviews", b"GET", b"/api/v1", {}, "default"),
    (b"reviews", b"GET", b"/API/v1/", {}, "default"),
    (b"reviews", b"GET", b"/legacy", {}, "api-v1"),
    (b"reviews", b"GET", b"/legacy?x=1", {}, "api-v1"),
    (b"reviews", b"GET", b"/legacy/", {}, "default"),
    (b"reviews", b"GET", b"/items/42", {}, "regex"),
    (b"reviews", b"GET", b"/items/42?page=2", {}, "regex"),
    (b"reviews", b"GET", b"/items/42/x", {}, "default"),       # regex is a full match
    (b"reviews", b"GET", b"/items/", {}, "default"),
    (b"reviews", b"GET", b"/caseless/x", {}, "caseless"),
    (b"reviews", b"GET", b"/CASELESS", {}, "caseless"),
    (b"reviews", b"GET", b"/caseles", {}, "default"),
    (b"reviews", b"GET", b"/Rx/a", {}, "caseless-regex"),
    (b"reviews", b"GET", b"/rx/a", {}, "default"),             # ignoreUriCase: not regexes
    (b"reviews", b"GET", b"/a%2Fb", {}, "default"),            # no decoding
    # ---- method ----
    (b"reviews", b"POST", b"/items/42", {}, "post-put"),
    (b"reviews", b"PUT", b"/", {}, "post-put"),
    (b"reviews", b"PUTX", b"/", {}, "default"),
    (b"reviews", b"post", b"/", {}, "default"),
    # ---- query parameters ----
    (b"reviews", b"GET", b"/q?debug=1&trace", {}, "query"),
    (b"reviews", b"GET", b"/q?trace=&debug=1", {}, "query"),
    (b"reviews", b"GET", b"/q?debug=1&debug=2&trace=x", {}, "query"),  # the first value
    (b"reviews", b"GET", b"/q?debug=2&debug=1&trace=x", {}, "default"),
    (b"reviews", b"GET", b"/q?debug=1", {}, "default"),
    (b"reviews", b"GET", b"/q?debug=1&tracer", {}, "default"),
    (b"reviews", b"GET", b"/q?debug=%31&trace", {}, "default"),       # no decoding
    (b"reviews", b"GET", b"/?v=abcab", {}, "query-regex"),
    (b"reviews", b"GET", b"/?v=abd", {}, "default"),
    (b"reviews", b"GET", b"/?v", {}, "default"),
    # ---- headers ----
    (b"reviews", b"GET", b"/", {b"x-tenant": b"acme-7"}, "hdr-prefix"),
    (b"reviews", b"GET", b"/", {b"x-tenant": b"acme"}, "default"),
    (b"reviews", b"GET", b"/", {b"x-version": b"v12"}, "hdr-regex"),
    (b"reviews", b"GET", b"/", {b"x-version": b"v12a"}, "default"),
    (b"reviews", b"GET", b"/", {b"x-canary": b""}, "hdr-present"),
    (b"reviews", b"GET", b"/", {b"x-a": b"1", b"x-b": b"2"}, "hdr-and"),
    (b"reviews", b"GET", b"/", {b"x-a": b"1"}, "default"),
    (b"reviews", b"GET", b"/shop", {}, "not-bot"),
    (b"reviews", b"GET", b"/shop", {b"user-agent": b"Mozilla/5.0"}, "not-bot"),
    (b"reviews", b"GET", b"/shop", {b"user-agent": b"Googlebot/2.1"}, "default"),
    (b"reviews", b"GET", b"/public", {}, "not-internal"),
    (b"reviews", b"GET", b"/public", {b"x-internal": b""}, "default"),
    # ---- authority condition (as received, with its port) ----
    (b"reviews:9080", b"GET", b"/by-port", {}, "authority"),
    (b"reviews", b"GET", b"/by-port", {}, "default"),
    # ---- actions ----
    (b"reviews", b"GET", b"/split/x", {}, "weighted"),
    (b"reviews", b"GET", b"/old", {}, "redirect"),
    (b"reviews", b"GET", b"/teapot", {}, "teapot"),
]


@pytest.mark.parametrize("authority,method,target,headers,want", REQUESTS,
                         ids=[f"{r[0].decode()} {r[1].decode()} {r[2].decode()} {r[3]}"
                              for r in REQUESTS])
def test_select(authority, method, target, headers, want):
    route = TABLE.select(authority, method, target, headers)
    assert (route.name if route else None) == want


def test_no_virtual_host_is_none():
    table = compile_virtual_services([{"hosts": ["a.example"], "http": [to("a")]}])
    assert table.select(b"b.example", b"GET", b"/") is None
    assert table.virtual_host(b"b.example") is None
    assert table.select(b"A.EXAMPLE:1", b"GET", b"/").name == "a"
    assert compile_virtual_services([]).select(b"a", b"GET", b"/") is None
    assert compile_virtual_services(None).select(b"a", b"GET", b"/") is None


def test_virtual_host_lookup_is_cached_and_bounded():
    table = compile_virtual_services(CONFIG)
    vh = table.virtual_host(b"Reviews:80")
    assert vh.name == "reviews" and table.virtual_host(b"Reviews:80") is vh
    for i in range(HttpRouteTable.CACHE_SIZE + 10):
        table.virtual_host(b"h%d.example.com" % i)
    assert len(table._cache) <= HttpRouteTable.CACHE_SIZE
    assert table.virtual_host(b"reviews").name == "reviews"


def test_header_names_say_what_to_extract():
    vh = TABLE.virtual_host(b"reviews")
    assert vh.header_names == {b"end-user", b"x-tenant", b"x-version", b"x-canary", b"x-a",
                               b"x-b", b"user-agent", b"x-internal"}
    assert TABLE.virtual_host(b"x.example.com").header_names == frozenset()
    # the table's: every virtual host's, so a caller builds a header mapping only if needed
    assert TABLE.header_names >= vh.header_names and TABLE.needs_headers is True
    plain = compile_virtual_services([{"hosts": ["h"], "http": [to("a", {"uri": {"prefix": "/"}}),
                                                                 to("b", {"method": {"exact": "GET"}})]}])
    assert plain.header_names == frozenset() and plain.needs_headers is False
    assert compile_virtual_services([]).needs_headers is False
    only_without = compile_virtual_services([{"hosts": ["h"], "http": [to("a", {"withoutHeaders": {"x-a": {}}})]}])
    assert only_without.header_names == {b"x-a"} and only_without.needs_headers is True


def test_routes_lists_every_route_and_block_in_order():
    table = compile_virtual_services([
        {"hosts": ["a"], "http": [to("one", {"uri": {"exact": "/1"}}, {"uri": {"exact": "/2"}}), to("two")]},
        {"hosts": ["b"], "http": [to("three", directResponse={"status": 200})]}])
    assert [(r.name, r.where) for r in table.routes()] == [
        ("one", "virtual_services[0].http[0].match[0]"), ("one", "virtual_services[0].http[0].match[1]"),
        ("two", "virtual_services[0].http[1]"), ("three", "virtual_services[1].http[0]")]
    # resolution slots start empty: the routing table fills clusters, the data path native
    assert all(r.clusters == () and r.native is None for r in table.routes())


def test_route_results_carry_their_match_block():
    vh = TABLE.virtual_host(b"reviews")
    by_prefix = vh.select(b"GET", b"/api/v1/x")
    by_exact = vh.select(b"GET", b"/legacy")
    assert by_prefix.name == by_exact.name == "api-v1"
    assert by_prefix.where == "virtual_services[0].http[1].match[0]"
    assert by_exact.where == "virtual_services[0].http[1].match[1]"
    assert by_prefix.virtual_service == "reviews"
    # rewrite.uri replaces what the block matched
    assert (by_prefix.rewrite_uri, by_prefix.rewrite_prefix_len) == (b"/v1/", len(b"/api/v1/"))
    assert (by_exact.rewrite_uri, by_exact.rewrite_prefix_len) == (b"/v1/", None)
    assert by_prefix.destinations is by_exact.destinations


# ---- actions ----------------------------------------------------------------


def test_weighted_pick_is_exact_and_deterministic():
    route = TABLE.select(b"reviews", b"GET", b"/split")
    assert route.kind == ROUTE
    assert [(d.host, d.weight) for d in route.destinations] == [("heavy", 80), ("light", 20)]
    assert Counter(route.pick(r).host for r in range(100)) == {"heavy": 80, "light": 20}
    assert Counter(route.pick(r).host for r in range(1000)) == {"heavy": 800, "light": 200}
    assert [route.pick(r).host for r in (0, 79, 80, 99, 100, 10**20 + 85)] == \
        ["heavy", "heavy", "light", "light", "heavy", "light"]


def test_weights_like_istio():
    def pick_all(route_doc):
        table = compile_virtual_services([{"hosts": ["h"], "http": [{"route": route_doc}]}])
        route = table.select(b"h", b"GET", b"/")
        return Counter(route.pick(r).host for r in range(100))

    assert pick_all([dest("one")]) == {"one": 100}                   # alone: 100
    assert pick_all([dest("one", 100)]) == {"one": 100}
    assert pick_all([dest("a", 100), dest("b")]) == {"a": 100}        # missing: 0
    assert pick_all([dest("a", 0), dest("b", 100)]) == {"b": 100}
    assert pick_all([dest("a", 33), dest("b", 33), dest("c", 34)]) == {"a": 33, "b": 33, "c": 34}


def test_destination_fields():
    route = TABLE.select(b"reviews", b"GET", b"/api/v1/")
    (d,) = route.destinations
    assert (d.host, d.subset, d.port, d.weight) == ("reviews", "v1", 9080, 100)
    assert route.pick(12345) is d
    assert d.where == "virtual_services[0].http[1].route[0]"


def test_cluster_for_follows_pick():
    table = compile_virtual_services([{"hosts": ["h"], "http": [{"route": [dest("a", 30), dest("b", 70)]}]}])
    (route,) = table.routes()
    route.clusters = tuple(route.pick(r).host.upper() for r in range(rh.TOTAL_WEIGHT))
    assert all(route.cluster_for(r) == route.pick(r).host.upper() for r in range(1000))


def test_rewrite_without_uri_match_replaces_slash():
    table = compile_virtual_services([{"hosts": ["h"], "http": [
        {"match": [{"headers": {"x": {}}}], "rewrite": {"uri": "/v2/"}, "route": [dest("c")]},
        {"rewrite": {"authority": "Svc.Internal:8080"}, "route": [dest("c")]}]}])
    r1 = table.select(b"h", b"GET", b"/x", {b"x": b""})
    assert (r1.rewrite_uri, r1.rewrite_prefix_len, r1.rewrite_authority) == (b"/v2/", 1, None)
    r2 = table.select(b"h", b"GET", b"/x")
    assert (r2.rewrite_uri, r2.rewrite_prefix_len, r2.rewrite_authority) == \
        (None, None, b"Svc.Internal:8080")


def redirect_route(**redirect):
    table = compile_virtual_services([{"hosts": ["*"], "http": [{"redirect": redirect}]}])
    return table.select(b"a", b"GET", b"/")


# redirect config, request scheme, authority, target, Location, code
REDIRECTS = [
    ({"uri": "/new"}, b"http", b"a.example", b"/old?q=1", b"http://a.example/new?q=1", 301),
    ({"uri": "/new?x=2"}, b"http", b"a.example", b"/old?q=1", b"http://a.example/new?x=2", 301),
    ({"authority": "b.example"}, b"http", b"a.example:8080", b"/p", b"http://b.example/p", 301),
    ({"authority": "b.example:81"}, b"http", b"a.example", b"/p", b"http://b.example:81/p", 301),
    ({"port": 8443}, b"https", b"a.example:443", b"/p", b"https://a.example:8443/p", 301),
    ({"scheme": "https", "redirectCode": 308}, b"http", b"a.example", b"/p?q",
     b"https://a.example/p?q", 308),
    ({"scheme": "HTTPS"}, b"http", b"a.example:80", b"/", b"https://a.example/", 301),
    ({"scheme": "https"}, b"http", b"a.example:8080", b"/", b"https://a.example:8080/", 301),
    ({"scheme": "https", "port": 443}, b"http", b"a.example:8080", b"/", b"https://a.example/", 301),
    ({"port": 9090}, b"http", b"[::1]:80", b"/x", b"http://[::1]:9090/x", 301),
    ({"uri": "/", "authority": "c", "port": 1, "scheme": "http", "redirectCode": 302}, b"https",
     b"a", b"/deep/path?q", b"http://c:1/?q", 302),
]


@pytest.mark.parametrize("redirect,scheme,authority,target,location,code", REDIRECTS)
def test_redirect_location(redirect, scheme, authority, target, location, code):
    route = redirect_route(**redirect)
    assert route.kind == REDIRECT
    assert route.redirect.code == code
    assert route.redirect.location(scheme, authority, target) == location


def test_direct_response():
    teapot = TABLE.select(b"reviews", b"GET", b"/teapot")
    assert (teapot.kind, teapot.direct_status, teapot.direct_body) == \
        (DIRECT_RESPONSE, 418, b"short and stout")
    raw = bytes(range(256))
    table = compile_virtual_services([{"hosts": ["h"], "http": [
        {"directResponse": {"status": 503, "body": {"bytes": base64.b64encode(raw).decode()}}},
    ]}])
    r = table.select(b"h", b"GET", b"/")
    assert (r.direct_status, r.direct_body) == (503, raw)
    table = compile_virtual_services([{"hosts": ["h"], "http": [{"directResponse": {"status": 204}}]}])
    assert table.select(b"h", b"GET", b"/").direct_body == b""


def test_header_operations():
    route = TABLE.select(b"reviews", b"GET", b"/")
    assert route.request_headers.set == ((b"X-Env", b"prod"),)
    assert route.request_headers.add == ((b"x-route", b"default"),)
    assert route.request_headers.remove == (b"x-debug",)
    assert route.response_headers.remove == (b"server",)
    assert not route.response_headers.set and not route.response_headers.add
    other = TABLE.select(b"reviews", b"GET", b"/teapot")
    assert other.request_headers.empty and other.response_headers.empty


def test_kubernetes_object_form():
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "ratings", "namespace": "prod"},
           "spec": {"hosts": ["ratings"], "gateways": ["mesh"], "exportTo": ["."],
                    "http": [{"route": [dest("ratings")]}]}}
    table = compile_virtual_services([doc])
    route = table.select(b"ratings", b"GET", b"/")
    assert (route.virtual_service, route.where) == ("ratings", "virtual_services[0].spec.http[0]")


def test_configured_strings_never_become_code():
    # select() is generated code: values reach it as constants, not as source
    evil = '") or True or ("'
    table = compile_virtual_services([{"hosts": ["h"], "http": [
        to("evil", {"uri": {"exact": evil}, "headers": {"x": {"prefix": evil}},
                    "queryParams": {evil: {"exact": evil}}}),
        to("default")]}])
    assert table.select(b"h", b"GET", b"/").name == "default"
    hit = evil.encode()
    assert table.select(b"h", b"GET", hit + b"?" + hit + b"=" + hit, {b"x": hit + b"!"}).name == "evil"
    assert "or True" not in table.virtual_host(b"h").source


def test_no_http_routes_means_no_route():
    table = compile_virtual_services([{"hosts": ["h"]}])
    assert table.virtual_host(b"h") is not None
    assert table.select(b"h", b"GET", b"/") is None


def test_config_is_not_modified():
    before = copy.deepcopy(CONFIG)
    compile_virtual_services(CONFIG)
    assert CONFIG == before


# ---- hand-over to the C rewriter ---------------------------------------------


def test_max_set_matches_the_c_rewriter():
    rewrite = pytest.importorskip("fastproxy._native.rewrite")
    assert rh.MAX_SET_HEADERS == rewrite.MAX_SET


def native_ops(route):
    from fastproxy._native.rewrite import RewriteOps
    h = route.request_headers
    return RewriteOps(h.set, h.add, h.remove, path=route.rewrite_uri,
                      path_prefix_len=route.rewrite_prefix_len,
                      authority=route.rewrite_authority)


def test_every_compiled_route_is_accepted_by_the_c_rewriter():
    pytest.importorskip("fastproxy._native.rewrite")
    from fastproxy._native.rewrite import RewriteOps
    for vh in TABLE.virtual_hosts:
        for route in vh.routes:
            native_ops(route)
            h = route.response_headers
            RewriteOps(h.set, h.add, h.remove)


# request head, the route's target for select, what the upstream must receive
FORWARDED = [
    (b"GET /api/v1/users?id=7 HTTP/1.1\r\nHost: reviews\r\nX-Debug: 1\r\n\r\n",
     b"GET /v1/users?id=7 HTTP/1.1\r\nHost: reviews\r\nX-Debug: 1\r\n\r\n"),
    (b"GET /legacy?x HTTP/1.1\r\nHost: reviews\r\n\r\n",
     b"GET /v1/?x HTTP/1.1\r\nHost: reviews\r\n\r\n"),
    (b"GET /x HTTP/1.1\r\nhost: reviews\r\nx-env: dev\r\nX-Debug: 1\r\nAccept: */*\r\n\r\n",
     b"GET /x HTTP/1.1\r\nhost: reviews\r\nx-env: prod\r\nAccept: */*\r\nx-route: default\r\n\r\n"),
]


BIG = b"c" * 9000  # over the wrapper's first output buffer: the grow-and-retry path
FORWARDED.append((b"GET /api/v1/ HTTP/1.1\r\nHost: reviews\r\nCookie: " + BIG + b"\r\n\r\n",
                  b"GET /v1/ HTTP/1.1\r\nHost: reviews\r\nCookie: " + BIG + b"\r\n\r\n"))


@pytest.mark.parametrize("head,forwarded", FORWARDED)
def test_routes_drive_the_c_rewriter(head, forwarded):
    rewrite = pytest.importorskip("fastproxy._native.rewrite")
    target = head.split(b" ", 2)[1]
    route = TABLE.select(b"reviews", b"GET", target)
    assert rewrite.rewrite_request(head, native_ops(route)) == forwarded


def test_the_c_rewriter_refuses_what_routing_refuses():
    rewrite = pytest.importorskip("fastproxy._native.rewrite")
    for name in sorted(rh.PROXY_OWNED_HEADERS):
        for ops in ({"set": [(name, "x")]}, {"add": [(name.upper(), "x")]}, {"remove": [name]}):
            with pytest.raises(ValueError, match="owned by the proxy"):
                rewrite.RewriteOps(**ops)
    for value in ("a\r\nb: c", " a", "a\t", "a\x00"):
        with pytest.raises(ValueError):
            rewrite.RewriteOps(add=[("x-a", value)])
    with pytest.raises(ValueError, match="set twice"):
        rewrite.RewriteOps(set=[("X-A", "1"), ("x-a", "2")])
    with pytest.raises(ValueError):
        rewrite.RewriteOps(path="/a?b")
    with pytest.raises(ValueError):
        rewrite.RewriteOps(authority="a/b")


# ---- invalid configs --------------------------------------------------------


def one(route, hosts=("h",)):
    return [{"hosts": list(hosts), "http": [route]}]


R = "virtual_services[0].http[0]"

# config, the path the error names, a phrase of its message
INVALID = [
    ({"hosts": ["h"]}, "virtual_services", "expected a list"),
    ([["h"]], "virtual_services[0]", "expected a mapping"),
    ([{"http": []}], "virtual_services[0].hosts", "required"),
    ([{"hosts": []}], "virtual_services[0].hosts", "at least one"),
    ([{"hosts": "h"}], "virtual_services[0].hosts", "expected a list"),
    ([{"hosts": ["foo*.com"]}], "virtual_services[0].hosts[0]", "invalid host"),
    ([{"hosts": ["*.*.com"]}], "virtual_services[0].hosts[0]", "invalid host"),
    ([{"hosts": ["h:80"]}], "virtual_services[0].hosts[0]", "no port"),
    ([{"hosts": [""]}], "virtual_services[0].hosts[0]", "non-empty"),
    ([{"hosts": ["a", "A"]}], "virtual_services[0].hosts[1]", "already used"),
    ([{"hosts": ["a"]}, {"hosts": ["b", "a"]}], "virtual_services[1].hosts[1]",
     "already used by virtual_services[0].hosts[0]"),
    ([{"name": "x", "hosts": ["a"]}, {"name": "x", "hosts": ["b"]}], "virtual_services[1].name",
     "duplicate"),
    ([{"hosts": ["h"], "tcp": []}], "virtual_services[0].tcp", "not supported"),
    ([{"hosts": ["h"], "gateways": ["ingress"]}], "virtual_services[0].gateways", "mesh"),
    ([{"hosts": ["h"], "colour": 1}], "virtual_services[0].colour", "unknown field"),
    ([{"kind": "DestinationRule", "spec": {}}], "virtual_services[0].kind", "VirtualService"),
    ([{"spec": {"name": "x", "hosts": ["h"]}}], "virtual_services[0].spec.name", "metadata.name"),
    ([{"spec": {"http": []}}], "virtual_services[0].spec.hosts", "required"),
    ([{"hosts": ["h"], "http": {}}], "virtual_services[0].http", "expected a list"),
    # ---- actions ----
    (one({}), R, "exactly one of route, redirect, directResponse"),
    (one({"route": [dest("c")], "redirect": {"uri": "/"}}), R, "got route, redirect"),
    (one({"route": [dest("c")], "mirror": {"host": "c"}}), f"{R}.mirror", "not supported"),
    (one({"route": [dest("c")], "corsPolicy": {}}), f"{R}.corsPolicy", "not supported"),
    (one({"route": [dest("c")], "delegate": {"name": "x"}}), f"{R}.delegate", "not supported"),
    (one({"route": [dest("c")], "timeout": 5}), f"{R}.timeout", "expected a duration"),
    (one({"route": [dest("c")], "retries": {}}), f"{R}.retries.attempts", "required"),
    (one({"redirect": {"uri": "/"}, "timeout": "1s"}), f"{R}.timeout", "cannot be used with redirect"),
    (one({"directResponse": {"status": 200}, "retries": {"attempts": 1}}), f"{R}.retries",
     "cannot be used with directResponse"),
    (one({"route": [dest("c")], "color": "red"}), f"{R}.color", "unknown field"),
    (one({"route": []}), f"{R}.route", "at least one"),
    (one({"route": [dest("a", 50), dest("b", 40)]}), f"{R}.route", "sum to 100, got 90"),
    (one({"route": [dest("a", 50)]}), f"{R}.route", "sum to 100, got 50"),
    (one({"route": [dest("a"), dest("b")]}), f"{R}.route", "got 0"),
    (one({"route": [dest("a", 101)]}), f"{R}.route[0].weight", "0..100"),
    (one({"route": [dest("a", True)]}), f"{R}.route[0].weight", "integer"),
    (one({"route": [dest("a", "50")]}), f"{R}.route[0].weight", "integer"),
    (one({"route": [{"weight": 100}]}), f"{R}.route[0].destination", "required"),
    (one({"route": [{"destination": {"subset": "v1"}}]}), f"{R}.route[0].destination.host",
     "required"),
    (one({"route": [dest("*.svc")]}), f"{R}.route[0].destination.host", "no wildcard"),
    (one({"route": [dest("svc", port=70000)]}), f"{R}.route[0].destination.port.number",
     "1..65535"),
    (one({"route": [{"destination": {"host": "c", "port": 80}}]}),
     f"{R}.route[0].destination.port", "expected a mapping"),
    (one({"route": [{**dest("c"), "headers": {}}]}), f"{R}.route[0].headers", "not supported"),
    (one({"redirect": {"uri": "/"}, "rewrite": {"uri": "/"}}), f"{R}.rewrite",
     "cannot be used with redirect"),
    (one({"route": [dest("c")], "rewrite": {}}), f"{R}.rewrite", "uri or authority"),
    (one({"route": [dest("c")], "rewrite": {"uri": "/a?b"}}), f"{R}.rewrite.uri", "'?'"),
    (one({"route": [dest("c")], "rewrite": {"uri": "/a b"}}), f"{R}.rewrite.uri", "space"),
    (one({"route": [dest("c")], "rewrite": {"authority": "a/b"}}), f"{R}.rewrite.authority",
     "invalid authority"),
    (one({"route": [dest("c")], "rewrite": {"uriRegexRewrite": {}}}),
     f"{R}.rewrite.uriRegexRewrite", "not supported"),
    (one({"redirect": {"redirectCode": 305}}), f"{R}.redirect.redirectCode", "expected one of"),
    (one({"redirect": {"redirectCode": 200}}), f"{R}.redirect.redirectCode", "300..399"),
    (one({"redirect": {"uri": "new"}}), f"{R}.redirect.uri", "starting with '/'"),
    (one({"redirect": {"scheme": "ht tp"}}), f"{R}.redirect.scheme", "invalid scheme"),
    (one({"redirect": {"port": 0}}), f"{R}.redirect.port", "1..65535"),
    (one({"redirect": {"derivePort": "FROM_REQUEST_PORT"}}), f"{R}.redirect.derivePort",
     "not supported"),
    (one({"directResponse": {}}), f"{R}.directResponse.status", "required"),
    (one({"directResponse": {"status": 700}}), f"{R}.directResponse.status", "200..599"),
    (one({"directResponse": {"status": 200, "body": {"bytes": "!!"}}}),
     f"{R}.directResponse.body.bytes", "base64"),
    (one({"directResponse": {"status": 200, "body": {"string": "a", "bytes": "YQ=="}}}),
     f"{R}.directResponse.body", "exactly one"),
    (one({"directResponse": {"status": 200, "body": {"string": "x" * 4097}}}),
     f"{R}.directResponse.body", "4096"),
    # ---- header operations ----
    (one({"route": [dest("c")], "headers": {"request": {"set": {"Content-Length": "0"}}}}),
     f"{R}.headers.request.set.Content-Length", "managed by the proxy"),
    (one({"route": [dest("c")], "headers": {"response": {"add": {"Transfer-Encoding": "x"}}}}),
     f"{R}.headers.response.add.Transfer-Encoding", "managed by the proxy"),
    (one({"route": [dest("c")], "headers": {"request": {"remove": ["Host"]}}}),
     f"{R}.headers.request.remove[0]", "rewrite.authority"),
    (one({"route": [dest("c")], "headers": {"request": {"set": {"x-a": "1\r\nx-b: 2"}}}}),
     f"{R}.headers.request.set.x-a", "invalid header value"),
    (one({"route": [dest("c")], "headers": {"request": {"set": {"x-a": " padded"}}}}),
     f"{R}.headers.request.set.x-a", "whitespace"),
    (one({"route": [dest("c")], "headers": {"request": {"set": {"x-a": 1}}}}),
     f"{R}.headers.request.set.x-a", "expected a string"),
    (one({"route": [dest("c")], "headers": {"request": {"set": {"X-A": "1", "x-a": "2"}}}}),
     f"{R}.headers.request.set.x-a", "set twice"),
    (one({"route": [dest("c")], "headers": {"request": {"add": {"x a": "1"}}}}),
     f"{R}.headers.request.add.x a", "invalid header name"),
    (one({"route": [dest("c")], "headers": {"request": {"append": {}}}}),
     f"{R}.headers.request.append", "unknown field"),
    (one({"route": [dest("c")], "headers": {"request": {
        "set": {f"x-{i}": "v" for i in range(65)}}}}), f"{R}.headers.request.set", "more than 64"),
    (one({"route": [dest("c")], "headers": {"both": {}}}), f"{R}.headers.both", "unknown field"),
    # ---- match ----
    (one({"route": [dest("c")], "match": {}}), f"{R}.match", "expected a list"),
    (one({"route": [dest("c")], "match": [{"uri": {}}]}), f"{R}.match[0].uri",
     "one of exact, prefix, regex is required"),
    (one({"route": [dest("c")], "match": [{"uri": {"exact": "/", "prefix": "/"}}]}),
     f"{R}.match[0].uri", "only one"),
    (one({"route": [dest("c")], "match": [{"uri": {"suffix": "/"}}]}), f"{R}.match[0].uri.suffix",
     "unknown field"),
    (one({"route": [dest("c")], "match": [{"uri": {"regex": "(["}}]}), f"{R}.match[0].uri.regex",
     "invalid regex"),
    (one({"route": [dest("c")], "match": [{"uri": {"exact": 1}}]}), f"{R}.match[0].uri.exact",
     "expected a string"),
    (one({"route": [dest("c")], "match": [{"method": {}}]}), f"{R}.match[0].method",
     "is required"),
    (one({"route": [dest("c")], "match": [{}, {"headers": {"x-a": {"regex": "*"}}}]}),
     f"{R}.match[1].headers.x-a.regex", "invalid regex"),
    (one({"route": [dest("c")], "match": [{"headers": {"x a": {}}}]}),
     f"{R}.match[0].headers.x a", "invalid header name"),
    (one({"route": [dest("c")], "match": [{"withoutHeaders": {"x": {"exact": 2}}}]}),
     f"{R}.match[0].withoutHeaders.x.exact", "expected a string"),
    (one({"route": [dest("c")], "match": [{"queryParams": {"q": {"prefix": "a"}}}]}),
     f"{R}.match[0].queryParams.q.prefix", "unknown field"),
    (one({"route": [dest("c")], "match": [{"ignoreUriCase": "yes"}]}),
     f"{R}.match[0].ignoreUriCase", "boolean"),
    (one({"route": [dest("c")], "match": [{"port": 80}]}), f"{R}.match[0].port", "not supported"),
    (one({"route": [dest("c")], "match": [{"sourceLabels": {}}]}), f"{R}.match[0].sourceLabels",
     "not supported"),
    (one({"route": [dest("c")], "match": [{"colour": 1}]}), f"{R}.match[0].colour",
     "unknown field"),
]


@pytest.mark.parametrize("config,path,phrase", INVALID, ids=[f"{c[1]} {c[2]}" for c in INVALID])
def test_invalid_config_names_the_field(config, path, phrase):
    with pytest.raises(ConfigError) as e:
        compile_virtual_services(config)
    assert e.value.path == path, str(e.value)
    assert phrase in e.value.message, str(e.value)
    assert isinstance(e.value, ValueError)
