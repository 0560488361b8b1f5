"""Pure: what `fastproxy init` adds besides firewall rules, as `ip` commands,
and the reading of `ip -j` listings to see what is already there.

- TPROXY (with inbound capture): `ip rule` fwmark <mark> -> table <table>,
  and `local default dev lo` in that table, per family, so diverted packets
  are delivered locally to the IP_TRANSPARENT listener (Istio's
  configureTProxyRoutes).
- Dual stack: ::6/128 on lo, the IPv6 source of inbound passthrough (the
  IPv4 one, 127.0.0.6, is already local: 127.0.0.0/8 is on lo).

Rules and routes carry protocol ROUTE_PROTO, so --cleanup removes exactly
ours. An address cannot be tagged that way with iproute2 6.1, so ::6 is
added when missing and never removed: it may predate us, and it is inert.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .flags import INBOUND_PASSTHROUGH_V6, InitConfig

# Routing protocol number marking our ip rules and routes (unassigned in iproute2's rt_protos).
ROUTE_PROTO = 155
PASSTHROUGH_V6_PREFIX = 128


@dataclass(frozen=True)
class IpRule:
    """`ip rule`: packets with fwmark `mark` look up routing table `table`."""

    version: int
    mark: int
    table: int

    def add_argv(self) -> list[str]:
        return ["ip", f"-{self.version}", "rule", "add", "fwmark", str(self.mark), "lookup", str(self.table),
                "protocol", str(ROUTE_PROTO)]

    def matches(self, entry: dict) -> bool:
        fwmark = entry.get("fwmark", "")
        return (_int(fwmark.split("/")[0]) == self.mark and "/" not in fwmark
                and entry.get("table") == str(self.table))


@dataclass(frozen=True)
class LocalRoute:
    """`local default dev lo` in routing table `table`: every address is local."""

    version: int
    table: int

    def add_argv(self) -> list[str]:
        dst = "0.0.0.0/0" if self.version == 4 else "::/0"
        return ["ip", f"-{self.version}", "route", "add", "local", dst, "dev", "lo", "table", str(self.table),
                "proto", str(ROUTE_PROTO)]

    def matches(self, entry: dict) -> bool:
        return (entry.get("type") == "local" and entry.get("dst") == "default" and entry.get("dev") == "lo"
                and entry.get("table") == str(self.table))


def _int(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def wanted(cfg: InitConfig) -> list[IpRule | LocalRoute]:
    """The ip rules and routes `cfg` needs, IPv4 first."""
    if not (cfg.tproxy and cfg.inbound_enabled):
        return []
    out: list[IpRule | LocalRoute] = []
    for version in (4, 6) if cfg.dual_stack else (4,):
        out += [IpRule(version, cfg.tproxy_mark, cfg.tproxy_route_table), LocalRoute(version, cfg.tproxy_route_table)]
    return out


def list_rules_argv(version: int) -> list[str]:
    return ["ip", "-j", f"-{version}", "rule", "show"]


def list_routes_argv(version: int) -> list[str]:
    return ["ip", "-j", f"-{version}", "route", "show", "table", "all"]


def ours(listing: str) -> list[dict]:
    """Entries of an `ip -j rule show` / `ip -j route show` listing that carry our protocol."""
    entries = json.loads(listing) if listing.strip() else []
    return [e for e in entries if str(e.get("protocol")) == str(ROUTE_PROTO)]


def delete_rule_argv(version: int, entry: dict) -> list[str]:
    argv = ["ip", f"-{version}", "rule", "del"]
    if "priority" in entry:
        argv += ["priority", str(entry["priority"])]
    if "fwmark" in entry:
        argv += ["fwmark", entry["fwmark"]]
    return argv + ["lookup", str(entry.get("table", "main")), "protocol", str(ROUTE_PROTO)]


def delete_route_argv(version: int, entry: dict) -> list[str]:
    return ["ip", f"-{version}", "route", "del", entry.get("type", "unicast"), entry["dst"],
            "dev", entry["dev"], "table", str(entry.get("table", "main")), "proto", str(ROUTE_PROTO)]


def passthrough_v6_wanted(cfg: InitConfig) -> bool:
    return cfg.dual_stack


def address_argv() -> list[str]:
    return ["ip", "-6", "addr", "add", f"{INBOUND_PASSTHROUGH_V6}/{PASSTHROUGH_V6_PREFIX}", "dev", "lo"]


def list_lo_v6_argv() -> list[str]:
    return ["ip", "-j", "-6", "addr", "show", "dev", "lo"]


def has_passthrough_v6(listing: str) -> bool:
    for link in json.loads(listing) if listing.strip() else []:
        for a in link.get("addr_info", []):
            if a.get("local") == INBOUND_PASSTHROUGH_V6 and a.get("prefixlen") == PASSTHROUGH_V6_PREFIX:
                return True
    return False


def ipv6_only(listing: str) -> bool:
    """From `ip -j addr show`: whether the host has a usable IPv6 address and
    no usable IPv4 one (loopback and link-local do not count). This is when
    istio-iptables enables its IPv6 rules by itself."""
    v4 = v6 = False
    for link in json.loads(listing) if listing.strip() else []:
        if "LOOPBACK" in link.get("flags", ()):
            continue
        for a in link.get("addr_info", []):
            if a.get("scope") in ("host", "link"):
                continue
            if a.get("family") == "inet":
                v4 = True
            elif a.get("family") == "inet6":
                v6 = True
    return v6 and not v4
