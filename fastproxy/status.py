"""`fastproxy status`: what a running proxy is doing, from its admin API.

    fastproxy status [--admin HOST:PORT] [--interval S] [-o text|json]

Read from the admin port (default 127.0.0.1:15000): /config_dump (the
config in effect, the table's generation, the last rejected config),
/workers, /clusters?format=json (each endpoint's health), and
/stats/prometheus twice, --interval seconds apart (default 1), for the
traffic rates. Shown:

- listeners: address, kind (capture outbound/inbound, TCP to a cluster,
  HTTP routed by virtual services);
- routes: each VirtualService's http routes in order, with their match, and
  their destinations and weights (or the redirect / direct response);
- clusters: each endpoint with its weight and health (HEALTHY, or
  UNHEALTHY with why: the active health check failed it, outlier detection
  ejected it), the circuit-breaker thresholds set, and the requests per
  second sent to the cluster;
- the table's generation and the last rejected config;
- the interception rules in effect on this host's network namespace: the
  fastproxy-tagged rules of `iptables-save`, `ip6tables-save` and `nft list
  table inet fastproxy`, or "not visible" (no tool, no permission, or none
  installed here; a pod's rules live in the pod's namespace);
- traffic rates. The proxy counts requests per cluster, not per route: a
  route's rate is the sum over its destination clusters of the requests per
  second sent upstream to each (fastproxy_cluster_upstream_rq_total), and a
  cluster shared by several routes is counted in each of them (marked
  "shared").

build() and render_text() are pure; collect() does the I/O.
"""
from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import time

import orjson

SCHEMA_VERSION = 1
DEFAULT_ADMIN = "127.0.0.1:15000"
RQ_TOTAL = "fastproxy_cluster_upstream_rq_total"
CX_ACTIVE = "fastproxy_cluster_upstream_cx_active"
RULE_TOOLS = (("iptables-save", ["iptables-save"]), ("ip6tables-save", ["ip6tables-save"]),
              ("nft", ["nft", "list", "table", "inet", "fastproxy"]))


class StatusError(RuntimeError):
    """The admin API could not be read."""


# ---------------------------------------------------------------------------
# Prometheus text (the few lines status needs)

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(name, frozenset(labels)): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = frozenset((k, v.replace('\\"', '"').replace("\\\\", "\\"))
                           for k, v in _LABEL.findall(m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


def _by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name:
            for k, lv in labels:
                if k == label:
                    out[lv] = out.get(lv, 0.0) + v
    return out


# ---------------------------------------------------------------------------
# The picture (pure)


def _listener_kind(l: dict) -> tuple[str, str | None]:
    if l.get("use_original_dst"):
        return ("capture inbound" if l.get("traffic_direction") == "INBOUND" else "capture outbound"), None
    if l.get("http") is not None:
        return "http (virtual services)", (l["http"] or {}).get("cluster")
    if not l.get("bind_to_port", True):
        return "virtual (original destination)", (l.get("tcp_proxy") or {}).get("cluster")
    return "tcp", (l.get("tcp_proxy") or {}).get("cluster")


def _string_match(m) -> str:
    if not isinstance(m, dict):
        return repr(m)
    for k in ("exact", "prefix", "regex"):
        if k in m:
            return f"{k} {m[k]}"
    return "present"


def _match_text(blocks) -> str:
    if not blocks:
        return "any"
    out = []
    for b in blocks:
        parts = []
        if "uri" in b:
            parts.append(f"uri {_string_match(b['uri'])}")
        for key in ("method", "authority"):
            if key in b:
                parts.append(f"{key} {_string_match(b[key])}")
        for key, word in (("headers", "header"), ("withoutHeaders", "without header"), ("queryParams", "query")):
            for name, m in (b.get(key) or {}).items():
                parts.append(f"{word} {name} {_string_match(m)}")
        out.append(", ".join(parts) or "any")
    return " or ".join(out)


def _routes(virtual_services: list) -> list[dict]:
    routes = []
    for i, vs in enumerate(virtual_services or []):
        spec = vs.get("spec", vs) if isinstance(vs, dict) else {}
        name = (vs.get("metadata") or {}).get("name") if "spec" in vs else vs.get("name")
        name = name or f"virtual_services[{i}]"
        for j, h in enumerate(spec.get("http") or []):
            r = {"virtual_service": name, "hosts": list(spec.get("hosts") or []),
                 "route": h.get("name") or f"http[{j}]", "match": _match_text(h.get("match"))}
            if "route" in h:
                dests = h["route"] or []
                r["action"] = "route"
                r["destinations"] = [
                    {"cluster": (d.get("destination") or {}).get("host", "").lower(),
                     "weight": d.get("weight", 100 if len(dests) == 1 else 0)} for d in dests]
            elif "redirect" in h:
                r["action"] = "redirect"
                r["redirect"] = h["redirect"]
            else:
                r["action"] = "direct_response"
                r["status"] = (h.get("directResponse") or {}).get("status")
            routes.append(r)
    return routes


def interception_rules(outputs: dict[str, str | None]) -> list[str]:
    """The fastproxy lines of iptables-save / nft outputs (tool -> text; None: not read)."""
    lines = []
    for tool, text in outputs.items():
        if not text:
            continue
        table = None
        for line in text.splitlines():
            if tool.endswith("-save"):
                if line.startswith("*"):
                    table = line[1:]
                if "fastproxy" in line or "FASTPROXY" in line:
                    lines.append(f"{tool} {table}: {line}" if table else f"{tool}: {line}")
            elif line.strip() and "fastproxy" in text:
                lines.append(f"{tool}: {line.rstrip()}")
    return lines


_UNLIMITED = 2 ** 32 - 1
_THRESHOLDS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")


def _breaker_text(breakers: dict | None) -> str:
    """The thresholds a cluster sets (Istio's default is none: 2^32-1 each)."""
    b = breakers or {}
    parts = [f"{k} {b[k]}" for k in _THRESHOLDS if b.get(k, _UNLIMITED) != _UNLIMITED]
    if b.get("budget_percent"):
        parts.append(f"retry budget {b['budget_percent']:g}% (min {b.get('min_retry_concurrency', 0)})")
    return ", ".join(parts) or "not configured"


def _health_text(status: dict | None) -> str:
    """HEALTHY, or UNHEALTHY and why, from a /clusters?format=json host status."""
    if not status or status.get("health_flags", "healthy") == "healthy":
        return "HEALTHY"
    why = [w for flag, w in (("failed_active_health_check", "health check failed"),
                             ("failed_outlier_check", "ejected by outlier detection")) if status.get(flag)]
    return f"UNHEALTHY ({', '.join(why) or status['health_flags']})"


def build(config_dump: dict, workers: list, before: str, after: str, seconds: float,
          rules: dict, hosts: list | None = None) -> dict:
    """The status document. before/after: two /stats/prometheus bodies
    `seconds` apart; rules: {"visible": bool, "rules": [...], "why": str};
    hosts: the /clusters?format=json document (None: every endpoint healthy)."""
    statuses = {(c.get("name"), h.get("address")): h for c in hosts or () for h in c.get("host_statuses") or ()}
    config = config_dump.get("config") or {}
    m0, m1 = parse_metrics(before), parse_metrics(after)
    rq0, rq1 = _by_label(m0, RQ_TOTAL, "cluster_name"), _by_label(m1, RQ_TOTAL, "cluster_name")
    active = _by_label(m1, CX_ACTIVE, "cluster_name")
    rate = {c: max(0.0, rq1[c] - rq0.get(c, 0.0)) / seconds for c in rq1} if seconds > 0 else {}
    listeners = []
    for l in config.get("listeners") or []:
        kind, cluster = _listener_kind(l)
        listeners.append({"name": l["name"], "addresses": [l["address"], *(l.get("additional_addresses") or [])],
                          "kind": kind, "cluster": cluster})
    routes = _routes(config.get("virtual_services") or [])
    used: dict[str, int] = {}
    for r in routes:
        for d in r.get("destinations", ()):
            used[d["cluster"]] = used.get(d["cluster"], 0) + 1
    for r in routes:
        if r["action"] == "route":
            r["requests_per_s"] = round(sum(rate.get(d["cluster"], 0.0) for d in r["destinations"]), 2)
            r["shared"] = any(used[d["cluster"]] > 1 for d in r["destinations"])
    clusters = []
    for c in config.get("clusters") or []:
        clusters.append({
            "name": c["name"], "lb_policy": c.get("lb_policy", "ROUND_ROBIN"),
            "breaker": _breaker_text(c.get("breakers")),
            "endpoints": [{"address": e["address"], "weight": e.get("weight", 1),
                           "health": _health_text(statuses.get((c["name"], e["address"])))}
                          for e in c.get("endpoints") or []],
            "requests_total": int(rq1.get(c["name"], 0)),
            "requests_per_s": round(rate.get(c["name"], 0.0), 2),
            "active_connections": int(active.get(c["name"], 0)),
        })
    return {
        "schema": SCHEMA_VERSION,
        "version": config_dump.get("version"),
        "generation": config_dump.get("generation"),
        "source": config_dump.get("source"),
        "last_rejected": config_dump.get("last_rejected"),
        "workers": {"count": len(workers),
                    "alive": sum(1 for w in workers if w.get("alive", True))},
        "listeners": listeners,
        "routes": routes,
        "clusters": clusters,
        "interception": rules,
        "traffic": {"window_s": seconds,
                    "what": "requests per second sent upstream, per cluster "
                            f"({RQ_TOTAL}); a route's rate is the sum over its destination clusters"},
    }


def render_json(doc: dict) -> str:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"


def render_text(doc: dict) -> str:
    out = [f"fastproxy {doc['version']}  generation {doc['generation']}  config {doc['source']}",
           f"workers: {doc['workers']['alive']} alive of {doc['workers']['count']}"]
    rej = doc["last_rejected"]
    out.append("last rejected config: none" if not rej else
               f"last rejected config: {rej.get('source')}: {rej.get('error')}")
    out.append("")
    out.append("LISTENERS")
    for l in doc["listeners"]:
        tail = f" -> {l['cluster']}" if l["cluster"] else ""
        out.append(f"  {l['name']:<24} {', '.join(l['addresses']):<32} {l['kind']}{tail}")
    if not doc["listeners"]:
        out.append("  (none)")
    out.append("")
    out.append(f"ROUTES (requests/s over {doc['traffic']['window_s']:g}s, by destination cluster)")
    for r in doc["routes"]:
        head = f"  {r['virtual_service']}/{r['route']}  hosts {','.join(r['hosts'])}  match {r['match']}"
        if r["action"] == "route":
            dests = ", ".join(f"{d['cluster']} {d['weight']}%" for d in r["destinations"])
            shared = " (shared)" if r["shared"] else ""
            out.append(f"{head}\n    -> {dests}  {r['requests_per_s']:.2f} rq/s{shared}")
        elif r["action"] == "redirect":
            out.append(f"{head}\n    -> redirect {orjson.dumps(r['redirect']).decode()}")
        else:
            out.append(f"{head}\n    -> direct response {r['status']}")
    if not doc["routes"]:
        out.append("  (no virtual services: requests go to their original destination or the listener's cluster)")
    out.append("")
    out.append("CLUSTERS")
    for c in doc["clusters"]:
        out.append(f"  {c['name']}  {c['lb_policy']}  breaker {c['breaker']}  "
                   f"{c['requests_per_s']:.2f} rq/s  {c['requests_total']} requests  "
                   f"{c['active_connections']} active connections")
        for e in c["endpoints"]:
            out.append(f"    {e['address']:<28} weight {e['weight']:<4} {e['health']}")
        if not c["endpoints"]:
            out.append("    (no endpoints)")
    if not doc["clusters"]:
        out.append("  (none)")
    out.append("")
    rules = doc["interception"]
    if rules["visible"]:
        out.append(f"INTERCEPTION RULES ({len(rules['rules'])})")
        out.extend(f"  {line}" for line in rules["rules"])
    else:
        out.append(f"INTERCEPTION RULES: not visible ({rules['why']})")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# I/O


def _get(host: str, port: int, path: str, timeout: float = 5.0) -> bytes:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    except OSError as e:
        raise StatusError(f"cannot read http://{host}:{port}{path}: {e}") from e
    finally:
        conn.close()
    if resp.status != 200:
        raise StatusError(f"GET http://{host}:{port}{path}: status {resp.status}")
    return body


def read_rules(run=subprocess.run) -> dict:
    """The fastproxy rules of this network namespace, or why they cannot be seen."""
    outputs: dict[str, str | None] = {}
    why = []
    for tool, argv in RULE_TOOLS:
        if shutil.which(argv[0]) is None:
            why.append(f"{argv[0]} not found")
            continue
        try:
            p = run(argv, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as e:
            why.append(f"{tool}: {e}")
            continue
        if p.returncode != 0:
            why.append(f"{tool}: {(p.stderr or '').strip().splitlines()[-1:] or ['exit ' + str(p.returncode)]}")
            continue
        outputs[tool] = p.stdout
    rules = interception_rules(outputs)
    if rules:
        return {"visible": True, "rules": rules, "why": ""}
    if outputs:
        why.insert(0, "no fastproxy rules installed in this network namespace")
    return {"visible": False, "rules": [], "why": "; ".join(why) or "no rule tool available"}


def parse_admin(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise StatusError(f"--admin must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def collect(admin: str, interval: float = 1.0, rules: bool = True) -> dict:
    host, port = parse_admin(admin)
    before = _get(host, port, "/stats/prometheus").decode()
    t0 = time.monotonic()
    dump = orjson.loads(_get(host, port, "/config_dump"))
    workers = orjson.loads(_get(host, port, "/workers"))
    hosts = orjson.loads(_get(host, port, "/clusters?format=json"))
    rule_doc = read_rules() if rules else {"visible": False, "rules": [], "why": "not read: --no-rules"}
    rest = interval - (time.monotonic() - t0)
    if rest > 0:
        time.sleep(rest)
    after = _get(host, port, "/stats/prometheus").decode()
    seconds = max(interval, time.monotonic() - t0)
    doc = build(dump, workers, before, after, round(seconds, 1), rule_doc, hosts)
    doc["admin"] = f"{host}:{port}"
    return doc


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("status", help="show a running proxy: listeners, routes, clusters, rules, rates")
    p.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin API address (default {DEFAULT_ADMIN})")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between the two metric scrapes the rates come from (default 1)")
    p.add_argument("--no-rules", action="store_true", help="do not run iptables-save / nft")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        doc = collect(args.admin, max(0.0, args.interval), rules=not args.no_rules)
    except StatusError as e:
        print(f"status: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(render_json(doc) if args.output == "json" else render_text(doc))
    return 0
