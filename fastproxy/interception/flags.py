"""The configuration of `fastproxy init`: Istio's istio-iptables flags, the
same meaning, each also a FASTPROXY_* environment variable.

Precedence: a flag beats its environment variable, which beats the default.
Every environment variable is a named constant here and is parsed in one
function, from_sources(). Errors are InitConfigError and name the flag or
the variable, and say what is wrong with the value.

Defaults differ from istio-iptables in one respect: inbound ports (-b) and
outbound ranges (-i) default to '*', which is what Istio's injector always
passes, so a bare `fastproxy init` captures everything. An empty value (-b ''
or FASTPROXY_INBOUND_PORTS_INCLUDE=) disables that direction, as in Istio.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Wildcard = Literal["*"]
ALL: Wildcard = "*"

REDIRECT = "REDIRECT"
TPROXY = "TPROXY"
BACKENDS = ("auto", "iptables-legacy", "iptables-nft", "nft")

# Ports fastproxy itself serves; inbound traffic to them is never captured
# (admin, merged metrics, /healthz/ready, /stats/prometheus).
PROXY_OWN_PORTS = (15000, 15020, 15021, 15090)
# The local DNS proxy, target of --redirect-dns.
DNS_CAPTURE_PORT = 15053
# Source address the proxy uses to reach the app for inbound passthrough;
# connections from it are never captured again.
INBOUND_PASSTHROUGH_V4 = "127.0.0.6"
INBOUND_PASSTHROUGH_V6 = "::6"
# In TPROXY mode, the proxy's own connections to the pod's address over lo
# carry this mark so the inbound chain can tell them from the app's (Istio's 1338).
OUTBOUND_MARK = 1338
# --run-validation connects to this port on 127.0.0.6 / ::6 (Istio's probe port).
VALIDATION_PROBE_PORT = 15002
VALIDATION_TIMEOUT_S = 5.0

# Environment variables, one per flag. FASTPROXY_OUTBOUND_PORT and
# FASTPROXY_INBOUND_PORT are shared with `fastproxy run`: the same variable
# sets the listener's port and the port traffic is redirected to.
FASTPROXY_OUTBOUND_PORT = "FASTPROXY_OUTBOUND_PORT"
FASTPROXY_INBOUND_PORT = "FASTPROXY_INBOUND_PORT"
FASTPROXY_PROXY_UID = "FASTPROXY_PROXY_UID"
FASTPROXY_PROXY_GID = "FASTPROXY_PROXY_GID"
FASTPROXY_INBOUND_INTERCEPTION_MODE = "FASTPROXY_INBOUND_INTERCEPTION_MODE"
FASTPROXY_INBOUND_TPROXY_MARK = "FASTPROXY_INBOUND_TPROXY_MARK"
FASTPROXY_INBOUND_TPROXY_ROUTE_TABLE = "FASTPROXY_INBOUND_TPROXY_ROUTE_TABLE"
FASTPROXY_INBOUND_PORTS_INCLUDE = "FASTPROXY_INBOUND_PORTS_INCLUDE"
FASTPROXY_INBOUND_PORTS_EXCLUDE = "FASTPROXY_INBOUND_PORTS_EXCLUDE"
FASTPROXY_OUTBOUND_IP_RANGES_INCLUDE = "FASTPROXY_OUTBOUND_IP_RANGES_INCLUDE"
FASTPROXY_OUTBOUND_IP_RANGES_EXCLUDE = "FASTPROXY_OUTBOUND_IP_RANGES_EXCLUDE"
FASTPROXY_OUTBOUND_PORTS_INCLUDE = "FASTPROXY_OUTBOUND_PORTS_INCLUDE"
FASTPROXY_OUTBOUND_PORTS_EXCLUDE = "FASTPROXY_OUTBOUND_PORTS_EXCLUDE"
FASTPROXY_KUBE_VIRT_INTERFACES = "FASTPROXY_KUBE_VIRT_INTERFACES"
FASTPROXY_EXCLUDE_INTERFACES = "FASTPROXY_EXCLUDE_INTERFACES"
FASTPROXY_REDIRECT_DNS = "FASTPROXY_REDIRECT_DNS"
FASTPROXY_DUAL_STACK = "FASTPROXY_DUAL_STACK"
FASTPROXY_RUN_VALIDATION = "FASTPROXY_RUN_VALIDATION"
FASTPROXY_INIT_DRY_RUN = "FASTPROXY_INIT_DRY_RUN"
FASTPROXY_INIT_CLEANUP = "FASTPROXY_INIT_CLEANUP"
FASTPROXY_INIT_BACKEND = "FASTPROXY_INIT_BACKEND"


def _doc(default: Any, text: str) -> Any:
    """A dataclass field with its documentation (shown by `fastproxy init --help`)."""
    return field(default=default, metadata={"doc": text})


class InitConfigError(ValueError):
    """A flag or environment variable has a value we cannot use."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


@dataclass(frozen=True)
class InitConfig:
    """What `fastproxy init` sets up. Built once by from_sources(); the rule
    builders read it and nothing else."""

    outbound_port: int = _doc(15001,
        "-p: port of the proxy's outbound listener; captured outbound TCP is redirected here.")
    inbound_port: int = _doc(15006,
        "-z: port of the proxy's inbound listener; captured inbound TCP is redirected (or TPROXY'd) here.")
    proxy_uids: tuple[int, ...] = _doc((1337,),
        "-u: UIDs whose traffic is never captured (the proxy's own). Comma-separated.")
    proxy_gids: tuple[int, ...] = _doc((1337,),
        "-g: GIDs whose traffic is never captured. Defaults to the -u values, as in Istio.")
    inbound_interception_mode: str = _doc(REDIRECT,
        "-m: REDIRECT (nat table, original destination from SO_ORIGINAL_DST) or TPROXY (mangle table + "
        "policy routing, the listener needs IP_TRANSPARENT; keeps the client's address).")
    tproxy_mark: int = _doc(1337,
        "-t: in TPROXY mode, the firewall mark that routes diverted packets to lo.")
    tproxy_route_table: int = _doc(133,
        "-r: in TPROXY mode, the routing table holding `local default dev lo`.")
    inbound_ports_include: tuple[int, ...] | Wildcard = _doc(ALL,
        "-b: inbound TCP ports to capture; '*' = all ports, empty = no inbound capture.")
    inbound_ports_exclude: tuple[int, ...] = _doc((),
        "-d: inbound ports never captured; only meaningful with -b '*'. The proxy's own ports (15000, "
        "15020, 15021, 15090) are excluded whatever this says.")
    outbound_ip_ranges_include: tuple[IPNetwork, ...] | Wildcard = _doc(ALL,
        "-i: destination CIDRs (v4 and v6 mixed) whose outbound TCP is captured; '*' = all, empty = none.")
    outbound_ip_ranges_exclude: tuple[IPNetwork, ...] = _doc((),
        "-x: destination CIDRs never captured; checked before -i.")
    outbound_ports_include: tuple[int, ...] = _doc((),
        "-q: outbound TCP ports captured whatever the destination (even outside -i).")
    outbound_ports_exclude: tuple[int, ...] = _doc((),
        "-o: outbound ports never captured (TCP, and UDP when DNS is redirected).")
    kube_virt_interfaces: tuple[str, ...] = _doc((),
        "-k: interfaces (e.g. KubeVirt VMs) whose incoming traffic is treated as outbound: captured to "
        "the outbound port when it matches -i, and never captured as inbound.")
    exclude_interfaces: tuple[str, ...] = _doc((),
        "-c: interfaces whose traffic is never captured, in either direction.")
    redirect_dns: bool = _doc(False,
        "--redirect-dns: send the app's DNS (UDP and TCP port 53, any server) to the proxy on 15053.")
    dual_stack: bool = _doc(False,
        "--dual-stack: capture IPv6 as well as IPv4. `fastproxy init` also turns this on by itself when "
        "the host's first address is IPv6, as istio-iptables does.")
    run_validation: bool = _doc(False,
        "--run-validation: after applying, check that a connection is really redirected; exit 126 if not.")
    dry_run: bool = _doc(False,
        "--dry-run (-n): print the exact commands and their inputs; change nothing.")
    cleanup: bool = _doc(False,
        "--cleanup: remove everything fastproxy init added (rules, chains, ip rules and routes), nothing "
        "else.")
    backend: str = _doc("auto",
        "--backend: auto (decided from the rules already in this network namespace), iptables-legacy, "
        "iptables-nft or nft (native nftables, one `inet fastproxy` table).")

    @property
    def tproxy(self) -> bool:
        return self.inbound_interception_mode == TPROXY

    @property
    def inbound_enabled(self) -> bool:
        return self.inbound_ports_include == ALL or bool(self.inbound_ports_include)


@dataclass(frozen=True)
class Flag:
    """One command-line option and its environment variable."""

    field: str
    short: str | None
    long: str
    env: str
    kind: str  # port | ports | ids | int | mode | cidrs | ifaces | bool | backend
    metavar: str | None = None

    @property
    def label(self) -> str:
        return f"{self.short}/{self.long}" if self.short else self.long


# Long names are istio-iptables' own, so scripts written for it work unchanged.
FLAGS: tuple[Flag, ...] = (
    Flag("outbound_port", "-p", "--envoy-port", FASTPROXY_OUTBOUND_PORT, "port", "PORT"),
    Flag("inbound_port", "-z", "--inbound-capture-port", FASTPROXY_INBOUND_PORT, "port", "PORT"),
    Flag("proxy_uids", "-u", "--proxy-uid", FASTPROXY_PROXY_UID, "ids", "UID[,UID]"),
    Flag("proxy_gids", "-g", "--proxy-gid", FASTPROXY_PROXY_GID, "ids", "GID[,GID]"),
    Flag("inbound_interception_mode", "-m", "--istio-inbound-interception-mode",
         FASTPROXY_INBOUND_INTERCEPTION_MODE, "mode", "REDIRECT|TPROXY"),
    Flag("tproxy_mark", "-t", "--istio-inbound-tproxy-mark", FASTPROXY_INBOUND_TPROXY_MARK, "int", "MARK"),
    Flag("tproxy_route_table", "-r", "--istio-inbound-tproxy-route-table",
         FASTPROXY_INBOUND_TPROXY_ROUTE_TABLE, "int", "TABLE"),
    Flag("inbound_ports_include", "-b", "--istio-inbound-ports", FASTPROXY_INBOUND_PORTS_INCLUDE,
         "ports", "'*'|PORT[,PORT]"),
    Flag("inbound_ports_exclude", "-d", "--istio-local-exclude-ports", FASTPROXY_INBOUND_PORTS_EXCLUDE,
         "ports", "PORT[,PORT]"),
    Flag("outbound_ip_ranges_include", "-i", "--istio-service-cidr", FASTPROXY_OUTBOUND_IP_RANGES_INCLUDE,
         "cidrs", "'*'|CIDR[,CIDR]"),
    Flag("outbound_ip_ranges_exclude", "-x", "--istio-service-exclude-cidr", FASTPROXY_OUTBOUND_IP_RANGES_EXCLUDE,
         "cidrs", "CIDR[,CIDR]"),
    Flag("outbound_ports_include", "-q", "--istio-outbound-ports", FASTPROXY_OUTBOUND_PORTS_INCLUDE,
         "ports", "PORT[,PORT]"),
    Flag("outbound_ports_exclude", "-o", "--istio-local-outbound-ports-exclude", FASTPROXY_OUTBOUND_PORTS_EXCLUDE,
         "ports", "PORT[,PORT]"),
    Flag("kube_virt_interfaces", "-k", "--kube-virt-interfaces", FASTPROXY_KUBE_VIRT_INTERFACES,
         "ifaces", "IFACE[,IFACE]"),
    Flag("exclude_interfaces", "-c", "--istio-exclude-interfaces", FASTPROXY_EXCLUDE_INTERFACES,
         "ifaces", "IFACE[,IFACE]"),
    Flag("redirect_dns", None, "--redirect-dns", FASTPROXY_REDIRECT_DNS, "bool"),
    Flag("dual_stack", None, "--dual-stack", FASTPROXY_DUAL_STACK, "bool"),
    Flag("run_validation", None, "--run-validation", FASTPROXY_RUN_VALIDATION, "bool"),
    Flag("dry_run", "-n", "--dry-run", FASTPROXY_INIT_DRY_RUN, "bool"),
    Flag("cleanup", None, "--cleanup", FASTPROXY_INIT_CLEANUP, "bool"),
    Flag("backend", None, "--backend", FASTPROXY_INIT_BACKEND, "backend", "|".join(BACKENDS)),
)
FLAG_BY_FIELD = {f.field: f for f in FLAGS}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_WILDCARD_OK = ("inbound_ports_include", "outbound_ip_ranges_include")


def field_doc(name: str) -> str:
    """The documentation of one InitConfig field."""
    return InitConfig.__dataclass_fields__[name].metadata["doc"]


def render_env_help() -> str:
    """The FASTPROXY_* variables of `fastproxy init`, for `fastproxy config env`
    (those it shares with `fastproxy run`'s settings are listed there already)."""
    from ..config.env import PREFIX
    from ..config.schema import SETTINGS

    shared = {PREFIX + s.name.upper() for s in SETTINGS}
    defaults = InitConfig()
    lines = []
    for f in FLAGS:
        if f.env in shared:
            continue
        value = getattr(defaults, f.field)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        lines.append(f"{f.env}\n    default: {shown}\n    (fastproxy init) {field_doc(f.field)}\n")
    return "\n".join(lines)


def _items(raw: str) -> list[str]:
    return [p.strip() for p in raw.split(",") if p.strip()]


def _port(text: str, source: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise InitConfigError(source, f"expected a port number 1-65535, got {text!r}") from None
    if not 1 <= n <= 65535:
        raise InitConfigError(source, f"port {n} is out of range 1-65535")
    return n


def _id(text: str, source: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise InitConfigError(source, f"expected a numeric id, got {text!r} (names are not looked up)") from None
    if not 0 <= n <= 0xFFFFFFFE:
        raise InitConfigError(source, f"id {n} is out of range")
    return n


def _interface(text: str, source: str) -> str:
    # Linux limits names to 15 bytes; iptables accepts a trailing '+' as a wildcard.
    body = text[:-1] if text.endswith("+") else text
    if not body and text != "+":
        raise InitConfigError(source, f"interface name {text!r} is empty")
    if len(text) > 15 or any(c in text for c in " \t\"'/\\,*") or "+" in body:
        raise InitConfigError(source, f"{text!r} is not a valid interface name (at most 15 characters, "
                                      "no spaces, quotes or '/'; a trailing '+' matches a prefix)")
    return text


def parse_value(flag: Flag, raw: str, source: str) -> Any:
    """Converts one raw string (from a flag or the environment) for `flag`."""
    raw = raw.strip()
    kind = flag.kind
    if kind == "bool":
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise InitConfigError(source, f"expected true or false, got {raw!r}")
    if kind == "port":
        return _port(raw, source)
    if kind == "int":
        try:
            n = int(raw, 0)
        except ValueError:
            raise InitConfigError(source, f"expected an integer, got {raw!r}") from None
        if not 1 <= n <= 0xFFFFFFFF:
            raise InitConfigError(source, f"{n} is out of range 1-4294967295")
        return n
    if kind == "mode":
        mode = raw.upper()
        if mode not in (REDIRECT, TPROXY):
            raise InitConfigError(source, f"expected REDIRECT or TPROXY, got {raw!r}")
        return mode
    if kind == "backend":
        if raw.lower() not in BACKENDS:
            raise InitConfigError(source, f"expected one of {', '.join(BACKENDS)}, got {raw!r}")
        return raw.lower()
    items = _items(raw)
    if "*" in items:
        if flag.field not in _WILDCARD_OK:
            raise InitConfigError(source, "'*' is not allowed here")
        if items != ["*"]:
            raise InitConfigError(source, "'*' must be the whole value, not one item of a list")
        return ALL
    if kind == "ports":
        return _unique(tuple(_port(p, source) for p in items))
    if kind == "ids":
        ids = _unique(tuple(_id(p, source) for p in items))
        if not ids:
            raise InitConfigError(source, "at least one id is needed")
        return ids
    if kind == "ifaces":
        return _unique(tuple(_interface(p, source) for p in items))
    if kind == "cidrs":
        nets = []
        for p in items:
            try:
                nets.append(ipaddress.ip_network(p, strict=False))
            except ValueError:
                raise InitConfigError(source, f"{p!r} is not an IP address or CIDR") from None
        return _unique(tuple(nets))
    raise AssertionError(kind)


def _unique(values: tuple) -> tuple:
    return tuple(dict.fromkeys(values))


def from_sources(flag_values: Mapping[str, str | None], environ: Mapping[str, str]) -> InitConfig:
    """Builds the config from raw flag strings (field name -> string, or None
    when the flag was not given) and the environment. Flags win over the
    environment, the environment over the defaults."""
    values: dict[str, Any] = {}
    for flag in FLAGS:
        raw = flag_values.get(flag.field)
        if raw is not None:
            values[flag.field] = parse_value(flag, raw, flag.label)
        elif flag.env in environ:
            values[flag.field] = parse_value(flag, environ[flag.env], flag.env)
    if "proxy_gids" not in values and "proxy_uids" in values:
        values["proxy_gids"] = values["proxy_uids"]
    cfg = InitConfig(**values)
    _check(cfg, values)
    return cfg


def _check(cfg: InitConfig, given: Mapping[str, Any]) -> None:
    """Checks that span several values."""
    if cfg.outbound_port == cfg.inbound_port:
        raise InitConfigError(FLAG_BY_FIELD["inbound_port"].label,
                              f"inbound port {cfg.inbound_port} must differ from the outbound port (-p)")
    if cfg.tproxy and cfg.tproxy_mark == OUTBOUND_MARK:
        raise InitConfigError(FLAG_BY_FIELD["tproxy_mark"].label,
                              f"mark {OUTBOUND_MARK} is reserved for the proxy's own loopback traffic")
    if cfg.tproxy and cfg.tproxy_route_table in (253, 254, 255):
        raise InitConfigError(FLAG_BY_FIELD["tproxy_route_table"].label,
                              f"table {cfg.tproxy_route_table} is one of the kernel's own (default/main/local)")
    if cfg.dry_run and cfg.run_validation:
        raise InitConfigError("--run-validation", "cannot validate a dry run: nothing is applied")
    both = set(cfg.kube_virt_interfaces) & set(cfg.exclude_interfaces)
    if both:
        raise InitConfigError(FLAG_BY_FIELD["exclude_interfaces"].label,
                              f"{', '.join(sorted(both))} also given to -k; an interface is either "
                              "virtual (treated as outbound) or excluded, not both")


def describe(cfg: InitConfig) -> str:
    """The effective configuration, one `name=value` a line (logged by init)."""
    lines = []
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, tuple):
            v = ",".join(str(x) for x in v)
        lines.append(f"{f.name}={v}")
    return "\n".join(lines)
