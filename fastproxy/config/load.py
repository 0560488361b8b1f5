"""Turns a config document (YAML/JSON text or a parsed dict) into a validated Config.

Pure: no I/O beyond the caller handing in text and an environment mapping.
Every error is a ConfigError naming the field path.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import orjson
import yaml

from ..policy.breakers import parse_breakers
from ..policy.health import parse_health_checks
from ..policy.outlier import parse_outlier
from ..routing.http import compile_virtual_services
from .env import coerce, settings_from_env
from .schema import (
    HASH_LB_POLICIES,
    LB_POLICIES,
    RESERVED_CLUSTERS,
    SETTINGS,
    SETTINGS_BY_NAME,
    TRAFFIC_DIRECTIONS,
    Cluster,
    Config,
    ConfigError,
    Endpoint,
    HashPolicy,
    HttpProxy,
    Listener,
    SocketAddress,
    TcpProxy,
    _cpu_count,
)

_TOP_KEYS = {"settings", "listeners", "clusters", "virtual_services"}


def parse_text(text: str | bytes, source: str = "config") -> dict[str, Any]:
    """YAML (a superset of JSON) text to a mapping."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{source}: not valid YAML or JSON{where}: {getattr(e, 'problem', e)}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("", f"{source}: the document must be a mapping, got {type(doc).__name__}")
    return doc


def default_document(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The embedded default: capture listeners on outbound_port and inbound_port."""
    text = resources.files("fastproxy.config").joinpath("default.yaml").read_text()
    text = text.replace("{outbound_port}", str(settings["outbound_port"]))
    text = text.replace("{inbound_port}", str(settings["inbound_port"]))
    return parse_text(text, "default config")


def load(doc: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validates doc; FASTPROXY_* variables in environ override its settings."""
    _no_unknown(doc, _TOP_KEYS, "")
    settings = _settings(doc.get("settings", {}), environ or {})
    if "listeners" in doc:
        listeners_doc = doc["listeners"]
    else:
        listeners_doc = default_document(settings)["listeners"]
    clusters = _list(doc.get("clusters", []), "clusters", _cluster)
    listeners = _list(listeners_doc, "listeners", _listener)
    _unique([c.name for c in clusters], "clusters", "name")
    _unique([l.name for l in listeners], "listeners", "name")
    cluster_names = {c.name for c in clusters}
    seen_addr: dict[SocketAddress, str] = {}
    for i, l in enumerate(listeners):
        if l.tcp_proxy and l.tcp_proxy.cluster not in cluster_names and l.tcp_proxy.cluster not in RESERVED_CLUSTERS:
            raise ConfigError(f"listeners[{i}].tcp_proxy.cluster", f"no cluster named {l.tcp_proxy.cluster!r}")
        if l.http and l.http.cluster is not None and l.http.cluster not in cluster_names:
            hint = (" (the proxy's own clusters cannot serve HTTP; leave cluster out to answer 404)"
                    if l.http.cluster in RESERVED_CLUSTERS else "")
            raise ConfigError(f"listeners[{i}].http.cluster", f"no cluster named {l.http.cluster!r}{hint}")
        for j, a in enumerate((l.address, *l.additional_addresses)):
            where = f"listeners[{i}].address" if j == 0 else f"listeners[{i}].additional_addresses[{j - 1}]"
            if a in seen_addr:
                raise ConfigError(where, f"{a} is already used by listener {seen_addr[a]!r}")
            seen_addr[a] = l.name
    virtual_services = _virtual_services(doc.get("virtual_services"), {c.name: c for c in clusters})
    return Config(settings=settings, listeners=tuple(listeners), clusters=tuple(clusters),
                  virtual_services=virtual_services)


def load_text(text: str | bytes, environ: Mapping[str, str] | None = None, source: str = "config") -> Config:
    return load(parse_text(text, source), environ)


def load_default(environ: Mapping[str, str] | None = None) -> Config:
    return load({}, environ)


# -- pieces --------------------------------------------------------------------

def _no_unknown(doc: Any, allowed: set[str], path: str) -> None:
    if not isinstance(doc, Mapping):
        raise ConfigError(path, f"expected a mapping, got {_kind(doc)}")
    for k in doc:
        if k not in allowed:
            where = f"{path}.{k}" if path else str(k)
            raise ConfigError(where, f"unknown field (expected one of: {', '.join(sorted(allowed))})")


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _list(doc: Any, path: str, item) -> list:
    if not isinstance(doc, list):
        raise ConfigError(path, f"expected a list, got {_kind(doc)}")
    return [item(x, f"{path}[{i}]") for i, x in enumerate(doc)]


def _unique(names: list[str], path: str, key: str) -> None:
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise ConfigError(f"{path}[{i}].{key}", f"duplicate {key} {n!r} (also {path}[{seen[n]}])")
        seen[n] = i


def _settings(doc: Any, environ: Mapping[str, str]) -> dict[str, Any]:
    _no_unknown(doc, set(SETTINGS_BY_NAME), "settings")
    out = {}
    for s in SETTINGS:
        if s.name in doc:
            out[s.name] = coerce(s, doc[s.name], f"settings.{s.name}")
        else:
            out[s.name] = s.default
    out.update(settings_from_env(environ))
    if out["workers"] is None:
        out["workers"] = _cpu_count()
    _ip(out["admin_address"], "settings.admin_address")
    _ip(out["inbound_passthrough_source"], "settings.inbound_passthrough_source")
    return out


def _str(doc: Mapping, key: str, path: str, required: bool = True, default: str | None = None) -> str | None:
    if key not in doc:
        if required:
            raise ConfigError(f"{path}.{key}", "required field is missing")
        return default
    v = doc[key]
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{path}.{key}", f"expected a non-empty string, got {v!r}")
    return v


def _bool(doc: Mapping, key: str, path: str, default: bool) -> bool:
    v = doc.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{path}.{key}", f"expected true or false, got {v!r}")
    return v


def _int(doc: Mapping, key: str, path: str, default: int | None, lo: int, hi: int) -> int | None:
    v = doc.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{path}.{key}", f"expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{path}.{key}", f"must be between {lo} and {hi}, got {v}")
    return v


def _ip(text: str, path: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(path, f"expected an IP address, got {text!r}") from None


def socket_address(v: Any, path: str) -> SocketAddress:
    """'1.2.3.4:80' or '[::1]:80' (an IP literal: static endpoints, no DNS)."""
    if not isinstance(v, str):
        raise ConfigError(path, f"expected host:port, got {v!r}")
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(path, f"expected host:port, got {v!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ConfigError(path, f"brackets are for IPv6 addresses, got {v!r}")
    elif ":" in host:
        raise ConfigError(path, f"an IPv6 address needs brackets, as in [::1]:80, got {v!r}")
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(path, f"expected an IP address before the port, got {host!r}") from None
    p = int(port)
    if not 0 <= p <= 65535:
        raise ConfigError(path, f"port out of range: {p}")
    return SocketAddress(ip, p)


def _endpoint(doc: Any, path: str) -> Endpoint:
    _no_unknown(doc, {"address", "weight"}, path)
    addr = socket_address(doc.get("address"), f"{path}.address")
    if addr.port == 0:
        raise ConfigError(f"{path}.address", "an endpoint needs a non-zero port")
    return Endpoint(address=addr, weight=_int(doc, "weight", path, 1, 1, 1000))


_CLUSTER_KEYS = {"name", "endpoints", "connect_timeout_ms", "lb_policy", "hash_policy", "least_request_lb_config",
                 "ring_hash_lb_config", "maglev_lb_config", "common_lb_config", "circuit_breakers",
                 "outlier_detection", "health_checks"}
# Envoy's limits: ring sizes up to 8M entries; a Maglev table is a prime below 5000011.
MAX_RING_SIZE = 8388608
MAX_MAGLEV_TABLE_SIZE = 5000011
MAX_CHOICE_COUNT = 100   # each pick samples this many hosts: keep it small
_DEFAULT = {f.name: f.default for f in dataclasses.fields(Cluster)}   # declared once, in the schema


def _cluster(doc: Any, path: str) -> Cluster:
    _no_unknown(doc, _CLUSTER_KEYS, path)
    name = _str(doc, "name", path)
    if name in RESERVED_CLUSTERS:
        raise ConfigError(f"{path}.name", f"{name!r} is reserved for the proxy's own use")
    endpoints = tuple(_list(doc.get("endpoints", []), f"{path}.endpoints", _endpoint))
    if not endpoints:
        raise ConfigError(f"{path}.endpoints", "a cluster needs at least one endpoint")
    lb = _str(doc, "lb_policy", path, required=False, default="ROUND_ROBIN")
    if lb not in LB_POLICIES:
        raise ConfigError(f"{path}.lb_policy", f"expected one of {', '.join(LB_POLICIES)}, got {lb!r}")
    outlier = doc.get("outlier_detection")
    return Cluster(name=name, endpoints=endpoints, lb_policy=lb,
                   connect_timeout_ms=_int(doc, "connect_timeout_ms", path, None, 1, 3_600_000),
                   breakers=parse_breakers(doc.get("circuit_breakers"), f"{path}.circuit_breakers"),
                   outlier_detection=None if outlier is None else parse_outlier(outlier, f"{path}.outlier_detection"),
                   health_check=parse_health_checks(doc.get("health_checks"), f"{path}.health_checks"),
                   **_load_balancing(doc, lb, path))


def _load_balancing(doc: Mapping, lb: str, path: str) -> dict[str, Any]:
    """The Cluster fields of lb_policy lb's settings: hash_policy (exactly for
    the hashing policies) and the *_lb_config of lb (no other policy's)."""
    lb_fields: dict[str, Any] = {}
    if doc.get("hash_policy") is not None:
        if lb not in HASH_LB_POLICIES:
            raise ConfigError(f"{path}.hash_policy", f"only for lb_policy {' or '.join(HASH_LB_POLICIES)}, "
                              f"not {lb}")
        lb_fields["hash_policy"] = _hash_policy(doc["hash_policy"], f"{path}.hash_policy")
    elif lb in HASH_LB_POLICIES:
        raise ConfigError(f"{path}.hash_policy", f"required with lb_policy {lb} (header, cookie or source_ip)")
    for key, policy in (("least_request_lb_config", "LEAST_REQUEST"), ("ring_hash_lb_config", "RING_HASH"),
                        ("maglev_lb_config", "MAGLEV")):
        if doc.get(key) is not None and lb != policy:
            raise ConfigError(f"{path}.{key}", f"only for lb_policy {policy}, not {lb}")
    if doc.get("least_request_lb_config") is not None:
        w = f"{path}.least_request_lb_config"
        _no_unknown(doc["least_request_lb_config"], {"choice_count"}, w)
        lb_fields["choice_count"] = _int(doc["least_request_lb_config"], "choice_count", w,
                                         _DEFAULT["choice_count"], 2, MAX_CHOICE_COUNT)
    if doc.get("ring_hash_lb_config") is not None:
        w = f"{path}.ring_hash_lb_config"
        ring = doc["ring_hash_lb_config"]
        _no_unknown(ring, {"minimum_ring_size", "maximum_ring_size"}, w)
        lo = _int(ring, "minimum_ring_size", w, _DEFAULT["minimum_ring_size"], 1, MAX_RING_SIZE)
        hi = _int(ring, "maximum_ring_size", w, _DEFAULT["maximum_ring_size"], 1, MAX_RING_SIZE)
        if hi < lo:
            raise ConfigError(f"{w}.maximum_ring_size", f"must not be less than minimum_ring_size ({lo}), got {hi}")
        lb_fields.update(minimum_ring_size=lo, maximum_ring_size=hi)
    if doc.get("maglev_lb_config") is not None:
        w = f"{path}.maglev_lb_config"
        _no_unknown(doc["maglev_lb_config"], {"table_size"}, w)
        size = _int(doc["maglev_lb_config"], "table_size", w, _DEFAULT["maglev_table_size"], 2,
                    MAX_MAGLEV_TABLE_SIZE - 1)
        if not _is_prime(size):
            raise ConfigError(f"{w}.table_size", f"must be a prime number, got {size}")
        lb_fields["maglev_table_size"] = size
    if doc.get("common_lb_config") is not None:
        w = f"{path}.common_lb_config"
        _no_unknown(doc["common_lb_config"], {"healthy_panic_threshold"}, w)
        lb_fields["healthy_panic_threshold"] = _percent(doc["common_lb_config"], "healthy_panic_threshold", w,
                                                        _DEFAULT["healthy_panic_threshold"])
    return lb_fields


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _hash_policy(doc: Any, path: str) -> HashPolicy:
    _no_unknown(doc, {"header", "cookie", "source_ip"}, path)
    if len(doc) != 1:
        raise ConfigError(path, "exactly one of header, cookie, source_ip is required")
    (key, value), = doc.items()
    if key == "source_ip":
        if value is not True:
            raise ConfigError(f"{path}.source_ip", f"expected true, got {value!r}")
        return HashPolicy(source_ip=True)
    text = _str(doc, key, path)
    if not _HEADER_NAME.fullmatch(text):   # a header name and a cookie name are both tokens
        raise ConfigError(f"{path}.{key}", f"invalid {key} name {text!r} (a token)")
    return HashPolicy(header=text.lower()) if key == "header" else HashPolicy(cookie=text)


def _percent(doc: Mapping, key: str, path: str, default: float) -> float:
    v = doc.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{path}.{key}", f"expected a number, got {v!r}")
    if not 0 <= v <= 100:
        raise ConfigError(f"{path}.{key}", f"must be between 0 and 100, got {v}")
    return float(v)


def _is_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _virtual_services(docs: Any, clusters: dict[str, Cluster]) -> tuple[dict[str, Any], ...]:
    """The VirtualService documents, validated (routing.http), each destination
    naming a configured cluster, and kept as JSON data (what the table carries).

    destination.host is a cluster name. destination.port, if given, must be
    the port of every endpoint of that cluster (it selects nothing: a cluster
    is one port already); subsets need DestinationRules, not supported yet."""
    path = "virtual_services"
    table = compile_virtual_services(docs, path)
    for route in table.routes():
        for d in route.destinations:
            cluster = clusters.get(d.host)
            if cluster is None:
                near = [c for c in clusters if c.lower() == d.host]
                hint = f" (cluster names are matched lower-case: rename {near[0]!r})" if near else ""
                raise ConfigError(f"{d.where}.destination.host", f"no cluster named {d.host!r}{hint}")
            if d.subset is not None:
                raise ConfigError(f"{d.where}.destination.subset", "subsets are not supported yet "
                                  "(no DestinationRule): make a cluster per subset and name it in host")
            if d.port is not None:
                ports = sorted({e.address.port for e in cluster.endpoints})
                if ports != [d.port]:
                    raise ConfigError(f"{d.where}.destination.port.number",
                                      f"cluster {cluster.name!r} has endpoints on port "
                                      f"{', '.join(map(str, ports))}, not {d.port}")
    try:
        plain = orjson.loads(orjson.dumps(docs or [], option=orjson.OPT_NON_STR_KEYS))
    except TypeError as e:
        raise ConfigError(path, f"not plain data (strings, numbers, lists, mappings): {e}") from None
    return tuple(plain)


def _listener(doc: Any, path: str) -> Listener:
    _no_unknown(doc, {"name", "address", "additional_addresses", "bind_to_port", "use_original_dst",
                      "traffic_direction", "tcp_proxy", "http", "request_headers_timeout_ms"}, path)
    name = _str(doc, "name", path)
    address = socket_address(doc.get("address"), f"{path}.address")
    extra = doc.get("additional_addresses", [])
    if not isinstance(extra, list):
        raise ConfigError(f"{path}.additional_addresses", f"expected a list, got {_kind(extra)}")
    additional = tuple(socket_address(a, f"{path}.additional_addresses[{i}]") for i, a in enumerate(extra))
    bind = _bool(doc, "bind_to_port", path, True)
    orig = _bool(doc, "use_original_dst", path, False)
    direction = _str(doc, "traffic_direction", path, required=False, default="UNSPECIFIED")
    if direction not in TRAFFIC_DIRECTIONS:
        raise ConfigError(f"{path}.traffic_direction", f"expected one of {', '.join(TRAFFIC_DIRECTIONS)}, got {direction!r}")
    tcp = None
    if "tcp_proxy" in doc:
        _no_unknown(doc["tcp_proxy"], {"cluster"}, f"{path}.tcp_proxy")
        tcp = TcpProxy(cluster=_str(doc["tcp_proxy"], "cluster", f"{path}.tcp_proxy"))
    http = None
    if "http" in doc:
        hdoc = {} if doc["http"] is None else doc["http"]  # `http:` alone: HTTP with no default cluster
        _no_unknown(hdoc, {"cluster"}, f"{path}.http")
        http = HttpProxy(cluster=_str(hdoc, "cluster", f"{path}.http", required=False))
    if orig:
        if direction == "UNSPECIFIED":
            raise ConfigError(f"{path}.traffic_direction", "a use_original_dst listener must say INBOUND or OUTBOUND")
        if tcp is not None:
            raise ConfigError(f"{path}.tcp_proxy", "a use_original_dst listener routes by original destination; remove tcp_proxy")
        if http is not None:
            raise ConfigError(f"{path}.http", "a use_original_dst listener detects each connection's protocol "
                              "(HTTP is routed by virtual_services); remove http")
        if not bind:
            raise ConfigError(f"{path}.bind_to_port", "a use_original_dst listener must bind its port")
    elif tcp is not None and http is not None:
        raise ConfigError(f"{path}.http", "a listener has either tcp_proxy or http, not both")
    elif tcp is None and http is None:
        raise ConfigError(f"{path}.tcp_proxy", "required: tcp_proxy (the cluster this listener relays to) "
                          "or http (requests routed by virtual_services)")
    elif http is not None and not bind:
        raise ConfigError(f"{path}.http", "a listener with bind_to_port: false is matched by original "
                          "destination and relayed as TCP: use tcp_proxy")
    if bind and address.port == 0:
        raise ConfigError(f"{path}.address", "a bound listener needs a non-zero port")
    headers_timeout = _int(doc, "request_headers_timeout_ms", path, None, 0, 3_600_000)
    if headers_timeout is not None and tcp is not None:
        raise ConfigError(f"{path}.request_headers_timeout_ms", "a tcp_proxy listener reads no HTTP requests")
    return Listener(name=name, address=address, additional_addresses=additional, bind_to_port=bind,
                    use_original_dst=orig, traffic_direction=direction, tcp_proxy=tcp, http=http,
                    request_headers_timeout_ms=headers_timeout)
