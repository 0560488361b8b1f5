"""`fastproxy explain`: golden answers, and the checks that keep its rule
interpreter honest.

explain does not restate the interception policy: it runs a connection's
first packet through the very rules rules_iptables builds. What could go
wrong is the interpreter, so besides the goldens:
  - every rule the builder emits, for many flag combinations, must parse
    (the parser refuses what it does not know);
  - for every combination and a grid of packets, the interpreter's verdict
    must equal a direct statement of the policy documented in
    rules_iptables (the oracle below, written from its docstring);
  - the deciding rule's tag must exist in the nft script too, so the answer
    is valid for both backends.

Golden files under golden/explain/: NAME.txt (text) and NAME.json (-o json).
Regenerate with FASTPROXY_UPDATE_GOLDEN=1, then read every diff by eye.
"""
import argparse
import ipaddress
import itertools
import json
import os
import shlex
from pathlib import Path

import pytest
import yaml

from fastproxy import explain
from fastproxy.interception import flags, rules_iptables
from fastproxy.interception.flags import ALL, DNS_CAPTURE_PORT, PROXY_OWN_PORTS

GOLDEN = Path(__file__).parent / "golden" / "explain"
UPDATE = os.environ.get("FASTPROXY_UPDATE_GOLDEN") == "1"

MESH = {
    "settings": {"outbound_traffic_policy": "REGISTRY_ONLY"},
    "listeners": [
        {"name": "virtualOutbound", "address": "0.0.0.0:15001", "additional_addresses": ["[::]:15001"],
         "use_original_dst": True, "traffic_direction": "OUTBOUND"},
        {"name": "virtualInbound", "address": "0.0.0.0:15006", "additional_addresses": ["[::]:15006"],
         "use_original_dst": True, "traffic_direction": "INBOUND"},
        {"name": "reviews_9080", "address": "10.96.0.20:9080", "bind_to_port": False,
         "tcp_proxy": {"cluster": "reviews"}},
        {"name": "redis_local", "address": "127.0.0.1:16379", "tcp_proxy": {"cluster": "redis"}},
    ],
    "clusters": [
        {"name": "reviews", "endpoints": [{"address": "10.0.1.5:9080", "weight": 3}, {"address": "10.0.1.6:9080"}]},
        {"name": "redis", "endpoints": [{"address": "10.0.2.9:6379"}], "connect_timeout_ms": 500},
    ],
}
HTTP_MESH = {
    "listeners": [
        {"name": "virtualOutbound", "address": "0.0.0.0:15001", "use_original_dst": True,
         "traffic_direction": "OUTBOUND"},
        {"name": "virtualInbound", "address": "0.0.0.0:15006", "use_original_dst": True,
         "traffic_direction": "INBOUND"},
        {"name": "web", "address": "127.0.0.1:8000", "http": {"cluster": "fallback"}},
        {"name": "api", "address": "127.0.0.1:8001", "http": None},
        {"name": "ratings_9080", "address": "10.96.0.40:9080", "bind_to_port": False,
         "tcp_proxy": {"cluster": "ratings"}},
    ],
    "clusters": [
        {"name": "reviews-v1", "endpoints": [{"address": "10.0.1.5:9080"}]},
        {"name": "reviews-v2", "endpoints": [{"address": "10.0.1.6:9080", "weight": 2},
                                             {"address": "10.0.1.7:9080"}]},
        {"name": "ratings", "endpoints": [{"address": "10.0.2.5:9080"}], "connect_timeout_ms": 750},
        {"name": "fallback", "endpoints": [{"address": "10.0.9.9:8080"}]},
    ],
    "virtual_services": [
        {"name": "reviews", "hosts": ["reviews.local"],
         "http": [
             {"name": "canary", "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
              "route": [{"destination": {"host": "reviews-v2"}}],
              "headers": {"request": {"set": {"x-route": "canary"}}}},
             {"name": "split", "match": [{"uri": {"prefix": "/api"}}], "rewrite": {"uri": "/v1"},
              "route": [{"destination": {"host": "reviews-v2"}, "weight": 80},
                        {"destination": {"host": "reviews-v1"}, "weight": 20}]},
             {"name": "moved", "match": [{"uri": {"exact": "/old"}}],
              "redirect": {"uri": "/new", "redirectCode": 301}},
             {"name": "maintenance", "match": [{"uri": {"exact": "/maintenance"}, "method": {"exact": "POST"}}],
              "directResponse": {"status": 503, "body": {"string": "down for maintenance"}}},
             {"name": "default", "match": [{"uri": {"prefix": "/"}, "method": {"exact": "GET"}}],
              "route": [{"destination": {"host": "reviews-v1"}}]},
         ]},
        {"name": "shop", "hosts": ["*.example.com"],
         "http": [{"route": [{"destination": {"host": "ratings"}}], "rewrite": {"authority": "ratings.internal"}}]},
    ],
}
CONFIGS = {"mesh.yaml": MESH, "http.yaml": HTTP_MESH}
REGISTRY_ONLY = {"FASTPROXY_OUTBOUND_TRAFFIC_POLICY": "REGISTRY_ONLY"}

# name -> (explain command line, config file name or None, environment)
CASES = {
    "outbound-passthrough": ("10.0.0.7:8080", None, {}),
    "excluded-port": ("10.0.0.7:3306 --init-flags='-o 3306'", None, {}),
    "excluded-port-from-env": ("10.0.0.7:25", None, {"FASTPROXY_OUTBOUND_PORTS_EXCLUDE": "25,587"}),
    "excluded-cidr": ("10.96.0.10:443 --init-flags='-x 10.96.0.0/16'", None, {}),
    "outbound-cidrs-miss": ("192.168.5.5:80 --init-flags='-i 10.0.0.0/8'", None, {}),
    "excluded-interface": ("10.0.0.7:80 --iface eth9 --init-flags='-c eth9'", None, {}),
    "proxy-gid": ("10.0.0.7:8080 --gid 1337", None, {}),
    "proxy-to-own-pod": ("10.0.0.7:8080 --uid 1337 --iface lo", None, {}),
    "inbound-passthrough-source": ("10.0.0.7:8080 --src 127.0.0.6 --uid 1337 --iface lo", None, {}),
    "inbound-captured": ("10.0.0.7:8080 --direction inbound", None, {}),
    "inbound-excluded-port": ("10.0.0.7:22 --direction inbound --init-flags='-d 22'", None, {}),
    "inbound-ports-include-miss": ("10.0.0.7:9090 --direction inbound --init-flags='-b 8080'", None, {}),
    "inbound-disabled": ("10.0.0.7:8080 --direction inbound --init-flags=\"-b ''\"", None, {}),
    "inbound-admin-port": ("10.0.0.7:15000 --direction inbound", None, {}),
    "inbound-health-port": ("10.0.0.7:15021 --direction inbound", None, {}),
    "kube-virt-interface": ("10.0.0.9:80 --direction inbound --iface vm3 --init-flags='-k vm+'", None, {}),
    "tproxy-mode-mismatch": ("10.0.0.7:8080 --direction inbound --init-flags='-m TPROXY'", None, {}),
    "tproxy-inbound": ("10.0.0.7:8080 --direction inbound --src 192.0.2.9", None,
                       {"FASTPROXY_INBOUND_INTERCEPTION_MODE": "TPROXY"}),
    "registry-only-unknown": ("10.1.1.1:80", "mesh.yaml", {}),
    "virtual-listener-hit": ("10.96.0.20:9080", "mesh.yaml", {}),
    "explicit-listener": ("127.0.0.1:16379", "mesh.yaml", {}),
    "loop-own-listener": ("127.0.0.1:15001", None, {}),
    "loop-loopback-included": ("127.0.0.5:15006 --init-flags='-i 127.0.0.0/8'", None, {}),
    "no-listener-on-redirect-port": ("10.0.0.7:8080 --init-flags='-p 16001'", None, {}),
    "opaque-port": ("10.0.0.8:5432", None, {}),
    "ipv6-no-dual-stack": ("[2001:db8::10]:443", None, {}),
    "ipv6-dual-stack": ("[2001:db8::10]:443 --init-flags=--dual-stack", None, {}),
    "ipv6-inbound": ("[2001:db8::7]:8080 --direction inbound", None, {"FASTPROXY_DUAL_STACK": "true"}),
    # --host: step 5, the virtual service route of one HTTP/1 request
    "http-exact-host": ("10.96.0.30:80 --host reviews.local", "http.yaml", {}),
    "http-wildcard-host": ("10.96.0.30:80 --host shop.example.com:8080 --path /cart", "http.yaml", {}),
    "http-header-match": ("127.0.0.1:8000 --host reviews.local --header X-Canary:yes", "http.yaml", {}),
    "http-weighted-split": ("10.96.0.30:80 --host reviews.local --path '/api/items?page=2'", "http.yaml", {}),
    "http-redirect": ("127.0.0.1:8000 --host reviews.local --path '/old?x=1'", "http.yaml", {}),
    "http-direct-response": ("10.96.0.30:80 --host reviews.local --path /maintenance --method POST",
                             "http.yaml", {}),
    "http-no-match-http-cluster": ("127.0.0.1:8000 --host reviews.local --method DELETE", "http.yaml", {}),
    "http-no-match-404": ("127.0.0.1:8001 --host unknown.local", "http.yaml", {}),
    "http-no-match-passthrough": ("10.0.0.7:8080 --host unknown.local", "http.yaml", {}),
    "http-no-match-registry-only": ("10.0.0.7:8080 --host unknown.local", "http.yaml", REGISTRY_ONLY),
    "http-no-match-virtual-listener": ("10.96.0.40:9080 --host unknown.local", "http.yaml", {}),
    "http-match-registry-only": ("10.0.0.7:8080 --host reviews.local", "http.yaml", REGISTRY_ONLY),
    "http-inbound": ("10.0.0.7:8080 --direction inbound --host reviews.local", "http.yaml", {}),
    "http-opaque-port": ("10.0.0.7:3306 --host reviews.local", "http.yaml", {}),
    "http-not-captured": ("10.0.0.7:8080 --host reviews.local --init-flags='-o 8080'", "http.yaml", {}),
}


def parse_args(cmdline: str) -> argparse.Namespace:
    top = argparse.ArgumentParser()
    explain.add_parser(top.add_subparsers(dest="command"))
    return top.parse_args(["explain", *shlex.split(cmdline)])


def answer(name: str, output: str) -> str:
    cmdline, config_name, env = CASES[name]
    args = parse_args(f"{cmdline} -o {output}")
    text = yaml.safe_dump(CONFIGS[config_name]).encode() if config_name else None
    return explain.explain_args(args, env, text, config_name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    got = {"txt": answer(name, "text"), "json": answer(name, "json")}
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for kind, text in got.items():
            (GOLDEN / f"{name}.{kind}").write_text(text)
    for kind, text in got.items():
        path = GOLDEN / f"{name}.{kind}"
        assert path.exists(), f"{path.name} missing; FASTPROXY_UPDATE_GOLDEN=1 writes it"
        assert text == path.read_text(), f"{path.name} differs; FASTPROXY_UPDATE_GOLDEN=1 regenerates"


def test_no_stale_golden_files():
    names = {p.name.rsplit(".", 1)[0] for p in GOLDEN.iterdir()}
    assert names <= set(CASES)
    assert len(CASES) >= 10


def test_json_is_stable_and_complete():
    """Every answer has the same top-level and per-object keys, whatever the path taken."""
    docs = [json.loads(answer(name, "json")) for name in CASES]
    # "http_route" (step 5) is there exactly when --host is given: without it the answer is as before.
    assert all(("http_route" in d) == ("--host" in CASES[name][0]) for name, d in zip(CASES, docs))
    keys = {name: set(d) - {"http_route"} for name, d in zip(CASES, docs)}
    assert len({frozenset(k) for k in keys.values()}) == 1
    http = [d["http_route"] for d in docs if "http_route" in d]
    assert len({frozenset(h) for h in http}) == 1 and len(http) >= 10
    assert len({frozenset(h["request"]) for h in http}) == 1
    assert len({frozenset(h["fallback"]) for h in http if h["fallback"]}) == 1
    assert len({frozenset(d) for h in http for d in h["destinations"]}) == 1
    for kind in ("capture", "route"):
        assert len({frozenset(d[kind]) for d in docs}) == 1, kind
    assert len({frozenset(d["capture"]["decided_by"]) for d in docs}) == 1
    assert len({frozenset(s) for d in docs for s in d["capture"]["path"]}) == 1
    assert len({frozenset(d["listener"]) for d in docs if d["listener"]}) == 1
    assert all(d["schema"] == explain.SCHEMA_VERSION for d in docs)


def test_expected_verdicts():
    """The headline of each case, so a golden regenerated in a hurry cannot hide a wrong answer."""
    want = {
        "outbound-passthrough": (True, 15001, "passthrough"),
        "excluded-port": (False, None, "direct"),
        "excluded-port-from-env": (False, None, "direct"),
        "excluded-cidr": (False, None, "direct"),
        "outbound-cidrs-miss": (False, None, "direct"),
        "excluded-interface": (False, None, "direct"),
        "proxy-gid": (False, None, "direct"),
        "proxy-to-own-pod": (True, 15006, "inbound_passthrough"),
        "inbound-passthrough-source": (False, None, "direct"),
        "inbound-captured": (True, 15006, "inbound_passthrough"),
        "inbound-excluded-port": (False, None, "direct"),
        "inbound-ports-include-miss": (False, None, "direct"),
        "inbound-disabled": (False, None, "direct"),
        "inbound-admin-port": (False, None, "refused"),
        "inbound-health-port": (False, None, "proxy_server"),
        "kube-virt-interface": (True, 15001, "passthrough"),
        "tproxy-mode-mismatch": (True, 15006, "mode_mismatch"),
        "tproxy-inbound": (True, 15006, "inbound_passthrough"),
        "registry-only-unknown": (True, 15001, "blackhole"),
        "virtual-listener-hit": (True, 15001, "cluster"),
        "explicit-listener": (False, None, "cluster"),
        "loop-own-listener": (False, None, "loop"),
        "loop-loopback-included": (True, 15001, "loop"),
        "no-listener-on-redirect-port": (True, 16001, "no_listener"),
        "opaque-port": (True, 15001, "passthrough"),
        "ipv6-no-dual-stack": (False, None, "direct"),
        "ipv6-dual-stack": (True, 15001, "passthrough"),
        "ipv6-inbound": (True, 15006, "inbound_passthrough"),
        "http-exact-host": (True, 15001, "passthrough"),
        "http-wildcard-host": (True, 15001, "passthrough"),
        "http-header-match": (False, None, "http"),
        "http-weighted-split": (True, 15001, "passthrough"),
        "http-redirect": (False, None, "http"),
        "http-direct-response": (True, 15001, "passthrough"),
        "http-no-match-http-cluster": (False, None, "http"),
        "http-no-match-404": (False, None, "http"),
        "http-no-match-passthrough": (True, 15001, "passthrough"),
        "http-no-match-registry-only": (True, 15001, "blackhole"),
        "http-no-match-virtual-listener": (True, 15001, "cluster"),
        "http-match-registry-only": (True, 15001, "blackhole"),
        "http-inbound": (True, 15006, "inbound_passthrough"),
        "http-opaque-port": (True, 15001, "passthrough"),
        "http-not-captured": (False, None, "direct"),
    }
    assert set(want) == set(CASES)
    for name, (captured, port, route) in want.items():
        d = json.loads(answer(name, "json"))
        assert (d["capture"]["captured"], d["capture"]["port"], d["route"]["kind"]) == (captured, port, route), name
    vl = json.loads(answer("virtual-listener-hit", "json"))["route"]
    assert vl["cluster"] == "reviews" and vl["virtual_listener"] == "reviews_9080"
    assert [e["address"] for e in vl["endpoints"]] == ["10.0.1.5:9080", "10.0.1.6:9080"]
    assert json.loads(answer("opaque-port", "json"))["detection"]["kind"] == "opaque_port"
    assert json.loads(answer("outbound-passthrough", "json"))["detection"]["kind"] == "sniff"
    # The proxy's own upstream connections are not captured again.
    for name in ("outbound-passthrough", "inbound-captured", "virtual-listener-hit", "ipv6-inbound", "tproxy-inbound"):
        up = json.loads(answer(name, "json"))["route"]["upstream"]
        assert up is not None and up["captured"] is False, name
    assert json.loads(answer("ipv6-inbound", "json"))["route"]["upstream"]["source"] == "::6"
    tproxy = json.loads(answer("tproxy-inbound", "json"))["route"]["upstream"]
    assert (tproxy["source"], tproxy["uid"], tproxy["gid"]) == ("192.0.2.9", 0, 1337) and tproxy["note"]


def test_http_route_verdicts():
    """Step 5's headline per --host case: (kind, route, clusters by weight, fallback kind)."""
    want = {
        "http-exact-host": ("route", "default", [("reviews-v1", 100)], None),
        "http-wildcard-host": ("route", None, [("ratings", 100)], None),
        "http-header-match": ("route", "canary", [("reviews-v2", 100)], None),
        "http-weighted-split": ("route", "split", [("reviews-v2", 80), ("reviews-v1", 20)], None),
        "http-redirect": ("redirect", "moved", [], None),
        "http-direct-response": ("direct_response", "maintenance", [], None),
        "http-no-match-http-cluster": ("no_match", None, [], "cluster"),
        "http-no-match-404": ("no_match", None, [], "not_found"),
        "http-no-match-passthrough": ("no_match", None, [], "passthrough"),
        "http-no-match-registry-only": ("no_match", None, [], "not_found"),
        "http-no-match-virtual-listener": ("no_match", None, [], "cluster"),
        "http-match-registry-only": ("route", "default", [("reviews-v1", 100)], None),
        "http-inbound": ("not_applied", None, [], "inbound_passthrough"),
        "http-opaque-port": ("not_applicable", None, [], None),
        "http-not-captured": ("not_applicable", None, [], None),
    }
    assert set(want) == {name for name, case in CASES.items() if "--host" in case[0]}
    for name, (kind, route, dests, fallback) in want.items():
        h = json.loads(answer(name, "json"))["http_route"]
        got = (h["kind"], h["route"], [(d["cluster"], d["weight"]) for d in h["destinations"]],
               h["fallback"] and h["fallback"]["kind"])
        assert got == (kind, route, dests, fallback), name
    docs = {name: json.loads(answer(name, "json")) for name in want}
    assert docs["http-wildcard-host"]["http_route"]["matched_host"] == "*.example.com"
    assert docs["http-wildcard-host"]["http_route"]["rewrite"]["authority"] == "ratings.internal"
    assert docs["http-exact-host"]["http_route"]["matched_host"] == "reviews.local"
    assert docs["http-weighted-split"]["http_route"]["rewrite"]["path"] == "/v1/items?page=2"
    assert docs["http-redirect"]["http_route"]["redirect"] == {"code": 301, "location": "http://reviews.local/new?x=1"}
    assert docs["http-direct-response"]["http_route"]["direct_response"]["status"] == 503
    assert docs["http-no-match-virtual-listener"]["http_route"]["fallback"]["cluster"] == "ratings"
    assert docs["http-no-match-http-cluster"]["http_route"]["fallback"]["cluster"] == "fallback"
    # The verdict names the HTTP route's cluster(s) when there is one.
    assert docs["http-weighted-split"]["verdict"].endswith(
        "virtualOutbound -> HTTP route reviews/split -> clusters reviews-v2 (80%), reviews-v1 (20%)")
    assert docs["http-header-match"]["verdict"].endswith("reaches listener web -> HTTP route reviews/canary -> "
                                                         "cluster reviews-v2")
    assert docs["http-no-match-404"]["verdict"].endswith("-> no HTTP route matches -> 404 (flag NR)")
    assert docs["http-match-registry-only"]["verdict"].endswith("-> HTTP route reviews/default -> cluster reviews-v1")
    # Without a route to name, the verdict is the connection's.
    assert docs["http-opaque-port"]["verdict"] == json.loads(
        explain.explain_args(parse_args("10.0.0.7:3306 -o json"), {}, yaml.safe_dump(HTTP_MESH).encode(),
                             "http.yaml"))["verdict"]


@pytest.mark.parametrize("cmdline,message", [
    ("10.0.0.1:80 --path /x", "give its --host too"),
    ("10.0.0.1:80 --header a:b", "give its --host too"),
    ("10.0.0.1:80 --host 'a b'", "not a valid Host"),
    ("10.0.0.1:80 --host a --path x", "origin-form"),
    ("10.0.0.1:80 --host a --method 'G T'", "method token"),
    ("10.0.0.1:80 --host a --header novalue", "NAME:VALUE"),
])
def test_bad_http_request(cmdline, message):
    with pytest.raises(explain.ExplainError, match=message):
        explain.explain_args(parse_args(cmdline), {}, None, None)


def test_repeated_headers_are_joined():
    req = explain.request_from_args(parse_args("10.0.0.1:80 --host h --header A:1 --header 'a: 2'"))
    assert req.headers == (("a", "1,2"),)


def dump_of(document: dict, settings: dict, generation: int = 7) -> dict:
    """A /config_dump as the manager serves it (only the fields explain reads matter)."""
    from fastproxy.config.load import load
    from fastproxy.manager.main import _plain
    config = load({**document, "settings": {**document.get("settings", {}), **settings}})
    return {"version": "x", "generation": generation, "source": "/etc/fastproxy.yaml",
            "config": _plain(config), "last_rejected": None, "document": document}


def test_admin_dump_uses_the_proxy_settings_not_this_environment():
    """--admin: the document the proxy loaded, with the settings it runs with (its environment
    overrides included), not the explaining shell's FASTPROXY_* settings."""
    dump = dump_of(HTTP_MESH, {"outbound_traffic_policy": "REGISTRY_ONLY"})
    args = parse_args("10.0.0.7:8080 --host unknown.local --admin 127.0.0.1:15000 -o json")
    doc = json.loads(explain.explain_args(args, {"FASTPROXY_OUTBOUND_TRAFFIC_POLICY": "ALLOW_ANY"}, None,
                                          None, dump))
    assert doc["inputs"]["config"] == "admin 127.0.0.1:15000 generation 7 (loaded from /etc/fastproxy.yaml)"
    assert doc["inputs"]["settings"]["outbound_traffic_policy"] == "REGISTRY_ONLY"
    assert doc["http_route"]["fallback"]["kind"] == "not_found"
    # The same request against the config file itself: the document's own policy (ALLOW_ANY).
    local = json.loads(answer("http-no-match-passthrough", "json"))
    assert local["http_route"]["fallback"]["kind"] == "passthrough"


def test_admin_dump_of_the_embedded_default():
    """The manager reports the default document for the embedded default; with the
    proxy's ports, the listeners are the proxy's."""
    from fastproxy.config.load import default_document, load
    settings = load({}, {"FASTPROXY_OUTBOUND_PORT": "16001"}).settings
    dump = dump_of(default_document(settings), {"outbound_port": 16001})
    args = parse_args("10.0.0.7:8080 --init-flags='-p 16001' --admin 127.0.0.1:15000 --host a.local -o json")
    doc = json.loads(explain.explain_args(args, {}, None, None, dump))
    assert doc["listener"]["address"] == "0.0.0.0:16001"
    assert doc["http_route"]["fallback"]["kind"] == "passthrough"


def test_admin_dump_without_document_is_explained():
    dump = dump_of(HTTP_MESH, {})
    del dump["document"]
    with pytest.raises(explain.ExplainError, match="does not report its config document"):
        explain.explain_args(parse_args("10.0.0.7:80 --admin 127.0.0.1:15000"), {}, None, None, dump)


@pytest.mark.parametrize("bad,message", [
    ("10.0.0.1", "DST must be IP:PORT"),
    ("2001:db8::1:80", "needs brackets"),
    ("[10.0.0.1]:80", "brackets are for IPv6"),
    ("example.com:80", "does not resolve names"),
    ("10.0.0.1:0", "out of range"),
])
def test_bad_destination(bad, message):
    with pytest.raises(explain.ExplainError, match=message):
        explain.parse_destination(bad)


def test_source_family_must_match():
    with pytest.raises(explain.ExplainError, match="different address families"):
        explain.explain_args(parse_args("10.0.0.1:80 --src ::6"), {}, None, None)


def test_bad_init_flags_name_the_flag():
    with pytest.raises(flags.InitConfigError, match="-x/--istio-service-exclude-cidr"):
        explain.explain_args(parse_args("10.0.0.1:80 --init-flags='-x nonsense'"), {}, None, None)


# ---------------------------------------------------------------------------
# The interpreter against the rules and the documented policy

INIT_COMBOS = [
    "", "-m TPROXY", "--dual-stack", "-m TPROXY --dual-stack", "-b 8080,9090", "-b '*' -d 22,8081",
    "-b ''", "-m TPROXY -b ''", "-i 10.0.0.0/8,172.16.0.0/12,fd00::/8 -x 10.96.0.10 --dual-stack",
    "-i '' -q 3306,5432", "-o 25,53 --redirect-dns", "--redirect-dns --dual-stack", "-u 1337,1338 -g 1337,2000",
    "-k kv0,vm+ -c eth9", "-k kv0 -i 10.0.0.0/8,2001:db8::/32 --dual-stack", "-m TPROXY -b 8080 -t 1234 -c eth9",
    "-i 127.0.0.0/8,10.0.0.0/8", "-p 16001 -z 16006 -u 2000",
    ("-m TPROXY --dual-stack --redirect-dns -k kv0 -c eth9 -x 10.0.0.0/8,fd00::/8 -d 22 -o 25 -q 3306 "
     "-u 1337,4242 -g 1337"),
]


def init(cmdline: str) -> flags.InitConfig:
    return explain.init_config(cmdline, {})


@pytest.mark.parametrize("cmdline", INIT_COMBOS)
def test_every_generated_rule_is_readable(cmdline):
    cfg = init(cmdline)
    for fam in rules_iptables.FAMILIES:
        text = rules_iptables.render(cfg, fam)
        parsed = explain._tables(cfg, fam.version)
        assert sum(len(rules) for chains in parsed.values() for rules in chains.values()) == text.count("\n-A ")


@pytest.mark.parametrize("line", [
    '-A FASTPROXY_OUTPUT -m statistic --mode random -m comment --comment "fastproxy: x" -j RETURN',
    '-A FASTPROXY_OUTPUT -d 10.0.0.0/8 -j RETURN',
    '-A FASTPROXY_OUTPUT -m comment --comment "fastproxy: x"',
    '-A FASTPROXY_OUTPUT --dport 80 -m comment --comment "fastproxy: x" -j RETURN',
])
def test_parser_refuses_what_it_does_not_know(line):
    with pytest.raises(ValueError):
        explain.parse_rule("nat", 1, line)


def test_unknown_target_is_an_error():
    tables = {"nat": {"OUTPUT": [explain.parse_rule(
        "nat", 1, '-A OUTPUT -m comment --comment "fastproxy: x" -j DNAT --to-destination 1.2.3.4')]}}
    pkt = explain._Packet(src=None, dst=ipaddress.ip_address("10.0.0.1"), dport=80, iif=None, oif="eth0",
                          uid=None, gid=None)
    with pytest.raises(ValueError, match="cannot follow target"):
        explain._run_chain(tables, "nat", "OUTPUT", pkt, explain._Walk())


def _iface(patterns, name) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("+") else name == p for p in patterns)


def _in(ip, nets) -> bool:
    return any(ip in n for n in nets)


def oracle_outbound(cfg, ip, port, oif, uid, gid, src):
    """rules_iptables' FASTPROXY_OUTPUT order, stated directly: the port it redirects to, or None."""
    if ip.version == 6 and not cfg.dual_stack:
        return None
    if _iface(cfg.exclude_interfaces, oif) or port in cfg.outbound_ports_exclude:
        return None
    if src == ipaddress.ip_address("127.0.0.6" if ip.version == 4 else "::6") and oif == "lo":
        return None
    lo_addr = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
    include = cfg.outbound_ip_ranges_include
    loopback_included = include != ALL and any(n.network_address.is_loopback for n in include)
    not_dns = not (cfg.redirect_dns and port == 53)
    for ids, value in ((cfg.proxy_uids, uid), (cfg.proxy_gids, gid)):
        for ident in ids:
            if oif == "lo" and ip != lo_addr and not_dns and value == ident:
                return cfg.inbound_port
            if not loopback_included and oif == "lo" and not_dns and value != ident:
                return None
            if value == ident:
                return None
    if cfg.redirect_dns and port == 53:
        return DNS_CAPTURE_PORT
    if ip == lo_addr or _in(ip, cfg.outbound_ip_ranges_exclude):
        return None
    if port in cfg.outbound_ports_include or include == ALL or _in(ip, include):
        return cfg.outbound_port
    return None


def oracle_inbound(cfg, ip, port, iif, src):
    """nat/mangle PREROUTING, stated directly (for a first packet without a mark)."""
    if ip.version == 6 and not cfg.dual_stack:
        return None
    include = cfg.outbound_ip_ranges_include
    if cfg.tproxy and _iface(cfg.exclude_interfaces, iif):
        return None
    if _iface(cfg.kube_virt_interfaces, iif):
        return cfg.outbound_port if include == ALL or _in(ip, include) else None
    if _iface(cfg.exclude_interfaces, iif) or not cfg.inbound_enabled:
        return None
    if cfg.tproxy and iif == "lo":
        return None
    if port in PROXY_OWN_PORTS:
        return None
    if cfg.tproxy and ip == ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1"):
        return None     # FASTPROXY_TPROXY never diverts to the loopback address
    if cfg.inbound_ports_include == ALL:
        return None if port in cfg.inbound_ports_exclude else cfg.inbound_port
    return cfg.inbound_port if port in cfg.inbound_ports_include else None


IPS = [ipaddress.ip_address(a) for a in (
    "10.0.0.7", "10.96.0.10", "172.16.3.3", "192.168.1.1", "127.0.0.1", "127.0.0.5",
    "2001:db8::7", "fd00::1", "::1")]
PORTS = [22, 25, 53, 80, 3306, 8080, 9090, 15000, 15001, 15006, 15021]
IDS = [(None, None), (1337, None), (None, 1337), (1338, None), (4242, 4242), (None, 2000), (2000, 2000)]
IFACES = ["eth0", "lo", "eth9", "kv0", "vm7"]


@pytest.mark.parametrize("cmdline", INIT_COMBOS)
def test_interpreter_matches_the_documented_policy(cmdline):
    cfg = init(cmdline)
    nft = explain._nft_rules(cfg)
    checked = 0
    for ip, port, iface in itertools.product(IPS, PORTS, IFACES):
        passthrough = "127.0.0.6" if ip.version == 4 else "::6"
        for (uid, gid), src in itertools.product(IDS, (None, passthrough)):
            q = explain.Query(str(ip), port, "outbound", src, uid, gid, iface)
            got = explain.evaluate_capture(cfg, q, nft)
            want = oracle_outbound(cfg, ip, port, iface, uid, gid, ipaddress.ip_address(src) if src else None)
            assert (got["port"] if got["captured"] else None) == want, (cmdline, q, got["decided_by"])
            _check_tag_in_nft(got, cmdline, q)
            checked += 1
        q = explain.Query(str(ip), port, "inbound", None, None, None, iface)
        got = explain.evaluate_capture(cfg, q, nft)
        want = oracle_inbound(cfg, ip, port, iface, None)
        assert (got["port"] if got["captured"] else None) == want, (cmdline, q, got["decided_by"])
        _check_tag_in_nft(got, cmdline, q)
        checked += 1
    assert checked > 5000


def _check_tag_in_nft(got, cmdline, q):
    """The deciding rule is the same rule in the nft backend (same comment tag)."""
    tag = got["decided_by"]["tag"]
    if tag is not None:
        assert got["decided_by"]["nft"] is not None, (cmdline, q, tag)
