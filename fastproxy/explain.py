"""`fastproxy explain DST`: what happens to one TCP connection, step by step.

    fastproxy explain 10.96.0.10:5432 [--direction outbound|inbound] [--src IP]
        [--uid N] [--gid N] [--iface NAME] [--config FILE | --admin HOST:PORT]
        [--init-flags "-x ..."] [--host HOST [--path PATH] [--method M] [--header N:V ...]]
        [-o text|json]

The answer has four steps, five with --host:

1. Capture: which interception rule decides. The rules are not re-derived
   here: explain builds the very ruleset `fastproxy init` installs
   (rules_iptables.build, from the same InitConfig: --init-flags and the
   FASTPROXY_* variables) and runs the connection's first packet through it
   with a small interpreter of the rule syntax the builder emits (first match
   wins, jumps, RETURN, REDIRECT, TPROXY, MARK). The interpreter refuses any
   token it does not know, so a builder change cannot be silently misread.
   The deciding rule is named by its comment tag, which `fastproxy init`
   puts on the iptables rule and on its nft twin alike.
2. Listener: 15001 (virtualOutbound), 15006 (virtualInbound), an explicit
   listener, the proxy's own admin/metrics ports, or nothing (bypass).
3. Detection: an opaque port (settings.opaque_ports) is relayed
   as TCP at once; any other port is sniffed from its first bytes.
4. Route: from the compiled routing table (routing.table.RouteTable, the
   object the workers use): a virtual listener's cluster and endpoints,
   PassthroughCluster, BlackHoleCluster (REGISTRY_ONLY), InboundPassthroughCluster,
   or a loop refusal. The proxy's own upstream connection is then run through
   the rules too, to show it is not captured again.
5. HTTP route (--host; JSON "http_route"): when the connection's HTTP/1
   requests are routed one by one (an explicit http listener, or an outbound
   capture listener that sniffs), the virtual service route that
   RouteTable.http.select() picks for that request (the worker's own call,
   worker/http.py decide()): its destinations with weights, clusters and
   endpoints, rewrite, redirect or direct response; or, when nothing
   matches, what happens instead (the listener's http.cluster or 404 NR; on
   a capture listener the step 4 result, or 404 NR in REGISTRY_ONLY).
   Inbound capture does not apply virtual services; an opaque port, a
   tcp_proxy listener or TPROXY inbound never parses requests. The verdict
   then names the route's cluster(s).

--admin explains against a running proxy: the config document and settings
come from its /config_dump (the document it loaded, with the settings it
runs with, so the environment it saw counts, not this shell's); the init
flags still come from --init-flags and this environment.

Assumptions, stated in the output: an outbound connection is made by an app
process (not the proxy's uid/gid) unless --uid/--gid say otherwise; it
leaves by lo when the destination is loopback, else by eth0 (--iface
changes it). An inbound connection arrives from another host on eth0. The
proxy's own connections come from the first -u uid and -g gid; in TPROXY
mode from uid 0, as Istio's TPROXY sidecar runs (IP_TRANSPARENT needs
CAP_NET_ADMIN). A TPROXY rule set with a non-transparent inbound listener
(settings.inbound_interception_mode differs from -m) is reported as such.
`fastproxy init` also turns on --dual-stack by itself when the host's first
address is IPv6; explain cannot see the host and takes the flags as given.

Everything here is pure except run() and fetch_config_dump(), which read the
environment, the config file or the admin API, and print.
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

import orjson

from .config.env import CONFIG_FILE_VAR
from .config.load import load, load_default, load_text
from .config.schema import (
    BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER, Config, ConfigError, hostport)
from .interception import rules_iptables, rules_nft
from .interception.flags import (
    ALL, FLAG_BY_FIELD, FLAGS, INBOUND_PASSTHROUGH_V6, InitConfig, InitConfigError, from_sources)
from .routing.http import DIRECT_RESPONSE, REDIRECT, ROUTE, HttpRoute
from .routing.table import (
    MODE_INBOUND,
    MODE_OUTBOUND,
    MODE_TCP,
    PROTOCOL_HTTP,
    WILDCARDS,
    RouteTable,
    compile_table,
)
from .stats.names import SlotRegistry

SCHEMA_VERSION = 1
OUTBOUND = "outbound"
INBOUND = "inbound"
DEFAULT_IFACE = "eth0"

# Chains that only carry out a decision taken before them (the REDIRECT /
# TPROXY / mark targets): the deciding rule is the one that jumped there.
_ACTION_CHAINS = (rules_iptables.REDIRECT, rules_iptables.IN_REDIRECT, rules_iptables.DIVERT,
                  rules_iptables.TPROXY)
_MODE_NAMES = {MODE_TCP: "explicit TCP listener", MODE_OUTBOUND: "outbound capture",
               MODE_INBOUND: "inbound capture"}
_DETECTION_NAMES = {"none": "none", "opaque_port": "opaque port", "sniff": "from the first bytes",
                    "not_reached": "not reached"}


class ExplainError(ValueError):
    """A question explain cannot answer as asked (bad DST, --src of the wrong family...)."""


# ---------------------------------------------------------------------------
# The question


@dataclass(frozen=True)
class Query:
    ip: str
    port: int
    direction: str = OUTBOUND
    src: str | None = None
    uid: int | None = None
    gid: int | None = None
    iface: str | None = None       # None: assumed (lo for loopback, else eth0)

    @property
    def address(self) -> str:
        return hostport(self.ip, self.port)


@dataclass(frozen=True)
class HttpRequest:
    """An HTTP/1 request on the connection (--host, --path, --method, --header).
    headers: (lower-case name, value) pairs, a repeated name already joined with ","."""

    authority: str
    path: str = "/"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()


def parse_destination(text: str) -> tuple[str, int]:
    """'10.0.0.1:80' or '[2001:db8::1]:443' -> (ip, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ExplainError(f"DST must be IP:PORT or [IPv6]:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ExplainError(f"brackets are for IPv6 addresses, got {text!r}")
    elif ":" in host:
        raise ExplainError(f"an IPv6 destination needs brackets, as in [{host}]:{port}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ExplainError(f"{host!r} is not an IP address (explain does not resolve names)") from None
    p = int(port)
    if not 1 <= p <= 65535:
        raise ExplainError(f"port {p} is out of range 1-65535")
    return str(ip), p


# ---------------------------------------------------------------------------
# 1. The rule interpreter (over rules_iptables' own output)


@dataclass
class _Packet:
    """The first packet (SYN) of the connection, as the rules see it."""

    src: Any            # ipaddress object or None (not given: matches no -s)
    dst: Any
    dport: int
    iif: str | None
    oif: str | None
    uid: int | None     # None: not one of the proxy's ids
    gid: int | None
    proto: str = "tcp"
    mark: int = 0
    connmark: int = 0
    ctstate: str = "NEW"


@dataclass(frozen=True)
class _Rule:
    table: str
    chain: str
    index: int                # 1-based, among fastproxy's rules in that chain
    text: str
    conds: tuple
    tag: str                  # the whole comment, "fastproxy: ..."
    target: str
    args: tuple[str, ...]


def parse_rule(table: str, index: int, line: str) -> _Rule:
    """One `-A CHAIN ...` line as rules_iptables writes it. Raises ValueError
    on anything it does not understand, so that a rule explain cannot read is
    an error, never a silent "no match"."""
    t = shlex.split(line)
    if len(t) < 4 or t[0] != "-A":
        raise ValueError(f"not a rule: {line!r}")
    chain, conds, tag, target, args = t[1], [], None, None, ()
    module, neg, i = None, False, 2
    while i < len(t):
        tok = t[i]
        nxt = t[i + 1] if i + 1 < len(t) else None
        if tok == "!":
            neg = True
            i += 1
            continue
        if nxt is None:
            raise ValueError(f"option {tok} without a value in {line!r}")
        if tok in ("-s", "-d"):
            conds.append((tok[1], neg, ipaddress.ip_network(nxt, strict=False)))
        elif tok in ("-i", "-o", "-p"):
            conds.append((tok[1], neg, nxt))
        elif tok == "-m":
            module = nxt
        elif tok in ("--dport", "--sport") and module in ("tcp", "udp"):
            conds.append((tok[2:], neg, (module, int(nxt))))
        elif tok == "--dports" and module == "multiport":
            conds.append(("dports", neg, frozenset(int(p) for p in nxt.split(","))))
        elif tok in ("--uid-owner", "--gid-owner") and module == "owner":
            conds.append((tok[2:5], neg, int(nxt)))
        elif tok == "--mark" and module in ("mark", "connmark"):
            conds.append((module, neg, int(nxt, 0)))
        elif tok == "--ctstate" and module == "conntrack":
            conds.append(("ctstate", neg, frozenset(nxt.split(","))))
        elif tok == "--comment" and module == "comment":
            tag = nxt
        elif tok == "-j":
            target, args = nxt, tuple(t[i + 2:])
            break
        else:
            raise ValueError(f"explain cannot read {tok!r} in {line!r}")
        neg = False
        i += 2
    if target is None or tag is None:
        raise ValueError(f"rule without a target or a comment tag: {line!r}")
    return _Rule(table, chain, index, line, tuple(conds), tag, target, args)


def _iface_matches(pattern: str, name: str | None) -> bool:
    if name is None:
        return False
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _matches(rule: _Rule, p: _Packet) -> bool:
    for kind, neg, val in rule.conds:
        if kind == "s":
            hit = p.src is not None and p.src in val
        elif kind == "d":
            hit = p.dst in val
        elif kind == "i":
            hit = _iface_matches(val, p.iif)
        elif kind == "o":
            hit = _iface_matches(val, p.oif)
        elif kind == "p":
            hit = p.proto == val
        elif kind == "dport":
            hit = p.proto == val[0] and p.dport == val[1]
        elif kind == "sport":
            hit = False      # the source port of a new connection is ephemeral: never a listed one
        elif kind == "dports":
            hit = p.dport in val
        elif kind == "uid":
            hit = p.uid == val
        elif kind == "gid":
            hit = p.gid == val
        elif kind == "mark":
            hit = p.mark == val
        elif kind == "connmark":
            hit = p.connmark == val
        elif kind == "ctstate":
            hit = p.ctstate in val
        else:
            raise AssertionError(kind)
        if hit == neg:
            return False
    return True


@lru_cache(maxsize=64)
def _tables(cfg: InitConfig, version: int) -> dict[str, dict[str, list[_Rule]]]:
    """Every chain of the ruleset `fastproxy init` builds for cfg (ours, and our
    rules in the built-in chains), parsed. Empty: no rules for this family."""
    rs = rules_iptables.build(cfg, rules_iptables.V4 if version == 4 else rules_iptables.V6)
    out: dict[str, dict[str, list[_Rule]]] = {}
    for name, table in rs.tables.items():
        chains: dict[str, list[_Rule]] = {}
        for lines in [*table.chains.values(), table.jumps]:
            for line in lines:
                chain = line.split()[1]
                rules = chains.setdefault(chain, [])
                rules.append(parse_rule(name, len(rules) + 1, line))
        for chain in table.chains:
            chains.setdefault(chain, [])
        out[name] = chains
    return out


@dataclass
class _Walk:
    steps: list[dict] = field(default_factory=list)
    port: int | None = None        # set when a REDIRECT / TPROXY captured the packet
    target: str | None = None


def _step(table: str, chain: str, rule: _Rule | None) -> dict:
    """One line of the capture path: a rule that matched, or (rule None) the end of a chain reached."""
    return {"table": table, "chain": chain, "index": rule.index if rule else None,
            "target": rule.target if rule else None, "tag": rule.tag if rule else None,
            "rule": rule.text if rule else None, "end": rule is None}


def _decided(why: str, step: dict | None = None, twin: dict | None = None, tag: str | None = None) -> dict:
    return {"tag": step["tag"] if step else tag, "chain": step["chain"] if step else None,
            "rule": step["rule"] if step else None, "nft": twin, "why": why}


def _run_chain(tables: dict, table: str, chain: str, p: _Packet, walk: _Walk, depth: int = 0) -> str:
    """Runs `chain`; returns 'return' (fell off or RETURN), 'accept' or 'capture'."""
    if depth > 16:
        raise ValueError(f"chain {chain} nests too deep")
    for rule in tables[table].get(chain, ()):
        if not _matches(rule, p):
            continue
        walk.steps.append(_step(table, chain, rule))
        tgt, args = rule.target, rule.args
        if tgt == "RETURN":
            return "return"
        if tgt == "ACCEPT":
            return "accept"
        if tgt in ("REDIRECT", "TPROXY"):
            opt = "--to-ports" if tgt == "REDIRECT" else "--on-port"
            walk.port, walk.target = int(args[args.index(opt) + 1]), tgt
            return "capture"
        if tgt == "MARK":
            value, _, mask = args[args.index("--set-xmark") + 1].partition("/")
            p.mark = (p.mark & ~int(mask or "0xffffffff", 0)) ^ int(value, 0)
            continue
        if tgt == "CONNMARK":
            if "--save-mark" in args:
                p.connmark = p.mark
            elif "--restore-mark" in args:
                p.mark = p.connmark
            continue
        if tgt == "CT":
            continue
        if tgt in tables[table]:
            verdict = _run_chain(tables, table, tgt, p, walk, depth + 1)
            if verdict != "return":
                return verdict
            continue
        raise ValueError(f"explain cannot follow target {tgt!r} in {rule.text!r}")
    if chain.startswith(rules_iptables.CHAIN_PREFIX):
        walk.steps.append(_step(table, chain, None))
    return "return"


def _hooks(direction: str) -> list[tuple[str, str]]:
    """Where the connection's first packet meets the rules, in the kernel's order."""
    if direction == OUTBOUND:
        return [("nat", "OUTPUT")]
    return [("mangle", "PREROUTING"), ("nat", "PREROUTING")]


@lru_cache(maxsize=32)
def _nft_rules(cfg: InitConfig) -> dict[str, list[dict]]:
    """tag -> [{"chain", "rule"}] of the nft rules carrying it (the same tags as iptables')."""
    out: dict[str, list[dict]] = {}
    chain = None
    for raw in rules_nft.render(cfg).splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            chain = line.split()[1]
            continue
        marker = ' comment "' + rules_iptables.COMMENT_PREFIX
        if chain and marker in line:
            tag = line[line.index(marker) + len(' comment "'):-1]
            out.setdefault(tag, []).append({"chain": chain, "rule": line})
    return out


def _nft_twin(nft: dict[str, list[dict]], tag: str | None, direction: str) -> dict | None:
    """The nft rule with this tag, preferring a chain of the connection's direction
    (a tag such as "interface eth9 is excluded (-c)" is in both directions' chains)."""
    rules = nft.get(tag or "", [])
    words = ("output",) if direction == OUTBOUND else ("prerouting", "inbound")
    return next((r for r in rules if any(w in r["chain"] for w in words)), rules[0] if rules else None)


def evaluate_capture(cfg: InitConfig, q: Query, nft: dict[str, list[dict]] | None = None, mark: int = 0) -> dict:
    """Step 1: runs the connection's first packet through the rules of `cfg`.
    `mark` is the socket's mark (the proxy's transparent TPROXY sockets have one)."""
    nft = _nft_rules(cfg) if nft is None else nft
    dst = ipaddress.ip_address(q.ip)
    fam = rules_iptables.V4 if dst.version == 4 else rules_iptables.V6
    iface = q.iface or _assumed_iface(q)
    pkt = _Packet(src=ipaddress.ip_address(q.src) if q.src else None, dst=dst, dport=q.port,
                  iif=iface if q.direction == INBOUND else None, oif=iface if q.direction == OUTBOUND else None,
                  uid=q.uid if q.direction == OUTBOUND else None, gid=q.gid if q.direction == OUTBOUND else None,
                  mark=mark)
    tables = _tables(cfg, fam.version)
    where = " then ".join(f"{t} {h}" for t, h in _hooks(q.direction) if h in tables.get(t, ())) or "none"
    out: dict[str, Any] = {"backend": "iptables" if fam.version == 4 else "ip6tables",
                           "family": f"IPv{fam.version}", "hooks": where, "captured": False,
                           "port": None, "target": None, "decided_by": None, "path": []}
    if not tables:
        # ip6tables gets no rules at all without --dual-stack; nft says so in one rule.
        tag = next((t for t, rules in nft.items() if "meta nfproto ipv6 return" in rules[0]["rule"]), None)
        out["decided_by"] = _decided("fastproxy init installs no IPv6 rules without --dual-stack",
                                     twin=_nft_twin(nft, tag, q.direction), tag=tag)
        return out
    walk = _Walk()
    verdict = "return"
    for table, hook in _hooks(q.direction):
        if table in tables and hook in tables[table]:
            verdict = _run_chain(tables, table, hook, pkt, walk)
            if verdict == "capture":
                break
    out["path"] = walk.steps
    if verdict == "capture":
        out.update(captured=True, port=walk.port, target=walk.target)
        deciding = [s for s in walk.steps if s["chain"] not in _ACTION_CHAINS
                    and s["chain"].startswith(rules_iptables.CHAIN_PREFIX) and not s["end"]]
        step = deciding[-1] if deciding else walk.steps[-1]
    else:
        exits = [s for s in walk.steps if s["end"] or s["target"] in ("RETURN", "ACCEPT")]
        step = exits[0] if exits else None
    if step is None:
        out["decided_by"] = _decided(_no_rule_reason(cfg, q))
    elif step["end"]:
        out["decided_by"] = {**_decided(_fell_through_reason(cfg, q, step["chain"])), "chain": step["chain"]}
    else:
        out["decided_by"] = _decided(step["tag"][len(rules_iptables.COMMENT_PREFIX):], step,
                                     _nft_twin(nft, step["tag"], q.direction))
    return out


def _no_rule_reason(cfg: InitConfig, q: Query) -> str:
    if q.direction == INBOUND and not cfg.inbound_enabled:
        return "inbound capture is off (-b ''): no fastproxy rule sees inbound traffic"
    return "no fastproxy rule applies to this connection"


def _fell_through_reason(cfg: InitConfig, q: Query, chain: str) -> str:
    base = f"no rule in {chain} matched, so the packet continues unchanged"
    if chain == rules_iptables.INBOUND and cfg.inbound_ports_include != ALL:
        ports = ",".join(str(p) for p in cfg.inbound_ports_include)
        return f"{base}: inbound port {q.port} is not one of the captured ports (-b {ports})"
    if chain == rules_iptables.OUTPUT and cfg.outbound_ip_ranges_include != ALL:
        return f"{base}: {q.ip} is in no -i range and port {q.port} is not in -q"
    return base


def _assumed_iface(q: Query) -> str:
    loopback = ipaddress.ip_address(q.ip).is_loopback
    if q.direction == INBOUND and q.src and ipaddress.ip_address(q.src).is_loopback:
        loopback = True
    return "lo" if loopback else DEFAULT_IFACE


# ---------------------------------------------------------------------------
# 2-4. Listener, detection, route (from the compiled routing table)


def _family_of(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def _listener_at(table: RouteTable, ip: str | None, port: int, version: int):
    """The listener bound to port (and to ip, or a wildcard, when ip is given)."""
    for l in table.listeners:
        for lip, lport in l.addresses:
            if lport != port or _family_of(lip) != version:
                continue
            if ip is None or lip in WILDCARDS or lip == ip:
                return l, hostport(lip, lport)
    return None, None


def _proxy_servers(settings: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    out = [(settings["admin_address"], settings["admin_port"], "admin API")]
    for key, what in (("stats_port", "/stats/prometheus"), ("merged_metrics_port", "merged metrics"),
                      ("health_port", "/healthz/ready")):
        if settings[key]:
            out.append(("0.0.0.0", settings[key], what))
    return out


def _cluster_doc(config: Config, name: str) -> dict:
    for c in config.clusters:
        if c.name == name:
            return {"name": name, "lb_policy": c.lb_policy,
                    "connect_timeout_ms": c.connect_timeout_ms or config.settings["connect_timeout_ms"],
                    "endpoints": [{"address": str(e.address), "weight": e.weight} for e in c.endpoints]}
    return {"name": name, "lb_policy": "ORIGINAL_DST",
            "connect_timeout_ms": config.settings["connect_timeout_ms"], "endpoints": []}


def _virtual_listener_name(config: Config, ip: str, port: int, cluster: str) -> str | None:
    exact = wildcard = None
    for l in config.listeners:
        if l.bind_to_port or not l.tcp_proxy or l.tcp_proxy.cluster != cluster:
            continue
        for a in (l.address, *l.additional_addresses):
            if a.port == port and a.ip == ip:
                exact = exact or l.name
            elif a.port == port and a.ip in WILDCARDS:
                wildcard = wildcard or l.name
    return exact or wildcard


def _detection(listener, port: int, opaque_ports: frozenset[int]) -> dict:
    if listener.mode == MODE_TCP:
        if listener.protocol == PROTOCOL_HTTP:
            return {"kind": "none", "why": "an explicit http listener parses HTTP/1.1 without detection"}
        return {"kind": "none", "why": "an explicit tcp_proxy listener relays TCP without looking at the bytes"}
    if listener.transparent:
        return {"kind": "none", "why": "a TPROXY inbound listener relays TCP without detection (the HTTP path "
                                       "cannot yet connect from the client's own address)"}
    if port in opaque_ports:
        ports = ", ".join(str(p) for p in sorted(opaque_ports))
        return {"kind": "opaque_port",
                "why": f"port {port} is an opaque port (server-first protocols: {ports}): relayed as TCP at "
                       "once, without waiting for the client's first bytes"}
    why = (f"port {port} is not opaque: the HTTP/2 preface, a TLS ClientHello or an HTTP/1.x request line is "
           "recognised: HTTP/1.x is proxied per request; anything else, or a client that sends nothing within "
           "settings.detect_timeout_ms (a server-first protocol), is relayed as TCP")
    return {"kind": "sniff", "why": why}


def _upstream_check(cfg: InitConfig, address: str, src: str | None, mark: int, nft: dict,
                    local: bool = False, transparent: bool = False) -> dict:
    """The proxy's own connection to its upstream, run through the rules again.
    `local`: the upstream is this pod (the app), reached over lo. The proxy is
    taken to run as the first -u uid and -g gid; with `transparent` (TPROXY)
    as uid 0 and the first -g gid, as Istio's TPROXY sidecar does."""
    ip, port = parse_destination(address)
    local = local or ipaddress.ip_address(ip).is_loopback
    uid = 0 if transparent else cfg.proxy_uids[0]
    follow = Query(ip=ip, port=port, direction=OUTBOUND, src=src, uid=uid, gid=cfg.proxy_gids[0],
                   iface="lo" if local else DEFAULT_IFACE)
    cap = evaluate_capture(cfg, follow, nft, mark)
    note = None
    if transparent:
        as_proxy_uid = evaluate_capture(cfg, replace(follow, uid=cfg.proxy_uids[0]), nft, mark)
        if as_proxy_uid["captured"]:
            note = (f"this holds while the proxy runs as uid 0 (TPROXY needs CAP_NET_ADMIN, as Istio's TPROXY "
                    f"sidecar): run as uid {cfg.proxy_uids[0]}, the rule \"{as_proxy_uid['decided_by']['tag']}\" "
                    f"would send this connection back to :{as_proxy_uid['port']}, a loop")
    d = cap["decided_by"]
    return {"address": address, "source": src, "uid": follow.uid, "gid": follow.gid, "iface": follow.iface,
            "captured": cap["captured"], "port": cap["port"], "tag": d["tag"], "why": d["why"], "note": note}


def _route_doc(kind: str, why: str, cluster: str | None = None, cdoc: dict | None = None,
               virtual_listener: str | None = None, upstream: dict | None = None) -> dict:
    """Step 4, always with the same keys."""
    return {"kind": kind, "cluster": cdoc["name"] if cdoc else cluster, "virtual_listener": virtual_listener,
            "endpoints": cdoc["endpoints"] if cdoc else [], "lb_policy": cdoc["lb_policy"] if cdoc else None,
            "connect_timeout_ms": cdoc["connect_timeout_ms"] if cdoc else None, "upstream": upstream, "why": why}


def _listener_doc(name: str | None, address: str | None, mode: str | None, port: int, why: str) -> dict:
    return {"name": name, "address": address, "mode": mode, "port": port, "why": why}


def _route(q: Query, cfg: InitConfig, config: Config, table: RouteTable, capture: dict, nft: dict) -> tuple:
    """Steps 2-4: (listener, detection, route); listener and detection are None when not reached."""
    version = _family_of(q.ip)
    dst = (q.ip, q.port)
    if capture["captured"]:
        port = capture["port"]
        l, bound = _listener_at(table, None, port, version)
        if l is None:
            listener = _listener_doc(None, None, None, port, f"the rules send it to :{port}, but no listener in "
                                     f"the config binds port {port} for IPv{version}")
            return listener, None, _route_doc(
                "no_listener", f"nothing listens on :{port}: the connection is refused (compare -p/-z with "
                "settings.outbound_port/inbound_port; FASTPROXY_OUTBOUND_PORT/FASTPROXY_INBOUND_PORT set both)")
        redirected = True
    else:
        local = q.direction == INBOUND or (q.iface or _assumed_iface(q)) == "lo"
        l, bound = _listener_at(table, q.ip, q.port, version) if local else (None, None)
        if l is None:
            for ip, port, what in (_proxy_servers(config.settings) if local else ()):
                if port == q.port and _family_of(ip) == version and (ip in WILDCARDS or ip == q.ip):
                    listener = _listener_doc(what, hostport(ip, port), "the proxy's own server", port,
                                             "served by the proxy itself, not relayed")
                    return listener, None, _route_doc("proxy_server", f"answered by the proxy's {what}")
                if port == q.port and ip == "127.0.0.1" and version == 4:
                    return None, None, _route_doc(
                        "refused", f"port {port} is the proxy's {what}, which listens on 127.0.0.1 only: "
                        f"to {q.ip} the connection is refused")
            where = "the local app (whatever listens on that port)" if local else q.address
            return None, None, _route_doc("direct", f"the kernel connects straight to {where}, not through the "
                                          "proxy (no proxy metrics, policy or access log)")
        redirected = False
    listener = _listener_doc(l.name, bound, _MODE_NAMES[l.mode], int(bound.rsplit(":", 1)[1]),
                             "the rules' redirect target" if redirected else "the destination itself, no redirect")
    if l.mode != MODE_TCP and table.would_loop(dst, redirected, l):
        return listener, {"kind": "not_reached", "why": "refused before detection"}, _route_doc(
            "loop", f"{q.address} is one of the proxy's own listening ports: relaying it would come back to the "
            "proxy, so the connection is refused (counted as refused, reason loop)")
    mismatch = _mode_mismatch(capture, l, config)
    if mismatch:
        return listener, {"kind": "not_reached", "why": "the connection never reaches the listener"}, _route_doc(
            "mode_mismatch", mismatch)
    detection = _detection(l, q.port, table.opaque_ports)
    if l.mode == MODE_TCP and l.protocol == PROTOCOL_HTTP:
        if l.http_cluster is None:
            return listener, detection, _route_doc(
                "http", f"listener {l.name} routes each request by virtual_services; a request no route matches "
                "gets 404 (flag NR)")
        c = _cluster_doc(config, l.http_cluster.name)
        return listener, detection, _route_doc(
            "http", f"listener {l.name} routes each request by virtual_services; a request no route matches goes "
            f"to cluster {c['name']} ({c['lb_policy']})", cdoc=c,
            upstream=_upstream_check(cfg, c["endpoints"][0]["address"], None, 0, nft))
    if l.mode == MODE_TCP:
        c = _cluster_doc(config, l.cluster.name)
        return listener, detection, _route_doc(
            "cluster", f"listener {l.name} relays to cluster {c['name']} ({c['lb_policy']})", cdoc=c,
            upstream=_upstream_check(cfg, c["endpoints"][0]["address"], None, 0, nft))
    if l.mode == MODE_OUTBOUND:
        cluster = table.outbound(dst)
        if cluster is None:
            return listener, detection, _route_doc(
                "blackhole", f"no virtual listener matches {q.address} and settings.outbound_traffic_policy is "
                "REGISTRY_ONLY: refused (counted as refused, reason no_route)", cluster=BLACKHOLE_CLUSTER)
        if cluster.passthrough:
            return listener, detection, _route_doc(
                "passthrough", f"no virtual listener matches {q.address}; outbound_traffic_policy ALLOW_ANY: "
                f"relayed to the original destination {q.address}", cluster=PASSTHROUGH_CLUSTER,
                upstream=_upstream_check(cfg, q.address, None, 0, nft))
        c = _cluster_doc(config, cluster.name)
        vl = _virtual_listener_name(config, q.ip, q.port, cluster.name)
        return listener, detection, _route_doc(
            "cluster", f"virtual listener {vl} matches {q.address}: cluster {c['name']} ({c['lb_policy']})",
            cdoc=c, virtual_listener=vl, upstream=_upstream_check(cfg, c["endpoints"][0]["address"], None, 0, nft))
    # MODE_INBOUND: to the app at the original destination, from the source the worker uses (worker/tcp.py).
    if getattr(l, "transparent", False):
        # The worker marks its transparent sockets with -t's default (worker/tcp.py TPROXY_MARK).
        src, mark, how = q.src, InitConfig().tproxy_mark, "from the client's own address (TPROXY, IP_TRANSPARENT)"
    elif version == 6:
        src, mark, how = INBOUND_PASSTHROUGH_V6, 0, f"from {INBOUND_PASSTHROUGH_V6}"
    else:
        src = config.settings["inbound_passthrough_source"]
        mark, how = 0, f"from {src}"
    return listener, detection, _route_doc(
        "inbound_passthrough", f"relayed to the app at the original destination {q.address}, {how}",
        cluster=INBOUND_PASSTHROUGH_CLUSTER,
        upstream=_upstream_check(cfg, q.address, src, mark, nft, local=True, transparent=bool(mark)))


def _mode_mismatch(capture: dict, l, config: Config) -> str | None:
    """TPROXY rules need an IP_TRANSPARENT inbound listener, and REDIRECT rules a plain one
    (settings.inbound_interception_mode decides the listener, -m the rules)."""
    if l.mode != MODE_INBOUND or not hasattr(l, "transparent"):
        return None
    mode = config.settings.get("inbound_interception_mode", "REDIRECT")
    if capture["target"] == "TPROXY" and not l.transparent:
        return (f"the rules use TPROXY (-m TPROXY) but settings.inbound_interception_mode is {mode}, so {l.name} "
                "is not IP_TRANSPARENT and the kernel drops the connection (the client times out); set "
                "FASTPROXY_INBOUND_INTERCEPTION_MODE=TPROXY for both")
    if capture["target"] == "REDIRECT" and l.transparent:
        return (f"the rules use REDIRECT but settings.inbound_interception_mode is {mode}: the proxy would "
                "connect to the app from the client's address with no policy routing to bring the replies "
                "back; set FASTPROXY_INBOUND_INTERCEPTION_MODE the same for both")
    return None


# ---------------------------------------------------------------------------
# 5. The HTTP route of one request (virtual_services), where requests are routed one by one

# Step 4 kinds whose connection never has a request routed, and why.
_NO_REQUESTS = {
    "direct": "the proxy never sees this connection",
    "refused": "the proxy never sees this connection",
    "proxy_server": "the proxy's own server answers it, nothing is routed",
    "no_listener": "the connection is refused before any request is read",
    "loop": "the connection is refused before any request is read",
    "mode_mismatch": "the connection never reaches the listener",
}


def _s(b: bytes | None) -> str | None:
    return None if b is None else b.decode("latin-1")


def _ops_doc(ops) -> dict | None:
    if ops.empty:
        return None
    return {"set": [[_s(n), _s(v)] for n, v in ops.set], "add": [[_s(n), _s(v)] for n, v in ops.add],
            "remove": [_s(n) for n in ops.remove]}


def _http_doc(req: HttpRequest, kind: str, why: str, vh=None, matched_host: str | None = None,
              r: HttpRoute | None = None, destinations: list | None = None, rewrite: dict | None = None,
              redirect: dict | None = None, direct: dict | None = None, fallback: dict | None = None) -> dict:
    """Step 5, always with the same keys."""
    return {
        "request": {"method": req.method, "authority": req.authority, "path": req.path,
                    "headers": {n: v for n, v in req.headers}},
        "kind": kind,
        "virtual_service": vh.name if vh is not None else None,
        "hosts": list(vh.hosts) if vh is not None else [],
        "matched_host": matched_host,
        "route": r.name if r is not None else None,
        "where": r.where if r is not None else None,
        "destinations": destinations or [],
        "rewrite": rewrite,
        "redirect": redirect,
        "direct_response": direct,
        "request_headers": _ops_doc(r.request_headers) if r is not None else None,
        "response_headers": _ops_doc(r.response_headers) if r is not None else None,
        "fallback": fallback,
        "why": why,
    }


def _matched_host(vh, authority: str) -> str:
    """Which of the virtual service's hosts the authority matched (exact, longest *.suffix, or *)."""
    host = _split_host(authority.lower())
    if host in vh.hosts:
        return host
    suffixes = [h for h in vh.hosts if h.startswith("*.") and host.endswith(h[1:]) and len(host) > len(h) - 1]
    return max(suffixes, key=len) if suffixes else "*"


def _split_host(authority: str) -> str:
    if authority.startswith("["):
        return authority[:authority.find("]") + 1] if "]" in authority else authority
    return authority.rpartition(":")[0] if ":" in authority else authority


def _rewritten(r: HttpRoute, path: str) -> str:
    """The request-target the upstream sees after rewrite.uri (as csrc/rewrite.c writes it)."""
    p, sep, qs = path.partition("?")
    lead, rest = _s(r.rewrite_uri) or "", p
    if r.rewrite_uri is not None:
        rest = p[min(r.rewrite_prefix_len, len(p)):] if r.rewrite_prefix_len is not None else ""
    out = lead + rest
    if not out.startswith("/"):
        out = "/" + out
    return out + sep + qs


def _http_fallback(q: Query, config: Config, route: dict) -> dict:
    """Where a request no virtual service route matches goes (worker/http.py decide())."""
    kind = route["kind"]
    if kind == "http" and route["cluster"] is None:
        return {"kind": "not_found", "cluster": None, "endpoints": [],
                "why": "answered 404 (flag NR): the listener has no http.cluster"}
    if kind == "http":
        return {"kind": "cluster", "cluster": route["cluster"], "endpoints": route["endpoints"],
                "why": f"it goes to the listener's http.cluster, {route['cluster']}"}
    if kind == "cluster":
        return {"kind": "cluster", "cluster": route["cluster"], "endpoints": route["endpoints"],
                "why": f"routed as the TCP path would: virtual listener {route['virtual_listener']} -> cluster "
                       f"{route['cluster']}"}
    if kind == "passthrough":
        return {"kind": "passthrough", "cluster": PASSTHROUGH_CLUSTER, "endpoints": [],
                "why": f"forwarded to the original destination {q.address} (outbound_traffic_policy ALLOW_ANY)"}
    return {"kind": "not_found", "cluster": None, "endpoints": [],
            "why": f"answered 404 (flag NR): no virtual listener matches {q.address} and "
                   "outbound_traffic_policy is REGISTRY_ONLY"}


def http_step(req: HttpRequest, q: Query, config: Config, table: RouteTable, detection: dict | None,
              route: dict) -> dict:
    """Step 5: the virtual service route RouteTable.http.select() picks for req, as the
    worker's HTTP path (worker/http.py decide()) would, or what happens instead."""
    kind = route["kind"]
    if kind in _NO_REQUESTS:
        return _http_doc(req, "not_applicable", f"no request is routed: {_NO_REQUESTS[kind]}")
    if kind != "http" and (detection is None or detection["kind"] != "sniff"):
        why = f"port {q.port} is opaque, " if detection and detection["kind"] == "opaque_port" else ""
        return _http_doc(req, "not_applicable", f"no request is routed: {why}the connection is relayed as TCP, "
                         "its bytes are never parsed as HTTP")
    if kind == "inbound_passthrough":
        fallback = {"kind": "inbound_passthrough", "cluster": INBOUND_PASSTHROUGH_CLUSTER, "endpoints": [],
                    "why": f"to the app at the original destination {q.address}"}
        return _http_doc(req, "not_applied", "inbound requests are not routed by virtual_services: each goes "
                         f"to the app at the original destination {q.address} ({INBOUND_PASSTHROUGH_CLUSTER})",
                         fallback=fallback)
    authority, target = req.authority.encode("latin-1"), req.path.encode("latin-1")
    headers = {n.encode("latin-1"): v.encode("latin-1") for n, v in req.headers}
    vh = table.http.virtual_host(authority)
    r = table.http.select(authority, req.method.encode("latin-1"), target, headers)
    matched = _matched_host(vh, req.authority) if vh is not None else None
    if r is None:
        fallback = _http_fallback(q, config, route)
        if vh is None:
            why = f"no virtual service has host {_split_host(req.authority.lower())!r}"
        else:
            name = f"virtual service {vh.name}" if vh.name else "the virtual service"
            why = (f"{name} (host {matched}) has no route matching {req.method} {req.path}"
                   + (" with these headers" if req.headers else ""))
        return _http_doc(req, "no_match", f"{why}: {fallback['why']}", vh, matched, fallback=fallback)
    if r.kind == ROUTE:
        dests = []
        for d in r.destinations:
            c = _cluster_doc(config, d.host)
            dests.append({"cluster": d.host, "weight": d.weight, "lb_policy": c["lb_policy"],
                          "connect_timeout_ms": c["connect_timeout_ms"], "endpoints": c["endpoints"]})
        rewrite = None
        if r.rewrite_uri is not None or r.rewrite_authority is not None:
            rewrite = {"uri": _s(r.rewrite_uri), "authority": _s(r.rewrite_authority),
                       "path": _rewritten(r, req.path) if r.rewrite_uri is not None else req.path}
        if len(dests) == 1:
            why = f"to cluster {dests[0]['cluster']}"
        else:
            why = "split by weight per request: " + ", ".join(f"{d['cluster']} {d['weight']}%" for d in dests)
        return _http_doc(req, ROUTE, why, vh, matched, r, destinations=dests, rewrite=rewrite)
    if r.kind == REDIRECT:
        loc = _s(r.redirect.location(b"http", authority, target))
        return _http_doc(req, REDIRECT, f"answered {r.redirect.code} by the proxy, Location {loc}", vh, matched,
                         r, redirect={"code": r.redirect.code, "location": loc})
    body = r.direct_body
    try:
        text = body.decode()
    except UnicodeDecodeError:
        text = None
    return _http_doc(req, DIRECT_RESPONSE, f"answered {r.direct_status} by the proxy ({len(body)} body bytes)",
                     vh, matched, r, direct={"status": r.direct_status, "body_bytes": len(body), "body": text})


def _route_label(h: dict) -> str:
    name = "/".join(x for x in (h["virtual_service"], h["route"]) if x)
    return name or h["where"]


# ---------------------------------------------------------------------------
# The whole answer


def explain(q: Query, cfg: InitConfig, config: Config, config_source: str = "embedded default",
            request: HttpRequest | None = None) -> dict:
    """The explanation of one connection as a JSON-ready document (stable keys). With a
    request, step 5 ("http_route") says how virtual_services route it."""
    if q.direction not in (OUTBOUND, INBOUND):
        raise ExplainError(f"--direction must be outbound or inbound, got {q.direction!r}")
    version = _family_of(q.ip)
    if q.src and _family_of(q.src) != version:
        raise ExplainError(f"--src {q.src} and {q.address} are of different address families")
    nft = _nft_rules(cfg)
    capture = evaluate_capture(cfg, q, nft)
    st = config.settings
    table = RouteTable(1, compile_table(config, SlotRegistry(st["counter_slots"], max_endpoints=st["max_endpoints"],
                                                             max_rate_limits=st["max_rate_limits"])))
    listener, detection, route = _route(q, cfg, config, table, capture, nft)
    doc = {
        "schema": SCHEMA_VERSION,
        "connection": {
            "direction": q.direction, "destination": q.address, "ip": q.ip, "port": q.port,
            "source": q.src, "uid": q.uid, "gid": q.gid, "iface": q.iface or _assumed_iface(q),
            "iface_assumed": q.iface is None},
        "inputs": {"init_flags": _non_default_flags(cfg), "config": config_source,
                   "settings": {k: config.settings[k] for k in (
                       "outbound_port", "inbound_port", "outbound_traffic_policy", "inbound_passthrough_source")}},
        "capture": capture,
        "listener": listener,
        "detection": detection,
        "route": route,
    }
    http_route = None
    if request is not None:
        http_route = doc["http_route"] = http_step(request, q, config, table, detection, route)
    doc["verdict"] = _verdict(capture, listener, route, http_route)
    return doc


def _non_default_flags(cfg: InitConfig) -> dict[str, str]:
    defaults = InitConfig()
    out = {}
    for f in fields(InitConfig):
        v = getattr(cfg, f.name)
        if v == getattr(defaults, f.name) or f.name in ("dry_run", "cleanup", "run_validation", "backend"):
            continue
        shown = ",".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
        flag = FLAG_BY_FIELD[f.name]
        out[flag.short or flag.long] = shown.lower() if flag.kind == "bool" else shown
    return out


def _verdict(capture: dict, listener: dict | None, route: dict, http_route: dict | None = None) -> str:
    why = (capture["decided_by"] or {}).get("why") or "no rule"
    kind = route["kind"]
    if http_route is not None and http_route["kind"] in (ROUTE, REDIRECT, DIRECT_RESPONSE, "no_match"):
        if capture["captured"]:
            head = f"CAPTURED to :{capture['port']} ({why}): {listener['name']}"
        else:
            head = f"NOT CAPTURED ({why}): reaches listener {listener['name']}"
        return f"{head} -> {_http_verdict(http_route)}"
    if not capture["captured"]:
        head = f"NOT CAPTURED ({why})"
        if kind == "direct":
            return f"{head}: bypasses the proxy"
        if kind == "loop":
            return f"{head}: reaches {listener['name']} directly and is REFUSED as a loop"
        if kind == "refused":
            return f"{head}: REFUSED ({route['why']})"
        if kind == "proxy_server":
            return f"{head}: answered by the proxy's {listener['name']}"
        return f"{head}: reaches listener {listener['name']} -> {route['cluster']}"
    head = f"CAPTURED to :{capture['port']} ({why})"
    if kind == "no_listener":
        return f"{head}: REFUSED, nothing listens on :{capture['port']}"
    if kind == "loop":
        return f"{head}: {listener['name']} REFUSES it as a loop"
    if kind == "mode_mismatch":
        return f"{head}: LOST, the inbound interception mode of the rules and the listener differ"
    if kind == "blackhole":
        return f"{head}: {listener['name']} -> {BLACKHOLE_CLUSTER}, REFUSED (REGISTRY_ONLY)"
    return f"{head}: {listener['name']} -> {route['cluster']}"


def _http_verdict(h: dict) -> str:
    kind = h["kind"]
    if kind == ROUTE:
        dests = h["destinations"]
        if len(dests) == 1:
            to = f"cluster {dests[0]['cluster']}"
        else:
            to = "clusters " + ", ".join(f"{d['cluster']} ({d['weight']}%)" for d in dests)
        return f"HTTP route {_route_label(h)} -> {to}"
    if kind == REDIRECT:
        return f"HTTP route {_route_label(h)}: redirect {h['redirect']['code']} to {h['redirect']['location']}"
    if kind == DIRECT_RESPONSE:
        return f"HTTP route {_route_label(h)}: direct response {h['direct_response']['status']}"
    fb = h["fallback"]
    if fb["kind"] == "not_found":
        return "no HTTP route matches -> 404 (flag NR)"
    if fb["kind"] == "passthrough":
        return f"no HTTP route matches -> {PASSTHROUGH_CLUSTER} (the original destination)"
    return f"no HTTP route matches -> cluster {fb['cluster']}"


# ---------------------------------------------------------------------------
# Rendering


def render_json(doc: dict) -> str:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"


def render_text(doc: dict) -> str:
    c, cap, lst, det, route = doc["connection"], doc["capture"], doc["listener"], doc["detection"], doc["route"]
    out = [f"fastproxy explain: {c['direction']} TCP connection to {c['destination']}"]
    who = []
    if c["direction"] == OUTBOUND:
        ids = [f"uid {c['uid']}" if c["uid"] is not None else None, f"gid {c['gid']}" if c["gid"] is not None else None]
        ids = [i for i in ids if i]
        who.append(f"opened by a process with {' and '.join(ids)}" if ids
                   else "opened by an app process (not the proxy's uid/gid)")
    else:
        who.append("from another host")
    if c["source"]:
        who.append(f"source {c['source']}")
    verb = "leaving by" if c["direction"] == OUTBOUND else "arriving on"
    who.append(f"{verb} {c['iface']}" + (" (assumed; --iface to change)" if c["iface_assumed"] else ""))
    out.append("  " + ", ".join(who))
    flags = doc["inputs"]["init_flags"]
    shown = [k if v == "true" and k.startswith("--") else f"{k} {shlex.quote(v)}" for k, v in flags.items()]
    out.append("  init flags: " + (" ".join(shown) if shown else "defaults (capture everything)"))
    s = doc["inputs"]["settings"]
    out.append(f"  config: {doc['inputs']['config']} (outbound_traffic_policy {s['outbound_traffic_policy']})")
    out.append("")
    if cap["hooks"] == "none":
        out.append(f"1. Capture: {cap['backend']} ({cap['family']}): fastproxy installs no rule this connection meets")
    else:
        out.append(f"1. Capture: {cap['backend']} rules, {cap['family']}, at {cap['hooks']} (first match wins)")
    for step in cap["path"]:
        where = f"{step['table']} {step['chain']}"
        if step["end"]:
            out.append(f"     {where:<32} end of chain (nothing matched): back to the caller")
            continue
        if not step["chain"].startswith(rules_iptables.CHAIN_PREFIX):
            pos = where
        else:
            pos = f"{where} #{step['index']}"
        target = step["target"]
        if step["target"] in ("REDIRECT", "TPROXY"):
            target = f"{target} :{cap['port']}"
        if step["target"].startswith(rules_iptables.CHAIN_PREFIX):
            target = "-> " + target
        out.append(f"     {pos:<32} {target:<24} {step['tag'][len(rules_iptables.COMMENT_PREFIX):]}")
    d = cap["decided_by"]
    if d["tag"]:
        out.append(f"   decided by the rule tagged \"{d['tag']}\"")
        if d["rule"]:
            out.append(f"     iptables: {d['rule']}")
        if d["nft"]:
            out.append(f"     nft ({d['nft']['chain']}): {d['nft']['rule']}")
    else:
        out.append(f"   decided by: {d['why']}")
    if cap["captured"]:
        out.append(f"   => CAPTURED: {cap['target']} to :{cap['port']}")
    else:
        out.append("   => NOT CAPTURED")
    out.append("")
    if lst is None:
        out.append("2. Listener: none, the proxy never sees this connection")
    elif lst["name"] is None:
        out.append(f"2. Listener: NONE on :{lst['port']}: {lst['why']}")
    else:
        out.append(f"2. Listener: {lst['name']} on {lst['address']} ({lst['mode']}; {lst['why']})")
    if det is None:
        out.append("3. Detection: none")
    else:
        out.append(f"3. Detection: {_DETECTION_NAMES[det['kind']]}: {det['why']}")
    out.append(f"4. Route: {route['kind'].replace('_', ' ')}: {route['why']}")
    for e in route.get("endpoints") or ():
        out.append(f"     endpoint {e['address']} weight {e['weight']}")
    if route.get("connect_timeout_ms"):
        out.append(f"     connect timeout {route['connect_timeout_ms']} ms")
    up = route.get("upstream")
    if up:
        src = f" from {up['source']}" if up["source"] else ""
        who = f"uid {up['uid']}, gid {up['gid']}"
        if up["captured"]:
            out.append(f"   the proxy's own connection to {up['address']}{src} ({who}) would be CAPTURED "
                       f"again to :{up['port']} ({up['why']}): a loop")
        else:
            out.append(f"   the proxy's own connection to {up['address']}{src} ({who}) is not captured "
                       f"again: {up['why']}")
        if up["note"]:
            out.append(f"   note: {up['note']}")
    if "http_route" in doc:
        out.extend(_render_http(doc["http_route"]))
    out.append("")
    out.append(f"Result: {doc['verdict']}")
    return "\n".join(out) + "\n"


def _render_http(h: dict) -> list[str]:
    rq = h["request"]
    fields_ = ", ".join([f"Host {rq['authority']}", *(f"{n}: {v}" for n, v in rq["headers"].items())])
    shown = f"{rq['method']} {rq['path']} ({fields_})"
    kind = h["kind"]
    if kind == "not_applicable":
        return [f"5. HTTP route: not applicable to {shown}: {h['why']}"]
    out = [f"5. HTTP route for {shown}:"]
    if h["virtual_service"] is not None or h["hosts"]:
        name = h["virtual_service"] or "(unnamed)"
        out.append(f"     virtual service {name} (hosts {', '.join(h['hosts'])}): matched by host {h['matched_host']}")
    if kind in (ROUTE, REDIRECT, DIRECT_RESPONSE):
        out.append(f"     route {h['route'] or '(unnamed)'} at {h['where']}: {h['why']}")
    elif kind == "no_match":
        out.append(f"     no route matches: {h['why']}")
    else:
        out.append(f"     {h['why']}")
    for d in h["destinations"]:
        out.append(f"     -> cluster {d['cluster']} weight {d['weight']} ({d['lb_policy']}, connect timeout "
                   f"{d['connect_timeout_ms']} ms)")
        for e in d["endpoints"]:
            out.append(f"          endpoint {e['address']} weight {e['weight']}")
    rw = h["rewrite"]
    if rw:
        if rw["uri"] is not None:
            out.append(f"     rewrite uri {rw['uri']}: the upstream sees {rw['path']}")
        if rw["authority"] is not None:
            out.append(f"     rewrite authority: the upstream sees Host {rw['authority']}")
    for key, what in (("request_headers", "request"), ("response_headers", "response")):
        ops = h[key]
        if ops:
            parts = [f"set {n}: {v}" for n, v in ops["set"]] + [f"add {n}: {v}" for n, v in ops["add"]]
            parts += [f"remove {n}" for n in ops["remove"]]
            out.append(f"     {what} headers: {'; '.join(parts)}")
    dr = h["direct_response"]
    if dr and dr["body"] is not None and dr["body_bytes"]:
        out.append(f"     body: {dr['body']!r}" if len(dr["body"]) <= 60 else
                   f"     body: {dr['body'][:60]!r}...")
    return out


# ---------------------------------------------------------------------------
# CLI


def init_config(init_flags: str | None, environ: Mapping[str, str]) -> InitConfig:
    """The InitConfig `fastproxy init` would build from these flags and this environment."""
    from .interception.cli import add_parser as add_init_parser

    top = argparse.ArgumentParser(prog="fastproxy explain --init-flags", add_help=False)
    add_init_parser(top.add_subparsers(dest="command"))
    try:
        args = top.parse_args(["init", *shlex.split(init_flags or "")])
    except SystemExit:
        raise InitConfigError("--init-flags", f"not valid fastproxy init flags: {init_flags!r}") from None
    return from_sources({f.field: getattr(args, f.field) for f in FLAGS}, environ)


def query_from_args(args: argparse.Namespace) -> Query:
    ip, port = parse_destination(args.dst)
    src = None
    if args.src:
        try:
            src = str(ipaddress.ip_address(args.src))
        except ValueError:
            raise ExplainError(f"--src {args.src!r} is not an IP address") from None
    return Query(ip=ip, port=port, direction=args.direction, src=src, uid=args.uid, gid=args.gid,
                 iface=args.iface)


def request_from_args(args: argparse.Namespace) -> HttpRequest | None:
    """The HTTP request of --host/--path/--method/--header; None without --host."""
    host, path, method = getattr(args, "host", None), getattr(args, "path", None), getattr(args, "method", None)
    header_args = getattr(args, "header", None) or []
    if host is None:
        given = [f for f, v in (("--path", path), ("--method", method), ("--header", header_args)) if v]
        if given:
            raise ExplainError(f"{', '.join(given)} describe an HTTP request: give its --host too")
        return None
    if not host or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7e for c in host):
        raise ExplainError(f"--host {host!r} is not a valid Host value")
    path = "/" if path is None else path
    if not path.startswith("/") or any(ord(c) < 0x21 or ord(c) > 0x7e for c in path):
        raise ExplainError(f"--path {path!r} must be an origin-form target: /path[?query], no spaces")
    method = "GET" if method is None else method
    if not method or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in method):
        raise ExplainError(f"--method {method!r} is not an HTTP method token")
    headers: dict[str, str] = {}
    for h in header_args:
        name, sep, value = h.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not sep or not name or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name):
            raise ExplainError(f"--header must be NAME:VALUE, got {h!r}")
        # Repeated fields are joined with "," as the worker does (routing/http.py).
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return HttpRequest(authority=host, path=path, method=method, headers=tuple(headers.items()))


def config_from_dump(dump: Mapping[str, Any], admin: str) -> tuple[Config, str]:
    """The Config a running proxy routes with, from its /config_dump: the document it
    loaded, with the settings it runs with (so the environment it saw is respected)."""
    doc = dump.get("document")
    if not isinstance(doc, Mapping):
        raise ExplainError(f"the proxy at {admin} does not report its config document in /config_dump "
                           "(an older fastproxy?): use --config with its file instead")
    settings = (dump.get("config") or {}).get("settings")
    if not isinstance(settings, Mapping):
        raise ExplainError(f"the /config_dump of {admin} has no config.settings")
    config = load({**doc, "settings": dict(settings)}, {})
    source = f"admin {admin} generation {dump.get('generation')}"
    if dump.get("source"):
        source += f" (loaded from {dump['source']})"
    return config, source


def explain_args(args: argparse.Namespace, environ: Mapping[str, str], config_text: bytes | None,
                 config_source: str | None, dump: Mapping[str, Any] | None = None) -> str:
    """Pure core of run(): the rendered answer. dump: a running proxy's /config_dump
    (--admin), used instead of config_text. Raises ExplainError, InitConfigError, ConfigError."""
    q = query_from_args(args)
    request = request_from_args(args)
    cfg = init_config(args.init_flags, environ)
    if dump is not None:
        config, source = config_from_dump(dump, args.admin)
    elif config_text is None:
        config, source = load_default(environ), "embedded default"
    else:
        config, source = load_text(config_text, environ, source=config_source or "config"), config_source
    doc = explain(q, cfg, config, source or "config", request)
    return render_json(doc) if args.output == "json" else render_text(doc)


def parse_admin(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ExplainError(f"--admin must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def fetch_config_dump(admin: str, timeout: float = 5.0) -> dict:
    """GET /config_dump from a running proxy's admin API (the only I/O of --admin)."""
    host, port = parse_admin(admin)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/config_dump")
        resp = conn.getresponse()
        body = resp.read()
    except OSError as e:
        raise OSError(f"cannot read http://{admin}/config_dump: {e}") from e
    finally:
        conn.close()
    if resp.status != 200:
        raise OSError(f"GET http://{admin}/config_dump: status {resp.status}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise OSError(f"http://{admin}/config_dump is not JSON: {e}") from None


_DESCRIPTION = """\
Explain what happens to one TCP connection: which interception rule captures
it or lets it bypass the proxy (evaluated on the exact rules `fastproxy init`
installs for the given flags), which listener gets it, how its protocol is
detected, and where the routing table sends it.

The init flags come from --init-flags (istio-iptables flags, as given to
`fastproxy init`) and the FASTPROXY_* variables; the config from --config,
$FASTPROXY_CONFIG or the embedded default, with FASTPROXY_* settings applied
as `fastproxy run` does; or, with --admin, from a running proxy's /config_dump
(the document and settings it runs with). With --host, step 5 shows the
virtual service route an HTTP/1 request with that Host (--path, --method,
--header) takes on this connection.

examples:
  fastproxy explain 10.96.0.10:5432
  fastproxy explain 10.0.0.7:8080 --direction inbound --init-flags="-d 8080"
  fastproxy explain [2001:db8::10]:443 --init-flags=--dual-stack -o json
  fastproxy explain 10.96.0.30:80 --host reviews.default.svc --path /api --header x-canary:yes
  fastproxy explain 10.96.0.30:80 --admin 127.0.0.1:15000 --host reviews.default.svc -o json
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `explain` on the main CLI's subparsers."""
    p = subparsers.add_parser("explain", help="explain how one connection is captured, detected and routed",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dst", metavar="DST", help="destination IP:PORT, or [IPv6]:PORT")
    p.add_argument("--direction", choices=(OUTBOUND, INBOUND), default=OUTBOUND,
                   help="outbound: opened by a process in the pod (default); inbound: arriving from another host")
    p.add_argument("--src", help="source address (e.g. 127.0.0.6 for the proxy's inbound passthrough)")
    p.add_argument("--uid", type=int,
                   help="uid of the process opening an outbound connection (default: not the proxy's)")
    p.add_argument("--gid", type=int, help="gid of that process (default: not the proxy's)")
    p.add_argument("--iface", help="interface it leaves by (outbound) or arrives on (inbound); "
                                   "default lo for loopback, else eth0")
    p.add_argument("--config", "-c", help=f"config file (default: ${CONFIG_FILE_VAR}, else the embedded default)")
    p.add_argument("--init-flags", default=None, metavar="FLAGS",
                   help="fastproxy init / istio-iptables flags, one string: --init-flags=\"-x 10.0.0.0/8 -d 22\"")
    p.add_argument("--admin", metavar="HOST:PORT",
                   help="explain against a running proxy: its config (and settings) from its admin API's "
                        "/config_dump, instead of --config")
    p.add_argument("--host", help="an HTTP/1 request's Host: adds step 5, the virtual service route it takes")
    p.add_argument("--path", help="that request's path and query (default /)")
    p.add_argument("--method", help="that request's method (default GET)")
    p.add_argument("--header", action="append", metavar="NAME:VALUE",
                   help="a header field of that request (repeatable)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """`fastproxy explain`: 0 answered, 1 unreadable config (or admin API), 2 bad arguments or flags."""
    path = args.config or os.environ.get(CONFIG_FILE_VAR) or None
    text = dump = None
    if args.admin:
        if args.config:
            print("fastproxy explain: --admin and --config are exclusive", file=sys.stderr)
            return 2
        try:
            dump = fetch_config_dump(args.admin)
        except ExplainError as e:
            print(f"fastproxy explain: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"fastproxy explain: {e}", file=sys.stderr)
            return 1
        path = None
    elif path:
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as e:
            print(f"fastproxy explain: cannot read config {path}: {e.strerror}", file=sys.stderr)
            return 1
    try:
        sys.stdout.write(explain_args(args, os.environ, text, path, dump))
    except (ExplainError, InitConfigError) as e:
        print(f"fastproxy explain: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"fastproxy explain: config error: {e}", file=sys.stderr)
        return 1
    return 0
