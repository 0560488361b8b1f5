"""HTTP routes with Istio VirtualService semantics, compiled for the data path. Pure.

compile_virtual_services() validates a list of VirtualService documents (plain
dicts and lists, as they appear in the config file) and returns an
HttpRouteTable. Per request the worker calls

    route = table.select(authority, method, target, headers)

and gets an HttpRoute, or None when nothing matched: the caller then passes
the request through (ALLOW_ANY) or answers 404 with flag NR (REGISTRY_ONLY).

Input, field names as Istio's networking.istio.io/v1 VirtualService (a
Kubernetes object with apiVersion/kind/metadata/spec is accepted too):

    name: reviews                         # optional, for errors and stats
    hosts: [reviews.default.svc, "*.example.com", "*"]
    exportTo: [...]                       # accepted, ignored (one proxy)
    gateways: [mesh]                      # only "mesh" (a sidecar)
    http:                                 # routes, in order: the first match wins
      - name: v2                          # optional
        match:                            # optional: no match = every request
          - uri: {exact | prefix | regex: str}
            ignoreUriCase: bool           # exact and prefix only (as Istio)
            method: StringMatch
            authority: StringMatch        # the Host / :authority, as received
            headers: {name: StringMatch}  # {} = present
            withoutHeaders: {name: StringMatch}   # the same, inverted
            queryParams: {name: {exact | regex: str} or {} (present)}
        # exactly one of route / redirect / directResponse:
        route:
          - destination: {host: str, subset: str, port: {number: int}}
            weight: int                   # several destinations: they sum to 100
        rewrite: {uri: str, authority: str}   # with route only
        redirect: {uri, authority, port, scheme, redirectCode}
        directResponse: {status: int, body: {string: str} | {bytes: base64}}
        headers:
          request:  {set: {name: value}, add: {name: value}, remove: [name]}
          response: {set: {name: value}, add: {name: value}, remove: [name]}
        # traffic policy (policy/*.py); timeout, retries, fault, connectTimeout
        # and idleTimeout with route only:
        timeout: 2s                       # request sent -> response head, across retries; absent/0s: none
        retries: {attempts, perTryTimeout, retryOn, backoff, retryRemoteLocalities,
                  retryNonIdempotent}     # absent: Istio's default policy; attempts 0: none
        fault: {delay: {fixedDelay, percentage: {value}}, abort: {httpStatus, percentage: {value}}}
        connectTimeout: 1s                # fastproxy: overrides the cluster's connect timeout
        idleTimeout: 30s                  # fastproxy: Envoy's route idle_timeout
        localRateLimit: {maxTokens, tokensPerFill, fillInterval}   # fastproxy: this route's
                                          # token bucket (every match block shares it)
    localRateLimit: {...}                 # fastproxy: one bucket for the whole virtual service,
                                          # checked before the matched route's own

Semantics (Envoy's, as Istio configures it):
- Hosts: the request's authority, lower-cased, port stripped, matches an
  exact host first, then the longest `*.suffix` wildcard (which needs at
  least one character before the suffix), then `*`. A host may appear in
  one VirtualService only.
- Match blocks of one route are OR'ed, the conditions of one block AND'ed.
  Regexes are full matches (Python `re` syntax, RE2-like). Paths are
  matched as received (no percent-decoding or normalisation), without the
  query. Query parameters are not percent-decoded; a repeated one matches
  by its first value. Header names are matched lower-case; the caller
  joins repeated fields with "," (as Envoy does).
- rewrite.uri replaces what the matching block's uri matched: the prefix
  for a prefix match, the whole path for exact and regex, and "/" (Envoy's
  prefix "/") when the block has no uri condition. The query is kept.
- Weighted destinations: pick(r) with any non-negative integer r (e.g. a
  random one) is destinations-by-weight[r % 100]: deterministic for a given r.
- Header operations: names are tokens other than those the proxy owns
  (hop-by-hop, framing, Host: see csrc/rewrite.h); values are literal
  (Envoy's %VARIABLE% formatters are not interpreted).
- Durations are Istio's ("1.5s", "250ms", "1m"), rounded up to whole ms.

Not supported (rejected with the field's path, never silently ignored):
mirror*, corsPolicy, delegate, match.port/scheme/sourceLabels/gateways,
rewrite.uriRegexRewrite, per-destination headers, tcp/tls routes.
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from ..config.schema import ConfigError
from ..policy.duration import parse_duration_ms
from ..policy.fault import Fault, parse_fault
from ..policy.ratelimit import TokenBucket, parse_token_bucket
from ..policy.retry import ISTIO_DEFAULT, RetryPolicy, parse_retries

# Keep in step with csrc/rewrite.h RW_MAX_SET (a test checks it).
MAX_SET_HEADERS = 64
# As Envoy's max_direct_response_body_size_bytes default.
MAX_DIRECT_BODY_BYTES = 4096
REDIRECT_CODES = (301, 302, 303, 307, 308)
TOTAL_WEIGHT = 100

# HttpRoute.kind
ROUTE = "route"
REDIRECT = "redirect"
DIRECT_RESPONSE = "direct_response"

# Field names route operations may not touch (csrc/rewrite.h rw_ops_check).
PROXY_OWNED_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "content-length", "host"})

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# empty, or no CTL but HTAB inside, and neither SP nor HTAB at either end
_FIELD_VALUE = re.compile(r"(?:[^\x00-\x20\x7f][^\x00-\x08\x0a-\x1f\x7f]*)?(?<![ \t])")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_DNS = rf"{_LABEL}(?:\.{_LABEL})*"
_VS_HOST = re.compile(rf"\*|(?:\*\.)?{_DNS}|\[[0-9a-f:.]+\]")
_DEST_HOST = re.compile(rf"{_DNS}|\[[0-9a-f:.]+\]")
_AUTHORITY = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+")
_PATH = re.compile(r"[\x21-\x7e]*")
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")

_EMPTY: Mapping[bytes, bytes] = {}


# ---- compiled pieces ------------------------------------------------------

_EXACT, _PREFIX, _REGEX, _PRESENT = 1, 2, 3, 4


class StringMatcher:
    """Istio's StringMatch, compiled. test(None) means "absent": only ever false."""

    __slots__ = ("kind", "value", "regex")

    def __init__(self, kind: int, value: bytes = b"", regex: re.Pattern[bytes] | None = None):
        self.kind = kind
        self.value = value
        self.regex = regex

    def test(self, v: bytes | None) -> bool:
        if v is None:
            return False
        k = self.kind
        if k == _EXACT:
            return v == self.value
        if k == _PREFIX:
            return v.startswith(self.value)
        if k == _REGEX:
            return self.regex.fullmatch(v) is not None
        return True  # _PRESENT

    def __repr__(self) -> str:
        kind = {_EXACT: "exact", _PREFIX: "prefix", _REGEX: "regex", _PRESENT: "present"}[self.kind]
        return f"StringMatcher({kind}, {self.value!r})"


class HeaderOps:
    """Header operations of one direction, validated: what RewriteOps takes."""

    __slots__ = ("set", "add", "remove")

    def __init__(self, set: tuple[tuple[bytes, bytes], ...] = (),
                 add: tuple[tuple[bytes, bytes], ...] = (), remove: tuple[bytes, ...] = ()):
        self.set = set
        self.add = add
        self.remove = remove

    @property
    def empty(self) -> bool:
        return not (self.set or self.add or self.remove)

    def __repr__(self) -> str:
        return f"HeaderOps(set={self.set!r}, add={self.add!r}, remove={self.remove!r})"


_NO_OPS = HeaderOps()


class Destination:
    """Where a request goes: Istio's Destination (host is the service / cluster
    name, lower-cased). where: the path of its route[] entry, for errors."""

    __slots__ = ("host", "subset", "port", "weight", "where")

    def __init__(self, host: str, subset: str | None, port: int | None, weight: int,
                 where: str = ""):
        self.host = host
        self.subset = subset
        self.port = port
        self.weight = weight
        self.where = where

    def __repr__(self) -> str:
        return (f"Destination({self.host!r}, subset={self.subset!r}, port={self.port!r}, "
                f"weight={self.weight})")


class Redirect:
    """Istio's HTTPRedirect. location() builds the Location value."""

    __slots__ = ("uri", "authority", "port", "scheme", "code")

    def __init__(self, uri: bytes | None, authority: bytes | None, port: int | None,
                 scheme: bytes | None, code: int):
        self.uri = uri
        self.authority = authority
        self.port = port
        self.scheme = scheme
        self.code = code

    def location(self, scheme: bytes, authority: bytes, target: bytes) -> bytes:
        """The Location for a request of this scheme (b"http"/b"https"),
        authority (as received) and target (origin-form). Unset parts are the
        request's; the query is kept unless the new uri has one; a default
        port is never written (a changed scheme drops the old one's).
        The authority is used as received: the caller passes a valid Host."""
        path, sep, query = target.partition(b"?")
        new_scheme = self.scheme or scheme
        host, port = _split_port(self.authority if self.authority is not None else authority)
        if self.port is not None:
            port = b"%d" % self.port
        elif self.authority is None and new_scheme != scheme and port == _DEFAULT_PORT.get(scheme):
            port = b""  # http://a:80/x -> https://a/x
        if port == _DEFAULT_PORT.get(new_scheme):
            port = b""
        if self.uri is not None:
            path = self.uri
            if b"?" in path:
                sep = query = b""
        return b"".join((new_scheme, b"://", host, b":" if port else b"", port, path, sep, query))

    def __repr__(self) -> str:
        return (f"Redirect(uri={self.uri!r}, authority={self.authority!r}, port={self.port!r}, "
                f"scheme={self.scheme!r}, code={self.code})")


_DEFAULT_PORT = {b"http": b"80", b"https": b"443"}


def _split_port(authority: bytes) -> tuple[bytes, bytes]:
    """(host, port) of an authority; port b"" if none. IPv6 literals keep brackets."""
    if authority.startswith(b"["):
        end = authority.find(b"]")
        if end > 0:
            rest = authority[end + 1:]
            return authority[:end + 1], rest[1:] if rest.startswith(b":") else b""
        return authority, b""
    host, sep, port = authority.rpartition(b":")
    return (host, port) if sep else (authority, b"")


class HttpRoute:
    """What the data path does with a matched request (one per route and match
    block: blocks differ in what rewrite.uri replaces).

    kind ROUTE: pick(r) gives the Destination; rewrite_uri (None: no rewrite)
    replaces the first rewrite_prefix_len bytes of the path (None: the whole
    path), rewrite_authority (None: none) the Host. kind REDIRECT: redirect.
    kind DIRECT_RESPONSE: direct_status and direct_body. request_headers and
    response_headers apply in every case.

    Traffic policy, kind ROUTE only (the others send nothing upstream):
    timeout_ms (None: not set, the proxy's http_request_timeout_ms
    applies; 0: none) bounds the request's routing -> response head across
    every try; retry is the RetryPolicy (Istio's default when the route says
    nothing; None: no retries); fault a Fault or None; connect_timeout_ms
    (0: the cluster's) and idle_timeout_ms (0: not set) override the
    cluster's and the listener's. Any kind: rate_limit is the route's own
    TokenBucket or None, vh_rate_limit its VirtualService's (checked first);
    rate_limit_key / vh_rate_limit_key name their buckets (the route's and
    the VirtualService's path, e.g. virtual_services[0].http[1]: every
    match block of a route shares its bucket).

    Filled by the routing table when it decodes (routing/table.py), so the
    data path looks no name up per request: `clusters`, for kind ROUTE, is
    TOTAL_WEIGHT ClusterRoute objects indexed as pick() indexes destinations
    (cluster_for(r) is clusters[r % TOTAL_WEIGHT], the cluster of pick(r));
    () otherwise. rate_limit_slot / vh_rate_limit_slot: the buckets' slots
    in the governance segment (-1: no bucket). `native` is free for the data
    path to attach its compiled form (e.g. a RewriteOps) once per table
    generation.
    """

    __slots__ = ("name", "where", "virtual_service", "kind", "destinations", "_by_weight",
                 "rewrite_uri", "rewrite_prefix_len", "rewrite_authority", "redirect",
                 "direct_status", "direct_body", "request_headers", "response_headers",
                 "timeout_ms", "retry", "fault", "connect_timeout_ms", "idle_timeout_ms",
                 "rate_limit", "rate_limit_key", "rate_limit_slot",
                 "vh_rate_limit", "vh_rate_limit_key", "vh_rate_limit_slot",
                 "clusters", "native")

    def __init__(self, name: str | None, where: str, virtual_service: str | None, kind: str):
        self.name = name
        self.where = where
        self.virtual_service = virtual_service
        self.kind = kind
        self.destinations: tuple[Destination, ...] = ()
        self._by_weight: tuple[Destination, ...] = ()
        self.rewrite_uri: bytes | None = None
        self.rewrite_prefix_len: int | None = None
        self.rewrite_authority: bytes | None = None
        self.redirect: Redirect | None = None
        self.direct_status = 0
        self.direct_body = b""
        self.request_headers = _NO_OPS
        self.response_headers = _NO_OPS
        self.timeout_ms: int | None = None
        self.retry: RetryPolicy | None = None
        self.fault: Fault | None = None
        self.connect_timeout_ms = 0
        self.idle_timeout_ms = 0
        self.rate_limit: TokenBucket | None = None
        self.rate_limit_key: str | None = None
        self.rate_limit_slot = -1
        self.vh_rate_limit: TokenBucket | None = None
        self.vh_rate_limit_key: str | None = None
        self.vh_rate_limit_slot = -1
        self.clusters: tuple[Any, ...] = ()
        self.native: Any = None

    def pick(self, r: int) -> Destination:
        """The destination for the random number r >= 0: weight-proportional
        over r, deterministic for a given r. Only for kind ROUTE."""
        return self._by_weight[r % TOTAL_WEIGHT]

    def cluster_for(self, r: int) -> Any:
        """The resolved cluster of pick(r). Only for kind ROUTE, once the
        routing table has filled `clusters`."""
        return self.clusters[r % TOTAL_WEIGHT]

    def __repr__(self) -> str:
        return f"HttpRoute({self.name!r}, {self.kind}, at {self.where})"


class _Match:
    """One HTTPMatchRequest block, compiled to data; VirtualHost turns its
    blocks into code (see _compile_select)."""

    __slots__ = ("path_kind", "path", "path_regex", "ignore_case", "method", "authority",
                 "headers", "query")

    def __init__(self):
        self.path_kind = 0  # 0: no uri condition
        self.path = b""     # lower-cased with ignore_case
        self.path_regex: re.Pattern[bytes] | None = None
        self.ignore_case = False
        self.method: StringMatcher | None = None
        self.authority: StringMatcher | None = None
        self.headers: tuple[tuple[bytes, StringMatcher, bool], ...] = ()  # name, match, invert
        self.query: tuple[tuple[bytes, StringMatcher], ...] = ()


_MATCH_ALL = _Match()


def _compile_select(routes: tuple[tuple[_Match, HttpRoute], ...]) -> tuple[str, Any]:
    """The source and the function of one VirtualHost's route selection:
    every block a single `if` of its conditions, in order, so a request
    costs a few comparisons per route and no call per condition.

    The source holds only generated names (P0, R0, ...); every configured
    value reaches the function through its globals, never as source text."""
    env: dict[str, Any] = {"_parse_query": _parse_query, "_EMPTY": _EMPTY}
    lines = ["def select(path, qs, method, authority, headers):"]
    if any(m.query for m, _ in routes):
        lines.append("    query = _parse_query(qs) if qs else _EMPTY")

    def const(prefix: str, value: Any) -> str:
        name = f"{prefix}{len(env)}"
        env[name] = value
        return name

    def string_test(sm: StringMatcher, subject: str, nullable: bool = True) -> str:
        """A test of subject (None: absent, only ever false) against sm."""
        if sm.kind == _PRESENT:
            return f"{subject} is not None"
        if sm.kind == _EXACT:
            return f"{subject} == {const('V', sm.value)}"
        guard = ""
        if nullable:
            guard, subject = f"(v := {subject}) is not None and ", "v"
        if sm.kind == _PREFIX:
            return f"{guard}{subject}.startswith({const('V', sm.value)})"
        return f"{guard}{const('X', sm.regex.fullmatch)}({subject}) is not None"

    for m, route in routes:
        conds = []
        if m.path_kind:
            path = "path.lower()" if m.ignore_case else "path"
            if m.path_kind == _EXACT:
                conds.append(f"{path} == {const('P', m.path)}")
            elif m.path_kind == _PREFIX:
                conds.append(f"{path}.startswith({const('P', m.path)})")
            else:
                conds.append(f"{const('X', m.path_regex.fullmatch)}(path) is not None")
        if m.method is not None:
            conds.append(string_test(m.method, "method", nullable=False))
        if m.authority is not None:
            conds.append(string_test(m.authority, "authority", nullable=False))
        for name, sm, invert in m.headers:
            test = string_test(sm, f"headers.get({const('H', name)})")
            conds.append(f"not ({test})" if invert else f"({test})")
        for name, sm in m.query:
            subject = f"query.get({const('Q', name)})"
            conds.append(f"({string_test(sm, subject)})")
        if route.where.isprintable():
            lines.append(f"    # {route.where}")
        lines.append(f"    if {' and '.join(conds) or 'True'}:")
        lines.append(f"        return {const('R', route)}")
    lines.append("    return None")
    source = "\n".join(lines) + "\n"
    exec(compile(source, "<fastproxy.routing.http select>", "exec"), env)
    return source, env["select"]


class VirtualHost:
    """The routes of one VirtualService. select() is the per-request work.

    header_names: the lower-case header names any condition examines, so
    the caller need only extract those fields. source: the code select()
    runs, for reading."""

    __slots__ = ("name", "hosts", "routes", "header_names", "source", "_select")

    def __init__(self, name: str | None, hosts: tuple[str, ...],
                 routes: tuple[tuple[_Match, HttpRoute], ...]):
        self.name = name
        self.hosts = hosts
        self.routes = tuple(r for _, r in routes)
        self.header_names = frozenset(h[0] for m, _ in routes for h in m.headers)
        self.source, self._select = _compile_select(routes)

    def select(self, method: bytes, target: bytes, headers: Mapping[bytes, bytes] = _EMPTY,
               authority: bytes = b"") -> HttpRoute | None:
        """The first route matching this request, or None. target is the
        origin-form request-target (path and query); headers maps lower-case
        names to values (at least those in header_names)."""
        path, _, qs = target.partition(b"?")
        return self._select(path, qs, method, authority, headers)

    def __repr__(self) -> str:
        return f"VirtualHost({self.name!r}, hosts={self.hosts!r})"


def _parse_query(qs: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for part in qs.split(b"&"):
        if part:
            k, _, v = part.partition(b"=")
            if k not in out:
                out[k] = v
    return out


class HttpRouteTable:
    """Every VirtualService, indexed by host. Immutable but for a small cache
    of authority -> VirtualHost (the table lives in one worker).

    header_names: the lower-case header names any route examines (headers
    or withoutHeaders); needs_headers: whether there are any, so the caller
    builds a header mapping only when some route can look at it."""

    __slots__ = ("virtual_hosts", "header_names", "needs_headers", "_exact", "_suffix", "_any",
                 "_cache")

    CACHE_SIZE = 1024

    def __init__(self, virtual_hosts: tuple[VirtualHost, ...]):
        self.virtual_hosts = virtual_hosts
        self.header_names = frozenset(h for vh in virtual_hosts for h in vh.header_names)
        self.needs_headers = bool(self.header_names)
        self._exact: dict[bytes, VirtualHost] = {}
        self._suffix: dict[bytes, VirtualHost] = {}  # ".example.com" for "*.example.com"
        self._any: VirtualHost | None = None
        self._cache: dict[bytes, VirtualHost | None] = {}
        for vh in virtual_hosts:
            for h in vh.hosts:
                if h == "*":
                    self._any = vh
                elif h.startswith("*."):
                    self._suffix[h[1:].encode()] = vh
                else:
                    self._exact[h.encode()] = vh

    def routes(self) -> tuple[HttpRoute, ...]:
        """Every HttpRoute (one per route and match block), in order."""
        return tuple(r for vh in self.virtual_hosts for r in vh.routes)

    def virtual_host(self, authority: bytes) -> VirtualHost | None:
        """The VirtualHost for an authority (Host value, any case, any port)."""
        vh = self._cache.get(authority, False)
        if vh is not False:
            return vh
        host = _split_port(authority.lower())[0]
        vh = self._exact.get(host)
        if vh is None and self._suffix:
            i = host.find(b".", 1)
            while i > 0:
                vh = self._suffix.get(host[i:])
                if vh is not None:
                    break
                i = host.find(b".", i + 1)
        if vh is None:
            vh = self._any
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[authority] = vh
        return vh

    def select(self, authority: bytes, method: bytes, target: bytes,
               headers: Mapping[bytes, bytes] = _EMPTY) -> HttpRoute | None:
        """The route for a request, or None (no host or no route matched).
        An absolute-form target's authority replaces the given one (RFC 9112
        §3.2.2) and its path is matched."""
        if target[:1] != b"/":
            scheme_end = target.find(b"://")
            if scheme_end > 0:
                rest = target[scheme_end + 3:]
                end = len(rest)
                for c in (b"/", b"?"):
                    j = rest.find(c)
                    if 0 <= j < end:
                        end = j
                authority = rest[:end]
                target = rest[end:]
                if target[:1] != b"/":
                    target = b"/" + target
        vh = self.virtual_host(authority)
        if vh is None:
            return None
        return vh.select(method, target, headers, authority)


# ---- compilation ------------------------------------------------------------


def compile_virtual_services(docs: Any, path: str = "virtual_services") -> HttpRouteTable:
    """Validates and compiles a list of VirtualService documents. Raises
    ConfigError naming the offending field (e.g. virtual_services[0].http[2]
    .match[0].uri.regex)."""
    if docs is None:
        docs = []
    _list(docs, path)
    hosts_seen: dict[str, str] = {}
    names_seen: dict[str, str] = {}
    vhosts = []
    for i, doc in enumerate(docs):
        where = f"{path}[{i}]"
        name, spec, spec_where = _unwrap(doc, where)
        if name is not None:
            if name in names_seen:
                raise ConfigError(f"{where}.name", f"duplicate name {name!r} (also {names_seen[name]})")
            names_seen[name] = where
        vhosts.append(_virtual_service(name, spec, spec_where, hosts_seen))
    return HttpRouteTable(tuple(vhosts))


_VS_KEYS = {"name", "hosts", "http", "exportTo", "gateways", "localRateLimit"}
_UNSUPPORTED_VS = {"tcp": "tcp routes are not supported", "tls": "tls routes are not supported"}


def _unwrap(doc: Any, where: str) -> tuple[str | None, dict, str]:
    """(name, spec, path of spec) of a plain spec or a Kubernetes object."""
    _mapping(doc, where)
    if "spec" in doc:
        _keys(doc, {"apiVersion", "kind", "metadata", "spec"}, where)
        if doc.get("kind", "VirtualService") != "VirtualService":
            raise ConfigError(f"{where}.kind", f"expected VirtualService, got {doc['kind']!r}")
        meta = doc.get("metadata") or {}
        _mapping(meta, f"{where}.metadata")
        name = meta.get("name")
        if name is not None:
            _string(name, f"{where}.metadata.name", nonempty=True)
        spec = doc["spec"]
        _mapping(spec, f"{where}.spec")
        if "name" in spec:
            raise ConfigError(f"{where}.spec.name", "unknown field (use metadata.name)")
        return name, spec, f"{where}.spec"
    name = doc.get("name")
    if name is not None:
        _string(name, f"{where}.name", nonempty=True)
    return name, doc, where


def _virtual_service(name: str | None, spec: dict, where: str,
                     hosts_seen: dict[str, str]) -> VirtualHost:
    for key, why in _UNSUPPORTED_VS.items():
        if key in spec:
            raise ConfigError(f"{where}.{key}", why)
    _keys(spec, _VS_KEYS, where)
    if "gateways" in spec:
        gw = spec["gateways"]
        _list(gw, f"{where}.gateways")
        if list(gw) != ["mesh"]:
            raise ConfigError(f"{where}.gateways", "only [mesh] is supported (a sidecar)")
    if "exportTo" in spec:
        _list(spec["exportTo"], f"{where}.exportTo")
    if "hosts" not in spec:
        raise ConfigError(f"{where}.hosts", "required field is missing")
    hosts_doc = spec["hosts"]
    _list(hosts_doc, f"{where}.hosts")
    if not hosts_doc:
        raise ConfigError(f"{where}.hosts", "at least one host is required")
    hosts = []
    for j, h in enumerate(hosts_doc):
        hw = f"{where}.hosts[{j}]"
        _string(h, hw, nonempty=True)
        h = h.lower()
        if not _VS_HOST.fullmatch(h):
            raise ConfigError(hw, f"invalid host {h!r} (a DNS name, *.suffix, * or an IP; no port)")
        if h in hosts_seen:
            raise ConfigError(hw, f"host {h!r} is already used by {hosts_seen[h]}")
        hosts_seen[h] = hw
        hosts.append(h)
    http = spec.get("http")
    if http is None:
        http = []
    _list(http, f"{where}.http")
    vh_bucket = None
    if spec.get("localRateLimit") is not None:
        vh_bucket = parse_token_bucket(spec["localRateLimit"], f"{where}.localRateLimit")
    routes: list[tuple[_Match, HttpRoute]] = []
    for j, r in enumerate(http):
        routes.extend(_http_route(r, f"{where}.http[{j}]", name))
    if vh_bucket is not None:
        for _, route in routes:
            route.vh_rate_limit = vh_bucket
            route.vh_rate_limit_key = where
    return VirtualHost(name, tuple(hosts), tuple(routes))


_ROUTE_KEYS = {"name", "match", "route", "redirect", "directResponse", "rewrite", "headers",
               "timeout", "retries", "fault", "connectTimeout", "idleTimeout", "localRateLimit"}
_UNSUPPORTED_ROUTE = ("mirror", "mirrors", "mirrorPercentage", "mirrorPercent", "mirror_percent",
                      "corsPolicy", "delegate")
# what only a route that forwards upstream can use
_UPSTREAM_ONLY = ("rewrite", "timeout", "retries", "fault", "connectTimeout", "idleTimeout")


def _http_route(doc: Any, where: str, vs_name: str | None) -> list[tuple[_Match, HttpRoute]]:
    _mapping(doc, where)
    for key in _UNSUPPORTED_ROUTE:
        if key in doc:
            raise ConfigError(f"{where}.{key}", "not supported yet")
    _keys(doc, _ROUTE_KEYS, where)
    name = doc.get("name")
    if name is not None:
        _string(name, f"{where}.name", nonempty=True)
    actions = [k for k in ("route", "redirect", "directResponse") if k in doc]
    if len(actions) != 1:
        raise ConfigError(where, "exactly one of route, redirect, directResponse is required"
                          + (f" (got {', '.join(actions)})" if actions else ""))
    for key in _UPSTREAM_ONLY:
        if key in doc and actions[0] != "route":
            raise ConfigError(f"{where}.{key}", f"{key} cannot be used with {actions[0]}")

    req_ops, resp_ops = _NO_OPS, _NO_OPS
    if "headers" in doc:
        hw = f"{where}.headers"
        _mapping(doc["headers"], hw)
        _keys(doc["headers"], {"request", "response"}, hw)
        if doc["headers"].get("request") is not None:
            req_ops = _header_ops(doc["headers"]["request"], f"{hw}.request")
        if doc["headers"].get("response") is not None:
            resp_ops = _header_ops(doc["headers"]["response"], f"{hw}.response")

    # the action, shared by every match block of this route
    destinations: tuple[Destination, ...] = ()
    by_weight: tuple[Destination, ...] = ()
    rewrite_uri = rewrite_authority = None
    redirect = None
    direct_status, direct_body = 0, b""
    if "route" in doc:
        destinations, by_weight = _destinations(doc["route"], f"{where}.route")
        if "rewrite" in doc:
            rewrite_uri, rewrite_authority = _rewrite(doc["rewrite"], f"{where}.rewrite")
    elif "redirect" in doc:
        redirect = _redirect(doc["redirect"], f"{where}.redirect")
    else:
        direct_status, direct_body = _direct_response(doc["directResponse"],
                                                      f"{where}.directResponse")
    kind = ROUTE if "route" in doc else REDIRECT if "redirect" in doc else DIRECT_RESPONSE

    # traffic policy, shared by every match block too
    connect_ms = idle_ms = 0
    timeout_ms = None
    retry = fault = bucket = None
    if kind == ROUTE:
        retry = ISTIO_DEFAULT
        if doc.get("timeout") is not None:
            timeout_ms = parse_duration_ms(doc["timeout"], f"{where}.timeout", allow_zero=True)
        if doc.get("retries") is not None:
            retry = parse_retries(doc["retries"], f"{where}.retries")
        if doc.get("fault") is not None:
            fault = parse_fault(doc["fault"], f"{where}.fault")
        if doc.get("connectTimeout") is not None:
            connect_ms = parse_duration_ms(doc["connectTimeout"], f"{where}.connectTimeout")
        if doc.get("idleTimeout") is not None:
            idle_ms = parse_duration_ms(doc["idleTimeout"], f"{where}.idleTimeout")
    if doc.get("localRateLimit") is not None:
        bucket = parse_token_bucket(doc["localRateLimit"], f"{where}.localRateLimit")

    blocks = doc.get("match")
    if blocks is None or blocks == []:
        compiled = [(_MATCH_ALL, 1, where)]
    else:
        _list(blocks, f"{where}.match")
        compiled = []
        for k, b in enumerate(blocks):
            mw = f"{where}.match[{k}]"
            compiled.append((*_match(b, mw), mw))

    out = []
    for m, prefix_len, mw in compiled:
        r = HttpRoute(name, mw, vs_name, kind)
        r.destinations = destinations
        r._by_weight = by_weight
        r.rewrite_uri = rewrite_uri
        r.rewrite_prefix_len = prefix_len if rewrite_uri is not None else None
        r.rewrite_authority = rewrite_authority
        r.redirect = redirect
        r.direct_status = direct_status
        r.direct_body = direct_body
        r.request_headers = req_ops
        r.response_headers = resp_ops
        r.timeout_ms = timeout_ms
        r.retry = retry
        r.fault = fault
        r.connect_timeout_ms = connect_ms
        r.idle_timeout_ms = idle_ms
        if bucket is not None:
            r.rate_limit = bucket
            r.rate_limit_key = where
        out.append((m, r))
    return out


_MATCH_KEYS = {"name", "uri", "ignoreUriCase", "method", "authority", "headers",
               "withoutHeaders", "queryParams"}
_UNSUPPORTED_MATCH = ("port", "scheme", "sourceLabels", "gateways", "sourceNamespace",
                      "statPrefix")


def _match(doc: Any, where: str) -> tuple[_Match, int | None]:
    """The compiled block, and how many path bytes rewrite.uri replaces
    (None: all of them)."""
    _mapping(doc, where)
    for key in _UNSUPPORTED_MATCH:
        if key in doc:
            raise ConfigError(f"{where}.{key}", "not supported yet")
    _keys(doc, _MATCH_KEYS, where)
    if "name" in doc:
        _string(doc["name"], f"{where}.name")
    m = _Match()
    prefix_len: int | None = 1  # no uri condition: Envoy's prefix "/"
    if "ignoreUriCase" in doc:
        if not isinstance(doc["ignoreUriCase"], bool):
            raise ConfigError(f"{where}.ignoreUriCase", f"expected a boolean, got {doc['ignoreUriCase']!r}")
        m.ignore_case = doc["ignoreUriCase"]
    if "uri" in doc:
        uri = _string_match(doc["uri"], f"{where}.uri")
        m.path_kind = uri.kind
        if uri.kind == _REGEX:
            m.path_regex = uri.regex
            prefix_len = None
        else:
            m.path = uri.value.lower() if m.ignore_case else uri.value
            prefix_len = len(uri.value) if uri.kind == _PREFIX else None
    if "method" in doc:
        m.method = _string_match(doc["method"], f"{where}.method")
    if "authority" in doc:
        m.authority = _string_match(doc["authority"], f"{where}.authority")
    headers = []
    for key, invert in (("headers", False), ("withoutHeaders", True)):
        if key in doc:
            hw = f"{where}.{key}"
            _mapping(doc[key], hw)
            for hname, hm in doc[key].items():
                nw = f"{hw}.{hname}"
                _header_name(hname, nw, owned_ok=True)
                headers.append((hname.lower().encode(), _string_match(hm, nw, allow_present=True),
                                invert))
    m.headers = tuple(headers)
    if "queryParams" in doc:
        qw = f"{where}.queryParams"
        _mapping(doc["queryParams"], qw)
        query = []
        for qname, qm in doc["queryParams"].items():
            nw = f"{qw}.{qname}"
            _string(qname, nw, nonempty=True)
            query.append((qname.encode(), _string_match(qm, nw, kinds=("exact", "regex"),
                                                        allow_present=True)))
        m.query = tuple(query)
    return m, prefix_len


def _string_match(doc: Any, where: str, kinds: tuple[str, ...] = ("exact", "prefix", "regex"),
                  allow_present: bool = False) -> StringMatcher:
    _mapping(doc, where)
    _keys(doc, set(kinds), where)
    if not doc:
        if allow_present:
            return StringMatcher(_PRESENT)
        raise ConfigError(where, f"one of {', '.join(kinds)} is required")
    if len(doc) > 1:
        raise ConfigError(where, f"only one of {', '.join(kinds)} may be given")
    (kind, value), = doc.items()
    vw = f"{where}.{kind}"
    _string(value, vw)
    raw = value.encode()
    if kind == "exact":
        return StringMatcher(_EXACT, raw)
    if kind == "prefix":
        return StringMatcher(_PREFIX, raw)
    try:
        rx = re.compile(raw)
    except re.error as e:
        raise ConfigError(vw, f"invalid regex: {e}") from None
    return StringMatcher(_REGEX, raw, rx)


def _destinations(doc: Any, where: str) -> tuple[tuple[Destination, ...], tuple[Destination, ...]]:
    _list(doc, where)
    if not doc:
        raise ConfigError(where, "at least one destination is required")
    dests = []
    for i, d in enumerate(doc):
        dw = f"{where}[{i}]"
        _mapping(d, dw)
        if "headers" in d:
            raise ConfigError(f"{dw}.headers", "per-destination headers are not supported yet "
                              "(use the route's headers)")
        _keys(d, {"destination", "weight"}, dw)
        if "destination" not in d:
            raise ConfigError(f"{dw}.destination", "required field is missing")
        dest = d["destination"]
        ddw = f"{dw}.destination"
        _mapping(dest, ddw)
        _keys(dest, {"host", "subset", "port"}, ddw)
        if "host" not in dest:
            raise ConfigError(f"{ddw}.host", "required field is missing")
        _string(dest["host"], f"{ddw}.host", nonempty=True)
        host = dest["host"].lower()
        if not _DEST_HOST.fullmatch(host):
            raise ConfigError(f"{ddw}.host", f"invalid host {dest['host']!r} (no wildcard, no port)")
        subset = dest.get("subset")
        if subset is not None:
            _string(subset, f"{ddw}.subset", nonempty=True)
        port = None
        if dest.get("port") is not None:
            pw = f"{ddw}.port"
            _mapping(dest["port"], pw)
            _keys(dest["port"], {"number"}, pw)
            port = _int(dest["port"].get("number"), f"{pw}.number", 1, 65535)
        if "weight" in d:
            weight = _int(d["weight"], f"{dw}.weight", 0, TOTAL_WEIGHT)
        else:
            weight = TOTAL_WEIGHT if len(doc) == 1 else 0
        dests.append(Destination(host, subset, port, weight, dw))
    total = sum(d.weight for d in dests)
    if total != TOTAL_WEIGHT:
        raise ConfigError(where, f"destination weights must sum to {TOTAL_WEIGHT}, got {total}")
    by_weight = tuple(d for d in dests for _ in range(d.weight))
    return tuple(dests), by_weight


def _rewrite(doc: Any, where: str) -> tuple[bytes | None, bytes | None]:
    _mapping(doc, where)
    if "uriRegexRewrite" in doc:
        raise ConfigError(f"{where}.uriRegexRewrite", "not supported yet")
    _keys(doc, {"uri", "authority"}, where)
    uri = authority = None
    if doc.get("uri") is not None:
        _string(doc["uri"], f"{where}.uri")
        if not _PATH.fullmatch(doc["uri"]) or "?" in doc["uri"] or "#" in doc["uri"]:
            raise ConfigError(f"{where}.uri", "a path: printable ASCII without space, '?' or '#'")
        uri = doc["uri"].encode()
    if doc.get("authority") is not None:
        authority = _authority(doc["authority"], f"{where}.authority")
    if uri is None and authority is None:
        raise ConfigError(where, "uri or authority is required")
    return uri, authority


def _redirect(doc: Any, where: str) -> Redirect:
    _mapping(doc, where)
    if "derivePort" in doc:
        raise ConfigError(f"{where}.derivePort", "not supported yet")
    _keys(doc, {"uri", "authority", "port", "scheme", "redirectCode"}, where)
    uri = authority = scheme = None
    port = None
    if doc.get("uri") is not None:
        _string(doc["uri"], f"{where}.uri", nonempty=True)
        if not doc["uri"].startswith("/") or not _PATH.fullmatch(doc["uri"]) or "#" in doc["uri"]:
            raise ConfigError(f"{where}.uri", "a path starting with '/': printable ASCII "
                              "without space or '#'")
        uri = doc["uri"].encode()
    if doc.get("authority") is not None:
        authority = _authority(doc["authority"], f"{where}.authority")
    if doc.get("port") is not None:
        port = _int(doc["port"], f"{where}.port", 1, 65535)
    if doc.get("scheme") is not None:
        _string(doc["scheme"], f"{where}.scheme", nonempty=True)
        if not _SCHEME.fullmatch(doc["scheme"].lower()):
            raise ConfigError(f"{where}.scheme", f"invalid scheme {doc['scheme']!r}")
        scheme = doc["scheme"].lower().encode()
    code = 301
    if doc.get("redirectCode") is not None:
        code = _int(doc["redirectCode"], f"{where}.redirectCode", 300, 399)
        if code not in REDIRECT_CODES:
            raise ConfigError(f"{where}.redirectCode",
                              f"expected one of {', '.join(map(str, REDIRECT_CODES))}, got {code}")
    return Redirect(uri, authority, port, scheme, code)


def _direct_response(doc: Any, where: str) -> tuple[int, bytes]:
    _mapping(doc, where)
    _keys(doc, {"status", "body"}, where)
    if "status" not in doc:
        raise ConfigError(f"{where}.status", "required field is missing")
    status = _int(doc["status"], f"{where}.status", 200, 599)
    body = b""
    if doc.get("body") is not None:
        bw = f"{where}.body"
        _mapping(doc["body"], bw)
        _keys(doc["body"], {"string", "bytes"}, bw)
        if len(doc["body"]) != 1:
            raise ConfigError(bw, "exactly one of string, bytes is required")
        if "string" in doc["body"]:
            _string(doc["body"]["string"], f"{bw}.string")
            body = doc["body"]["string"].encode()
        else:
            _string(doc["body"]["bytes"], f"{bw}.bytes")
            try:
                body = base64.b64decode(doc["body"]["bytes"], validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{bw}.bytes", "not valid base64") from None
        if len(body) > MAX_DIRECT_BODY_BYTES:
            raise ConfigError(bw, f"body over {MAX_DIRECT_BODY_BYTES} bytes")
    return status, body


def _header_ops(doc: Any, where: str) -> HeaderOps:
    _mapping(doc, where)
    _keys(doc, {"set", "add", "remove"}, where)
    out = []
    for key in ("set", "add"):
        pairs = []
        seen: dict[str, str] = {}
        items = doc.get(key) or {}
        _mapping(items, f"{where}.{key}")
        for name, value in items.items():
            nw = f"{where}.{key}.{name}"
            _header_name(name, nw)
            _string(value, nw)
            if not _FIELD_VALUE.fullmatch(value):
                raise ConfigError(nw, "invalid header value (control characters, or whitespace "
                                  "at either end)")
            if key == "set":
                if name.lower() in seen:
                    raise ConfigError(nw, f"set twice (also {seen[name.lower()]})")
                seen[name.lower()] = nw
            pairs.append((name.encode(), value.encode()))
        out.append(tuple(pairs))
    if len(out[0]) > MAX_SET_HEADERS:
        raise ConfigError(f"{where}.set", f"more than {MAX_SET_HEADERS} headers")
    removes = doc.get("remove") or []
    _list(removes, f"{where}.remove")
    for i, name in enumerate(removes):
        _header_name(name, f"{where}.remove[{i}]")
    return HeaderOps(out[0], out[1], tuple(n.encode() for n in removes))


# ---- validation helpers -----------------------------------------------------


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _mapping(v: Any, where: str) -> None:
    if not isinstance(v, dict):
        raise ConfigError(where, f"expected a mapping, got {_kind(v)}")


def _list(v: Any, where: str) -> None:
    if not isinstance(v, list):
        raise ConfigError(where, f"expected a list, got {_kind(v)}")


def _keys(d: dict, allowed: set[str], where: str) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}.{k}", f"unknown field (expected one of: {', '.join(sorted(allowed))})")


def _string(v: Any, where: str, nonempty: bool = False) -> None:
    if not isinstance(v, str) or (nonempty and not v):
        what = "a non-empty string" if nonempty else "a string"
        raise ConfigError(where, f"expected {what}, got {v!r} (quote it in YAML)")


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(where, f"expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(where, f"must be in {lo}..{hi}, got {v}")
    return v


def _header_name(v: Any, where: str, owned_ok: bool = False) -> None:
    _string(v, where, nonempty=True)
    if not _TOKEN.fullmatch(v):
        raise ConfigError(where, f"invalid header name {v!r} (a token)")
    if not owned_ok and v.lower() in PROXY_OWNED_HEADERS:
        raise ConfigError(where, f"{v!r} is managed by the proxy (hop-by-hop, framing or Host; "
                          "use rewrite.authority for Host)")


def _authority(v: Any, where: str) -> bytes:
    _string(v, where, nonempty=True)
    if not _AUTHORITY.fullmatch(v):
        raise ConfigError(where, f"invalid authority {v!r}")
    return v.encode()
