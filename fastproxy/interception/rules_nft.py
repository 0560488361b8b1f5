"""Pure: InitConfig -> one native nftables script (`nft -f`), the same policy
as rules_iptables in a single `table inet fastproxy` covering IPv4 and IPv6.

The script replaces the table atomically: `table` (create if missing),
`delete table`, then the full definition, all one nft transaction. Running
it twice leaves the same state as once, and removing the table removes
everything fastproxy added, and nothing else.

Each iptables table becomes a set of base chains at its priority:

  nat_prerouting  nat hook prerouting, dstnat   interfaces (-k, -c), then inbound
  nat_output      nat hook output, -100         = iptables FASTPROXY_OUTPUT
  mangle_prerouting / mangle_output             TPROXY; output is a `route` chain,
                                                so a mark set there re-routes the packet
                                                as iptables' mangle OUTPUT does
  raw_prerouting / raw_output                   DNS conntrack zones (--redirect-dns)

Regular chains (inbound, in_redirect, out_redirect, mangle_inbound, divert,
tproxy_inbound) mirror the iptables FASTPROXY_* chains; `redirect` and
`tproxy` are nft keywords, hence the longer names. Without --dual-stack each
base chain first returns IPv6 packets, as ip6tables would have no rules.
Every rule carries `comment "fastproxy: <why>"`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .flags import (
    ALL, DNS_CAPTURE_PORT, INBOUND_PASSTHROUGH_V4, INBOUND_PASSTHROUGH_V6, OUTBOUND_MARK, PROXY_OWN_PORTS,
    InitConfig)
from .rules_iptables import COMMENT_PREFIX, COMMENT_TEXT

TABLE = "fastproxy"
FAMILY = "inet"


@dataclass(frozen=True)
class _Fam:
    version: int
    kw: str           # nft address expression: ip / ip6
    loopback: str
    passthrough: str

    def nets(self, networks) -> list[str]:
        return [str(n) for n in networks if n.version == self.version]


_V4 = _Fam(4, "ip", "127.0.0.1", INBOUND_PASSTHROUGH_V4)
_V6 = _Fam(6, "ip6", "::1", INBOUND_PASSTHROUGH_V6)


def _iface(name: str) -> str:
    # iptables' trailing '+' wildcard is nftables' '*'.
    return f'"{name[:-1]}*"' if name.endswith("+") else f'"{name}"'


@dataclass
class _Chain:
    name: str
    hook: str | None = None   # "type nat hook output priority -100" for a base chain
    rules: list[str] = field(default_factory=list)

    def add(self, why: str, rule: str) -> None:
        text = COMMENT_PREFIX + why
        if not COMMENT_TEXT.fullmatch(text):
            raise ValueError(f"comment not usable: {text!r}")
        self.rules.append(f'{rule} comment "{text}"')


@dataclass
class _Script:
    cfg: InitConfig
    chains: dict[str, _Chain] = field(default_factory=dict)

    def chain(self, name: str, hook: str | None = None) -> _Chain:
        if name not in self.chains:
            c = self.chains[name] = _Chain(name, hook)
            if hook and not self.cfg.dual_stack:
                c.add("IPv6 is not captured (no --dual-stack)", "meta nfproto ipv6 return")
        return self.chains[name]

    def render(self) -> str:
        cfg = self.cfg
        out = [
            f"# fastproxy init: IPv4{'+IPv6' if cfg.dual_stack else ''} interception "
            f"({cfg.inbound_interception_mode}), nft -f",
            f"table {FAMILY} {TABLE}",
            f"delete table {FAMILY} {TABLE}",
            f"table {FAMILY} {TABLE} {{",
        ]
        for i, c in enumerate(self.chains.values()):
            if i:
                out.append("")
            out.append(f"\tchain {c.name} {{")
            if c.hook:
                out.append(f"\t\t{c.hook}; policy accept;")
            out += [f"\t\t{r}" for r in c.rules]
            out.append("\t}")
        out.append("}")
        return "\n".join(out) + "\n"


def render(cfg: InitConfig) -> str:
    """The whole `nft -f` script for `cfg`."""
    s = _Script(cfg)
    fams = [_V4, _V6] if cfg.dual_stack else [_V4]
    _nat_prerouting(s, cfg, fams)
    _nat_output(s, cfg, fams)
    if cfg.tproxy and cfg.inbound_enabled:
        _mangle(s, cfg, fams)
    if cfg.redirect_dns:
        _raw_dns(s, cfg)
    return s.render()


def render_cleanup() -> str:
    """The `nft -f` script removing everything fastproxy added (a no-op when absent)."""
    return (f"# fastproxy init --cleanup: remove table {FAMILY} {TABLE}\n"
            f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")


def _ports(ports) -> str:
    ps = list(ports)
    return str(ps[0]) if len(ps) == 1 else "{ " + ", ".join(str(p) for p in ps) + " }"


def _nat_prerouting(s: _Script, cfg: InitConfig, fams: list[_Fam]) -> None:
    nat_inbound = cfg.inbound_enabled and not cfg.tproxy
    if not (nat_inbound or cfg.kube_virt_interfaces or cfg.exclude_interfaces):
        return
    pre = s.chain("nat_prerouting", "type nat hook prerouting priority dstnat")
    pre.add("only TCP is captured", "meta l4proto != tcp return")
    include = cfg.outbound_ip_ranges_include
    for iface in cfg.kube_virt_interfaces:
        if include == ALL:
            pre.add(f"from virtual interface {iface}: treated as outbound (-k)",
                    f"iifname {_iface(iface)} jump out_redirect")
        else:
            for fam in fams:
                for net in fam.nets(include):
                    pre.add(f"from virtual interface {iface} to {net}: treated as outbound (-k, -i)",
                            f"iifname {_iface(iface)} {fam.kw} daddr {net} jump out_redirect")
    for iface in cfg.kube_virt_interfaces:
        pre.add(f"virtual interface {iface}: never inbound capture (-k)", f"iifname {_iface(iface)} return")
    for iface in cfg.exclude_interfaces:
        pre.add(f"interface {iface} is excluded (-c)", f"iifname {_iface(iface)} return")
    if nat_inbound:
        pre.add("inbound TCP", "jump inbound")
        inbound = s.chain("inbound")
        _inbound_ports(inbound, cfg, "in_redirect", established=False)


def _inbound_ports(chain: _Chain, cfg: InitConfig, capture: str, established: bool) -> None:
    own = ",".join(str(p) for p in PROXY_OWN_PORTS)
    chain.add(f"proxy ports {own} (admin, metrics, health, prometheus)", f"tcp dport {_ports(PROXY_OWN_PORTS)} return")
    ct = "ct state related,established"
    if cfg.inbound_ports_include == ALL:
        for port in cfg.inbound_ports_exclude:
            chain.add(f"inbound port {port} is excluded (-d)", f"tcp dport {port} return")
        if established:
            chain.add("packets of connections already diverted", f"{ct} jump divert")
        chain.add("every other inbound port (-b *)", f"jump {capture}")
        return
    for port in cfg.inbound_ports_include:
        if established:
            chain.add(f"inbound port {port}: packets of connections already diverted",
                      f"tcp dport {port} {ct} jump divert")
        chain.add(f"inbound port {port} (-b)", f"tcp dport {port} jump {capture}")


def _nat_output(s: _Script, cfg: InitConfig, fams: list[_Fam]) -> None:
    if cfg.inbound_enabled and not cfg.tproxy:
        s.chain("in_redirect")
    out = s.chain("nat_output", "type nat hook output priority -100")
    in_redirect = s.chain("in_redirect")
    include = cfg.outbound_ip_ranges_include
    outbound = include == ALL or any(f.nets(include) for f in fams) or bool(cfg.outbound_ports_include)
    for iface in cfg.exclude_interfaces:
        out.add(f"interface {iface} is excluded (-c)", f"oifname {_iface(iface)} return")
    for port in cfg.outbound_ports_exclude:
        out.add(f"outbound port {port} is excluded (-o)", f"tcp dport {port} return")
        if cfg.redirect_dns:
            out.add(f"outbound port {port} is excluded (-o, udp)", f"udp dport {port} return")
    for fam in fams:
        out.add(f"inbound passthrough from {fam.passthrough}: not captured again",
                f'oifname "lo" {fam.kw} saddr {fam.passthrough} return')
    dns = cfg.redirect_dns
    loopback_included = include != ALL and any(n.network_address.is_loopback for n in include)
    for kind, ids in (("uid", cfg.proxy_uids), ("gid", cfg.proxy_gids)):
        for ident in ids:
            tcp = "tcp dport != 53" if dns else "meta l4proto tcp"
            for fam in fams:
                out.add(f"proxy ({kind} {ident}) to this pod address: to the inbound listener",
                        f'oifname "lo" {fam.kw} daddr != {fam.loopback} {tcp} meta sk{kind} {ident} jump in_redirect')
            if not loopback_included:
                lo = 'oifname "lo" tcp dport != 53' if dns else 'oifname "lo"'
                out.add(f"app ({kind} not {ident}) to itself over lo: not captured",
                        f"{lo} meta sk{kind} != {ident} return")
            out.add(f"proxy traffic ({kind} {ident}) is never captured", f"meta sk{kind} {ident} return")
    if dns:
        for proto in ("udp", "tcp"):
            out.add(f"DNS ({proto}) to the proxy DNS listener :{DNS_CAPTURE_PORT} (--redirect-dns)",
                    f"{proto} dport 53 redirect to :{DNS_CAPTURE_PORT}")
    for fam in fams:
        out.add(f"to {fam.loopback}: never captured", f"{fam.kw} daddr {fam.loopback} return")
    for fam in fams:
        for net in fam.nets(cfg.outbound_ip_ranges_exclude):
            out.add(f"destination {net} is excluded (-x)", f"{fam.kw} daddr {net} return")
    for port in cfg.outbound_ports_include:
        out.add(f"outbound port {port} is always captured (-q)", f"tcp dport {port} jump out_redirect")
    if include == ALL:
        out.add("all other outbound TCP (-i *)", "jump out_redirect")
    else:
        for fam in fams:
            for net in fam.nets(include):
                out.add(f"destination {net} is captured (-i)", f"{fam.kw} daddr {net} jump out_redirect")
    in_redirect.add(f"to the inbound listener :{cfg.inbound_port}",
                    f"meta l4proto tcp redirect to :{cfg.inbound_port}")
    if outbound:
        s.chain("out_redirect").add(f"to the outbound listener :{cfg.outbound_port}",
                                f"meta l4proto tcp redirect to :{cfg.outbound_port}")


def _mangle(s: _Script, cfg: InitConfig, fams: list[_Fam]) -> None:
    mark, own_lo = cfg.tproxy_mark, OUTBOUND_MARK
    pre = s.chain("mangle_prerouting", "type filter hook prerouting priority mangle")
    pre.add("only TCP is captured", "meta l4proto != tcp return")
    for iface in cfg.exclude_interfaces:
        pre.add(f"interface {iface} is excluded (-c)", f"iifname {_iface(iface)} return")
    for iface in cfg.kube_virt_interfaces:
        pre.add(f"virtual interface {iface}: never inbound capture (-k)", f"iifname {_iface(iface)} return")
    pre.add("inbound TCP", "jump mangle_inbound")
    pre.add(f"remember mark {mark} of proxy transparent connections", f"meta mark {mark} ct mark set meta mark")

    inbound = s.chain("mangle_inbound")
    inbound.add(f"already diverted (mark {mark})", f"meta mark {mark} return")
    for fam in fams:
        inbound.add(f"inbound passthrough from {fam.passthrough}: not captured again",
                    f'iifname "lo" {fam.kw} saddr {fam.passthrough} return')
    inbound.add(f"over lo, unless the proxy connection to this pod (mark {own_lo})",
                f'iifname "lo" meta mark != {own_lo} return')
    _inbound_ports(inbound, cfg, "tproxy_inbound", established=True)

    s.chain("divert").add(f"mark {mark}: policy routing sends it to lo (table {cfg.tproxy_route_table})",
                          f"meta mark set {mark} accept")
    tproxy = s.chain("tproxy_inbound")
    for fam in fams:
        tproxy.add(f"to the inbound listener :{cfg.inbound_port}, original destination kept",
                   f"meta l4proto tcp {fam.kw} daddr != {fam.loopback} "
                   f"tproxy {fam.kw} to :{cfg.inbound_port} meta mark set {mark} accept")

    out = s.chain("mangle_output", "type route hook output priority mangle")
    out.add("only TCP is captured", "meta l4proto != tcp return")
    for iface in cfg.exclude_interfaces:
        out.add(f"interface {iface} is excluded (-c)", f"oifname {_iface(iface)} return")
    out.add(f"proxy transparent connections keep mark {mark}", f'oifname "lo" meta mark {mark} return')
    for kind, ids in (("uid", cfg.proxy_uids), ("gid", cfg.proxy_gids)):
        for ident in ids:
            for fam in fams:
                out.add(f"proxy ({kind} {ident}) to this pod address: mark {own_lo}",
                        f'oifname "lo" {fam.kw} daddr != {fam.loopback} meta sk{kind} {ident} meta mark set {own_lo}')
    out.add(f"replies on transparent connections: mark {mark}, routed back to lo",
            f"ct mark {mark} meta mark set ct mark")


def _raw_dns(s: _Script, cfg: InitConfig) -> None:
    pre = s.chain("raw_prerouting", "type filter hook prerouting priority raw")
    pre.add("DNS answers from servers: conntrack zone 1", "udp sport 53 ct zone set 1")
    out = s.chain("raw_output", "type filter hook output priority raw")
    for kind, ids in (("uid", cfg.proxy_uids), ("gid", cfg.proxy_gids)):
        for ident in ids:
            out.add(f"DNS queries of the proxy ({kind} {ident}): conntrack zone 1",
                    f"udp dport 53 meta sk{kind} {ident} ct zone set 1")
            out.add(f"DNS answers of the proxy ({kind} {ident}) to the app: conntrack zone 2",
                    f"udp sport {DNS_CAPTURE_PORT} meta sk{kind} {ident} ct zone set 2")
    out.add("DNS queries of the app: conntrack zone 2", "udp dport 53 ct zone set 2")
