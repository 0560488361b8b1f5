"""Pure: InitConfig -> the exact `iptables-restore --noflush` input, one per
address family, plus the text surgery the executor needs (parse a save
output, replace or remove our part). No I/O here.

The policy is istio-iptables' (tools/istio-iptables/pkg/capture), with our
chain names and one structural rule: a built-in chain we use gets exactly
one rule from us, a jump to FASTPROXY_<BUILTIN>; everything else lives in
FASTPROXY_* chains. Every rule carries `-m comment --comment "fastproxy: <why>"`.
Rules are written in the canonical form iptables-save prints (`-m tcp`,
hex marks, full TPROXY/CONNMARK options), for legacy and nft alike, so
the installed state can be compared with what we want line by line.

Tables and chains (REDIRECT mode; TPROXY adds mangle, DNS adds raw):

  nat  PREROUTING -> FASTPROXY_PREROUTING  interfaces (-k, -c), then -> FASTPROXY_INBOUND
       FASTPROXY_INBOUND      proxy's own ports, -d, then -> FASTPROXY_IN_REDIRECT
       FASTPROXY_IN_REDIRECT  REDIRECT to the inbound port (15006)
       OUTPUT -> FASTPROXY_OUTPUT  -c, -o, 127.0.0.6, proxy uid/gid, DNS, localhost, -x, -q, -i
       FASTPROXY_REDIRECT     REDIRECT to the outbound port (15001)
  mangle (TPROXY) PREROUTING -> FASTPROXY_PREROUTING -> FASTPROXY_INBOUND
       -> FASTPROXY_DIVERT (mark + accept) | FASTPROXY_TPROXY (TPROXY to 15006)
       OUTPUT -> FASTPROXY_OUTPUT  marks for the proxy's loopback and transparent traffic
  raw  (--redirect-dns) conntrack zones keeping the app's DNS apart from the proxy's

Evaluation order of FASTPROXY_OUTPUT (first match wins) is Istio's:
  1. excluded interfaces (-c) and ports (-o): not captured
  2. from 127.0.0.6 over lo (inbound passthrough): not captured
  3. per proxy uid, then gid: to this pod's own address over lo -> inbound
     listener; the app over lo -> not captured (unless -i names a loopback
     range); anything else from the proxy -> not captured
  4. DNS (--redirect-dns) -> 15053
  5. to 127.0.0.1 / ::1: not captured
  6. -x ranges: not captured; -q ports, then -i ranges -> outbound listener
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .flags import (
    ALL, DNS_CAPTURE_PORT, INBOUND_PASSTHROUGH_V4, INBOUND_PASSTHROUGH_V6, OUTBOUND_MARK, PROXY_OWN_PORTS,
    InitConfig)

CHAIN_PREFIX = "FASTPROXY_"
COMMENT_PREFIX = "fastproxy: "
# Owner markers (iptables-nft only): empty chains recording what fastproxy
# had to create, so --cleanup can delete it again once it is empty:
# FASTPROXY_OWNS_TABLE for a table, FASTPROXY_OWNS_<BUILTIN> for a base chain
# (iptables-nft creates a table's base chains only when a rule needs them).
OWNER_MARKER_CHAIN = "FASTPROXY_OWNS_TABLE"
OWNER_MARKER_PREFIX = "FASTPROXY_OWNS_"
BUILTIN_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
TABLE_ORDER = ("mangle", "nat", "raw")

PREROUTING = "FASTPROXY_PREROUTING"
INBOUND = "FASTPROXY_INBOUND"
IN_REDIRECT = "FASTPROXY_IN_REDIRECT"
OUTPUT = "FASTPROXY_OUTPUT"
REDIRECT = "FASTPROXY_REDIRECT"
DIVERT = "FASTPROXY_DIVERT"
TPROXY = "FASTPROXY_TPROXY"

_FULL_MASK = "0xffffffff"


@dataclass(frozen=True)
class Family:
    """What differs between iptables and ip6tables."""

    version: int
    loopback: str        # the one address never captured as a destination
    passthrough: str     # source of the proxy's inbound passthrough connections
    any_address: str     # TPROXY --on-ip
    tool: str            # iptables / ip6tables

    def nets(self, networks) -> list[str]:
        return [str(n) for n in networks if n.version == self.version]


V4 = Family(4, "127.0.0.1/32", f"{INBOUND_PASSTHROUGH_V4}/32", "0.0.0.0", "iptables")
V6 = Family(6, "::1/128", f"{INBOUND_PASSTHROUGH_V6}/128", "::", "ip6tables")
FAMILIES = (V4, V6)


def _hdr(s: str | None = None, d: str | None = None, i: str | None = None, o: str | None = None,
         p: str | None = None) -> list[str]:
    """The IP-header part of a rule in iptables-save's order; a value
    starting with '!' is negated."""
    out: list[str] = []
    for opt, value in (("-s", s), ("-d", d), ("-i", i), ("-o", o), ("-p", p)):
        if value is None:
            continue
        if value.startswith("!"):
            out += ["!", opt, value[1:]]
        else:
            out += [opt, value]
    return out


def _dport(proto: str, port: int, negate: bool = False) -> list[str]:
    return ["-m", proto] + (["!"] if negate else []) + ["--dport", str(port)]


def _sport(proto: str, port: int) -> list[str]:
    return ["-m", proto, "--sport", str(port)]


def _dports(ports) -> list[str]:
    return ["-m", "multiport", "--dports", ",".join(str(p) for p in ports)]


def _owner(kind: str, ident: int, negate: bool = False) -> list[str]:
    return ["-m", "owner"] + (["!"] if negate else []) + [f"--{kind}-owner", str(ident)]


def _mark(value: int, negate: bool = False) -> list[str]:
    return ["-m", "mark"] + (["!"] if negate else []) + ["--mark", hex(value)]


# iptables-save escapes quotes and backslashes; comments keep to these so
# the saved text is byte-for-byte what we wrote.
COMMENT_TEXT = re.compile(r"[A-Za-z0-9 .,:;()/*+=_-]{1,240}")


def _quote_comment(why: str) -> str:
    text = COMMENT_PREFIX + why
    if not COMMENT_TEXT.fullmatch(text):
        raise ValueError(f"comment not usable in iptables: {text!r}")
    return f'"{text}"'


@dataclass
class Table:
    """One table's part of the ruleset: our chains in creation order, and
    the jumps from built-in chains."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    jumps: list[str] = field(default_factory=list)


@dataclass
class Ruleset:
    tables: dict[str, Table] = field(default_factory=dict)

    def chain(self, table: str, name: str) -> None:
        self.tables.setdefault(table, Table()).chains.setdefault(name, [])

    def add(self, table: str, chain: str, why: str, match: list[str], target: str) -> None:
        line = self._line(chain, why, match, target)
        t = self.tables.setdefault(table, Table())
        if chain in BUILTIN_CHAINS:
            t.jumps.append(line)
        else:
            t.chains.setdefault(chain, []).append(line)

    @staticmethod
    def _line(chain: str, why: str, match: list[str], target: str) -> str:
        parts = ["-A", chain, *match, "-m", "comment", "--comment", _quote_comment(why), "-j", target]
        return " ".join(parts)

    def render(self, heading: str) -> str:
        if not self.tables:
            return ""
        out = [f"# {heading}"]
        for name in TABLE_ORDER:
            t = self.tables.get(name)
            if t is None:
                continue
            out.append(f"*{name}")
            out += [f":{c} - [0:0]" for c in t.chains]
            for rules in t.chains.values():
                out += rules
            out += t.jumps
            out.append("COMMIT")
        return "\n".join(out) + "\n"


def build(cfg: InitConfig, fam: Family) -> Ruleset:
    """The ruleset of one family; empty for IPv6 without dual stack."""
    rs = Ruleset()
    if fam.version == 6 and not cfg.dual_stack:
        return rs
    _nat_prerouting(rs, cfg, fam)
    _nat_output(rs, cfg, fam)
    if cfg.tproxy and cfg.inbound_enabled:
        _mangle(rs, cfg, fam)
    if cfg.redirect_dns:
        _raw_dns(rs, cfg)
    return rs


def render(cfg: InitConfig, fam: Family) -> str:
    """The iptables-restore --noflush input for one family ('' when nothing)."""
    mode = cfg.inbound_interception_mode
    return build(cfg, fam).render(f"fastproxy init: IPv{fam.version} interception ({mode}), "
                                  f"{fam.tool}-restore --noflush")


def _outbound_wanted(cfg: InitConfig, fam: Family) -> bool:
    include = cfg.outbound_ip_ranges_include
    return include == ALL or bool(fam.nets(include)) or bool(cfg.outbound_ports_include)


def _nat_prerouting(rs: Ruleset, cfg: InitConfig, fam: Family) -> None:
    nat_inbound = cfg.inbound_enabled and not cfg.tproxy
    if not (nat_inbound or cfg.kube_virt_interfaces or cfg.exclude_interfaces):
        return
    rs.chain("nat", PREROUTING)
    if nat_inbound:
        rs.chain("nat", INBOUND)
        rs.chain("nat", IN_REDIRECT)
    include = cfg.outbound_ip_ranges_include
    for iface in cfg.kube_virt_interfaces:
        if include == ALL:
            rs.add("nat", PREROUTING, f"from virtual interface {iface}: treated as outbound (-k)",
                   _hdr(i=iface), REDIRECT)
        else:
            for net in fam.nets(include):
                rs.add("nat", PREROUTING, f"from virtual interface {iface} to {net}: treated as outbound (-k, -i)",
                       _hdr(d=net, i=iface), REDIRECT)
    for iface in cfg.kube_virt_interfaces:
        rs.add("nat", PREROUTING, f"virtual interface {iface}: never inbound capture (-k)", _hdr(i=iface), "RETURN")
    for iface in cfg.exclude_interfaces:
        rs.add("nat", PREROUTING, f"interface {iface} is excluded (-c)", _hdr(i=iface), "RETURN")
    if nat_inbound:
        rs.add("nat", PREROUTING, "inbound TCP", [], INBOUND)
        _inbound_ports(rs, "nat", cfg, IN_REDIRECT, established=False)
    rs.add("nat", "PREROUTING", "enter fastproxy inbound capture", _hdr(p="tcp"), PREROUTING)


def _inbound_ports(rs: Ruleset, table: str, cfg: InitConfig, capture: str, established: bool) -> None:
    """The port selection of FASTPROXY_INBOUND. With `established` (TPROXY),
    packets of connections already diverted go to FASTPROXY_DIVERT first."""
    own = ",".join(str(p) for p in PROXY_OWN_PORTS)
    rs.add(table, INBOUND, f"proxy ports {own} (admin, metrics, health, prometheus)",
           _hdr(p="tcp") + _dports(PROXY_OWN_PORTS), "RETURN")
    ct = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"]
    if cfg.inbound_ports_include == ALL:
        for port in cfg.inbound_ports_exclude:
            rs.add(table, INBOUND, f"inbound port {port} is excluded (-d)", _hdr(p="tcp") + _dport("tcp", port),
                   "RETURN")
        if established:
            rs.add(table, INBOUND, "packets of connections already diverted", _hdr(p="tcp") + ct, DIVERT)
        rs.add(table, INBOUND, "every other inbound port (-b *)", _hdr(p="tcp"), capture)
        return
    for port in cfg.inbound_ports_include:
        if established:
            rs.add(table, INBOUND, f"inbound port {port}: packets of connections already diverted",
                   _hdr(p="tcp") + _dport("tcp", port) + ct, DIVERT)
        rs.add(table, INBOUND, f"inbound port {port} (-b)", _hdr(p="tcp") + _dport("tcp", port), capture)


def _nat_output(rs: Ruleset, cfg: InitConfig, fam: Family) -> None:
    outbound = _outbound_wanted(cfg, fam)
    rs.chain("nat", OUTPUT)
    rs.chain("nat", IN_REDIRECT)
    if outbound:
        rs.chain("nat", REDIRECT)
    for iface in cfg.exclude_interfaces:
        rs.add("nat", OUTPUT, f"interface {iface} is excluded (-c)", _hdr(o=iface), "RETURN")
    for port in cfg.outbound_ports_exclude:
        rs.add("nat", OUTPUT, f"outbound port {port} is excluded (-o)", _hdr(p="tcp") + _dport("tcp", port), "RETURN")
        if cfg.redirect_dns:
            rs.add("nat", OUTPUT, f"outbound port {port} is excluded (-o, udp)", _hdr(p="udp") + _dport("udp", port),
                   "RETURN")
    rs.add("nat", OUTPUT, f"inbound passthrough from {fam.passthrough.split('/')[0]}: not captured again",
           _hdr(s=fam.passthrough, o="lo"), "RETURN")
    dns = cfg.redirect_dns
    loopback_included = any(n.network_address.is_loopback for n in
                            (() if cfg.outbound_ip_ranges_include == ALL else cfg.outbound_ip_ranges_include))
    for kind, ids in (("uid", cfg.proxy_uids), ("gid", cfg.proxy_gids)):
        for ident in ids:
            not_dns = _dport("tcp", 53, negate=True) if dns else []
            rs.add("nat", OUTPUT, f"proxy ({kind} {ident}) to this pod address: to the inbound listener",
                   _hdr(d="!" + fam.loopback, o="lo", p="tcp") + not_dns + _owner(kind, ident), IN_REDIRECT)
            if not loopback_included:
                proto = _hdr(o="lo", p="tcp") + not_dns if dns else _hdr(o="lo")
                rs.add("nat", OUTPUT, f"app ({kind} not {ident}) to itself over lo: not captured",
                       proto + _owner(kind, ident, negate=True), "RETURN")
            rs.add("nat", OUTPUT, f"proxy traffic ({kind} {ident}) is never captured",
                   _owner(kind, ident), "RETURN")
    if dns:
        for proto in ("udp", "tcp"):
            rs.add("nat", OUTPUT, f"DNS ({proto}) to the proxy DNS listener :{DNS_CAPTURE_PORT} (--redirect-dns)",
                   _hdr(p=proto) + _dport(proto, 53), f"REDIRECT --to-ports {DNS_CAPTURE_PORT}")
    rs.add("nat", OUTPUT, f"to {fam.loopback.split('/')[0]}: never captured", _hdr(d=fam.loopback), "RETURN")
    for net in fam.nets(cfg.outbound_ip_ranges_exclude):
        rs.add("nat", OUTPUT, f"destination {net} is excluded (-x)", _hdr(d=net), "RETURN")
    for port in cfg.outbound_ports_include:
        rs.add("nat", OUTPUT, f"outbound port {port} is always captured (-q)", _hdr(p="tcp") + _dport("tcp", port),
               REDIRECT)
    if cfg.outbound_ip_ranges_include == ALL:
        rs.add("nat", OUTPUT, "all other outbound TCP (-i *)", [], REDIRECT)
    else:
        for net in fam.nets(cfg.outbound_ip_ranges_include):
            rs.add("nat", OUTPUT, f"destination {net} is captured (-i)", _hdr(d=net), REDIRECT)
    rs.add("nat", IN_REDIRECT, f"to the inbound listener :{cfg.inbound_port}", _hdr(p="tcp"),
           f"REDIRECT --to-ports {cfg.inbound_port}")
    if outbound:
        rs.add("nat", REDIRECT, f"to the outbound listener :{cfg.outbound_port}", _hdr(p="tcp"),
               f"REDIRECT --to-ports {cfg.outbound_port}")
    rs.add("nat", "OUTPUT", "enter fastproxy outbound capture", [], OUTPUT)


def _mangle(rs: Ruleset, cfg: InitConfig, fam: Family) -> None:
    """TPROXY inbound interception (Istio's mangle rules)."""
    mark, own_lo = cfg.tproxy_mark, OUTBOUND_MARK
    for chain in (PREROUTING, INBOUND, DIVERT, TPROXY, OUTPUT):
        rs.chain("mangle", chain)
    for iface in cfg.exclude_interfaces:
        rs.add("mangle", PREROUTING, f"interface {iface} is excluded (-c)", _hdr(i=iface), "RETURN")
    for iface in cfg.kube_virt_interfaces:
        rs.add("mangle", PREROUTING, f"virtual interface {iface}: never inbound capture (-k)", _hdr(i=iface),
               "RETURN")
    rs.add("mangle", PREROUTING, "inbound TCP", [], INBOUND)
    rs.add("mangle", PREROUTING, f"remember mark {mark} of proxy transparent connections",
           _mark(mark), f"CONNMARK --save-mark --nfmask {_FULL_MASK} --ctmask {_FULL_MASK}")

    rs.add("mangle", INBOUND, f"already diverted (mark {mark})", _hdr(p="tcp") + _mark(mark), "RETURN")
    rs.add("mangle", INBOUND, f"inbound passthrough from {fam.passthrough.split('/')[0]}: not captured again",
           _hdr(s=fam.passthrough, i="lo", p="tcp"), "RETURN")
    rs.add("mangle", INBOUND, f"over lo, unless the proxy connection to this pod (mark {own_lo})",
           _hdr(i="lo", p="tcp") + _mark(own_lo, negate=True), "RETURN")
    _inbound_ports(rs, "mangle", cfg, TPROXY, established=True)

    rs.add("mangle", DIVERT, f"mark {mark}: policy routing sends it to lo (table {cfg.tproxy_route_table})", [],
           f"MARK --set-xmark {hex(mark)}/{_FULL_MASK}")
    rs.add("mangle", DIVERT, "diverted", [], "ACCEPT")
    rs.add("mangle", TPROXY, f"to the inbound listener :{cfg.inbound_port}, original destination kept",
           _hdr(d="!" + fam.loopback, p="tcp"),
           f"TPROXY --on-port {cfg.inbound_port} --on-ip {fam.any_address} --tproxy-mark {hex(mark)}/{_FULL_MASK}")

    for iface in cfg.exclude_interfaces:
        rs.add("mangle", OUTPUT, f"interface {iface} is excluded (-c)", _hdr(o=iface), "RETURN")
    rs.add("mangle", OUTPUT, f"proxy transparent connections keep mark {mark}",
           _hdr(o="lo") + _mark(mark), "RETURN")
    for kind, ids in (("uid", cfg.proxy_uids), ("gid", cfg.proxy_gids)):
        for ident in ids:
            rs.add("mangle", OUTPUT, f"proxy ({kind} {ident}) to this pod address: mark {own_lo}",
                   _hdr(d="!" + fam.loopback, o="lo") + _owner(kind, ident),
                   f"MARK --set-xmark {hex(own_lo)}/{_FULL_MASK}")
    rs.add("mangle", OUTPUT, f"replies on transparent connections: mark {mark}, routed back to lo",
           ["-m", "connmark", "--mark", hex(mark)],
           f"CONNMARK --restore-mark --nfmask {_FULL_MASK} --ctmask {_FULL_MASK}")
    rs.add("mangle", "PREROUTING", "enter fastproxy TPROXY inbound capture", _hdr(p="tcp"), PREROUTING)
    rs.add("mangle", "OUTPUT", "enter fastproxy TPROXY marking", _hdr(p="tcp"), OUTPUT)


def _raw_dns(rs: Ruleset, cfg: InitConfig) -> None:
    """Conntrack zones for DNS (Istio's): zone 1 holds the proxy's queries to
    the servers and their answers, zone 2 the app's queries to the proxy, so
    the two UDP flows cannot collide in conntrack."""
    rs.chain("raw", PREROUTING)
    rs.chain("raw", OUTPUT)
    for kind, ids in (("uid", cfg.proxy_uids), ("gid", cfg.proxy_gids)):
        for ident in ids:
            rs.add("raw", OUTPUT, f"DNS queries of the proxy ({kind} {ident}): conntrack zone 1",
                   _hdr(p="udp") + _dport("udp", 53) + _owner(kind, ident), "CT --zone 1")
            rs.add("raw", OUTPUT, f"DNS answers of the proxy ({kind} {ident}) to the app: conntrack zone 2",
                   _hdr(p="udp") + _sport("udp", DNS_CAPTURE_PORT) + _owner(kind, ident), "CT --zone 2")
    rs.add("raw", OUTPUT, "DNS queries of the app: conntrack zone 2", _hdr(p="udp") + _dport("udp", 53),
           "CT --zone 2")
    rs.add("raw", PREROUTING, "DNS answers from servers: conntrack zone 1", _hdr(p="udp") + _sport("udp", 53),
           "CT --zone 1")
    rs.add("raw", "PREROUTING", "enter fastproxy DNS conntrack zones", _hdr(p="udp"), PREROUTING)
    rs.add("raw", "OUTPUT", "enter fastproxy DNS conntrack zones", _hdr(p="udp"), OUTPUT)


# ---------------------------------------------------------------------------
# Reading iptables-save output, and the replace / remove transactions.

_OUR_COMMENT = re.compile(r'--comment "?' + re.escape(COMMENT_PREFIX))


def is_ours(rule: str) -> bool:
    """Whether a saved rule line carries our comment tag."""
    return bool(_OUR_COMMENT.search(rule))


@dataclass
class SavedTable:
    """One table of an iptables-save (or restore) text."""

    policies: dict[str, str] = field(default_factory=dict)    # built-in chain -> policy
    chains: dict[str, list[str]] = field(default_factory=dict)  # every chain -> its -A lines

    def ours(self) -> dict[str, list[str]]:
        """Our chains with their rules, and each built-in chain's rules that carry our comment."""
        out: dict[str, list[str]] = {}
        for chain, rules in self.chains.items():
            if chain.startswith(CHAIN_PREFIX):
                out[chain] = list(rules)
            elif chain in BUILTIN_CHAINS:
                mine = [r for r in rules if is_ours(r)]
                if mine:
                    out[chain] = mine
        return out

    def chain_is_empty(self, chain: str, ignoring_ours: bool = False) -> bool:
        """A chain with no rules (not counting ours) and an ACCEPT policy."""
        rules = [r for r in self.chains.get(chain, []) if not (ignoring_ours and is_ours(r))]
        return not rules and self.policies.get(chain, "ACCEPT") == "ACCEPT"

    def is_empty(self, ignoring_ours: bool = False) -> bool:
        """No rules, no user chains, every policy ACCEPT: indistinguishable
        from no table. With `ignoring_ours`: once our part is removed."""
        mine = self.ours() if ignoring_ours else {}
        for chain, rules in self.chains.items():
            if chain in mine and (chain.startswith(CHAIN_PREFIX) or len(mine[chain]) == len(rules)):
                continue
            if chain not in BUILTIN_CHAINS or rules:
                return False
        return all(p == "ACCEPT" for p in self.policies.values())


def parse(text: str) -> dict[str, SavedTable]:
    """Parses iptables-save output or iptables-restore input."""
    tables: dict[str, SavedTable] = {}
    cur: SavedTable | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], SavedTable())
        elif cur is None:
            raise ValueError(f"rule outside a table: {line!r}")
        elif line.startswith(":"):
            name, policy = (line[1:].split() + ["-"])[:2]
            cur.chains.setdefault(name, [])
            if name in BUILTIN_CHAINS:
                cur.policies[name] = policy
        elif line.startswith("-A "):
            chain = line.split()[1]
            cur.chains.setdefault(chain, []).append(line)
    return tables


def ours(tables: dict[str, SavedTable]) -> dict[str, dict[str, list[str]]]:
    out = {}
    for name, t in tables.items():
        mine = t.ours()
        if mine:
            out[name] = mine
    return out


def owned_tables(tables: dict[str, SavedTable]) -> set[str]:
    """Tables that carry our table marker (created by fastproxy)."""
    return {name for name, t in tables.items() if OWNER_MARKER_CHAIN in t.chains}


def owned_base_chains(tables: dict[str, SavedTable]) -> dict[str, set[str]]:
    """Per table, the built-in chains fastproxy created (from their markers)."""
    out: dict[str, set[str]] = {}
    for name, t in tables.items():
        for chain in t.chains:
            builtin = chain[len(OWNER_MARKER_PREFIX):]
            if chain.startswith(OWNER_MARKER_PREFIX) and builtin in BUILTIN_CHAINS:
                out.setdefault(name, set()).add(builtin)
    return out


def markers_for(current: dict[str, SavedTable], desired: str,
                existing_base_chains: dict[str, set[str]]) -> dict[str, list[str]]:
    """The owner markers `desired` should carry on top of `current` (iptables-nft):
    a table absent now is ours; in a table present now, a built-in chain we
    jump from that has no base chain yet is ours; markers already there stay."""
    want = parse(desired) if desired else {}
    owned_t, owned_c = owned_tables(current), owned_base_chains(current)
    out: dict[str, list[str]] = {}
    for table, t in want.items():
        if table not in current or table in owned_t:
            out[table] = [OWNER_MARKER_CHAIN]
            continue
        used = {c for c, rules in t.chains.items() if c in BUILTIN_CHAINS and rules}
        new = {c for c in used if c not in existing_base_chains.get(table, set())}
        chains = sorted(new | owned_c.get(table, set()))
        if chains:
            out[table] = [OWNER_MARKER_PREFIX + c for c in chains]
    return out


def with_markers(desired: str, markers: dict[str, list[str]]) -> str:
    """`desired` with the owner marker chains declared in their tables."""
    if not any(markers.values()):
        return desired
    out = []
    for line in desired.splitlines():
        out.append(line)
        if line.startswith("*"):
            out += [f":{m} - [0:0]" for m in markers.get(line[1:], [])]
    return "\n".join(out) + "\n"


def nft_base_chains(listing: str) -> set[str]:
    """Names of the base chains (those with a hook) in an `nft list table` listing."""
    found, chain = set(), None
    for raw in listing.splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            chain = line.split()[1]
        elif chain and line.startswith("type ") and " hook " in line:
            found.add(chain)
            chain = None
        elif line:
            chain = None
    return found


def replace_input(current: dict[str, SavedTable], desired: str,
                  heading: str = "replace the rules of an earlier fastproxy init") -> str | None:
    """The iptables-restore --noflush input that turns our part of `current`
    into exactly `desired` in one transaction per table, leaving every other
    rule alone; None when it already is. Chains are declared first (which
    creates or flushes them), our old jumps deleted, chains we no longer use
    flushed and deleted, then the new rules appended."""
    want_tables = parse(desired)
    have = ours(current)
    want = ours(want_tables)
    if have == want:
        return None
    if not have:
        return desired
    out = [f"# fastproxy init: {heading}"]
    for table in _table_order(set(have) | set(want)):
        have_t, want_t = have.get(table, {}), want.get(table, {})
        out.append(f"*{table}")
        want_chains = [c for c in want_tables[table].chains if c.startswith(CHAIN_PREFIX)] if table in want else []
        out += [f":{c} - [0:0]" for c in want_chains]
        for chain, rules in have_t.items():
            if chain in BUILTIN_CHAINS:
                out += ["-D" + r[2:] for r in rules]
        stale = [c for c in have_t if c.startswith(CHAIN_PREFIX) and c not in want_chains]
        out += [f"-F {c}" for c in stale]
        out += [f"-X {c}" for c in stale]
        for c in want_chains:
            out += want_t.get(c, [])
        for chain, rules in want_t.items():
            if chain in BUILTIN_CHAINS:
                out += rules
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def cleanup_input(current: dict[str, SavedTable]) -> str | None:
    """The iptables-restore --noflush input that removes all of our part of
    `current` and nothing else; None when there is nothing of ours."""
    return replace_input(current, "", heading="remove the rules of fastproxy init")


def _table_order(names: set[str]) -> list[str]:
    return [t for t in TABLE_ORDER if t in names] + sorted(names - set(TABLE_ORDER))
