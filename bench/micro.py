"""Microbenchmarks of the hot path's pieces: `python -m bench.micro [--budget S] [--c-bench BIN]`.

Each Python case is one call in a timeit loop (best of REPEAT runs, each
about --budget seconds), reported in ns per call, so each figure includes
the cost of one Python call; the `python call` case shows that cost alone.
The C loop (tests/c/bench_http1.c, built by the harness) has no such cost.
Prints one JSON document: {"cases": [{"name", "ns", "what"}, ...], "c_bench": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import timeit

REPEAT = 5
C_BENCH_TIMEOUT_S = 120

# The same head as tests/c/bench_http1.c: what a sidecar sees from a browser
# behind an ingress (10 fields, ~500 bytes).
REQ = (
    b"GET /api/v1/catalog/items?category=books&page=2 HTTP/1.1\r\n"
    b"Host: shop.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\n"
    b"X-Forwarded-For: 203.0.113.7\r\n"
    b"X-Request-Id: 3f1c2a9e-7b4d-4c2a-9f1e-5d6b7a8c9d0e\r\n"
    b"Connection: keep-alive\r\n"
    b"Cache-Control: no-cache\r\n"
    b"\r\n"
)
NFIELDS = 10


def _route(name: str, match: dict | None = None, **extra) -> dict:
    r = {"name": name, "route": [{"destination": {"host": name}}], **extra}
    if match:
        r["match"] = [match]
    return r


# Five VirtualServices, the matched one with eight routes tried in order
# before the request's (prefix) route: a mesh service of modest size.
VIRTUAL_SERVICES = [
    {"name": f"svc{i}", "hosts": [f"svc{i}", f"svc{i}.prod.svc.cluster.local"],
     "http": [_route(f"svc{i}")]} for i in range(4)
] + [
    {"name": "shop", "hosts": ["shop.example.com"], "http": [
        _route("canary", {"headers": {"x-canary": {"exact": "1"}}}),
        _route("admin", {"uri": {"prefix": "/admin"}}),
        _route("login", {"uri": {"exact": "/login"}, "method": {"exact": "POST"}}),
        _route("static", {"uri": {"prefix": "/static/"}}),
        _route("v2", {"uri": {"prefix": "/api/v2/"}}),
        _route("legacy", {"uri": {"regex": "/legacy/[0-9]+"}}),
        _route("beta", {"uri": {"prefix": "/api/v1/"}, "queryParams": {"beta": {"exact": "1"}}}),
        _route("health", {"uri": {"exact": "/healthz"}}),
        _route("catalog", {"uri": {"prefix": "/api/v1/catalog"}},
               headers={"request": {"set": {"x-route": "catalog"}}}),
        _route("default"),
    ]},
]


def best_ns(fn, budget: float) -> float:
    """Best ns per call of fn over REPEAT runs of about budget seconds each."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * budget / max(elapsed, 1e-9)))
    return min(timer.repeat(REPEAT, number)) / number * 1e9


def cases(closers: list) -> list[tuple[str, str, object]]:
    """(name, what it does, zero-argument callable) for each case that can run here.

    What must be closed afterwards is appended to closers.
    """
    out: list[tuple[str, str, object]] = [
        ("python call", "a call of a Python function doing nothing (the loop's own cost)",
         lambda: None),
    ]
    from fastproxy._native import http1, rewrite, shm
    from fastproxy.routing.http import compile_virtual_services

    def ours():
        p = http1.parse_request(REQ)
        return p.method, p.target, p.headers

    p = ours()
    if len(p[2]) != NFIELDS:
        raise SystemExit(f"fastproxy parser found {len(p[2])} fields, expected {NFIELDS}")
    out.append((f"parse head: fastproxy C parser ({http1.simd()})",
                f"fastproxy._native.http1.parse_request of a {len(REQ)}-byte head with "
                f"{NFIELDS} fields, then method, target and the header list",
                ours))

    try:
        import httptools
    except ImportError:
        httptools = None
    if httptools is not None:
        class Collect:
            __slots__ = ("url", "headers")

            def __init__(self):
                self.url = b""
                self.headers = []

            def on_url(self, url):
                self.url = url

            def on_header(self, name, value):
                self.headers.append((name, value))

        def theirs():
            c = Collect()
            parser = httptools.HttpRequestParser(c)
            parser.feed_data(REQ)
            return parser.get_method(), c.url, c.headers

        t = theirs()
        if len(t[2]) != NFIELDS:
            raise SystemExit(f"httptools found {len(t[2])} fields, expected {NFIELDS}")
        out.append((f"parse head: httptools {httptools.__version__}",
                    "a new httptools.HttpRequestParser fed the same head, collecting the URL "
                    "and the header list in callbacks", theirs))

    ops = rewrite.RewriteOps(set={"x-route": "catalog"}, remove=["x-debug"])
    rid = os.urandom(16)

    def rewrite_head():
        return rewrite.rewrite_request(REQ, ops, peer=b"10.1.2.3", proto=b"http",
                                       request_id=rid, connection=rewrite.CONN_KEEP_ALIVE)

    rewrite_head()
    out.append(("rewrite head: fastproxy C rewriter",
                "fastproxy._native.rewrite.rewrite_request of the same head: set one field, "
                "remove one, x-forwarded-for/-proto, keep-alive, into a new bytes", rewrite_head))

    table = compile_virtual_services(VIRTUAL_SERVICES)
    headers = {b"user-agent": b"bench", b"accept": b"*/*"}

    def select():
        return table.select(b"shop.example.com", b"GET", b"/api/v1/catalog/items?category=books",
                            headers)

    if select() is None or select().name != "catalog":
        raise SystemExit("route match did not select the catalog route")
    out.append(("match route: fastproxy.routing.http",
                "HttpRouteTable.select over 5 VirtualServices; the host's 9th route matches "
                "(a prefix), after header, prefix, exact, regex and query-param misses", select))

    name = f"/fastproxy-bench-micro-{os.getpid()}"
    writer = shm.TableWriter(name, 4096)
    writer.publish(b"x" * 1024)
    closers.append(writer)  # closing it unlinks the segment
    reader = shm.TableReader(name)
    closers.insert(0, reader)
    out.append(("read table generation: fastproxy._native.shm",
                "TableReader.generation(): the one acquire load a worker does per request",
                reader.generation))
    return out


def run_c_bench(binary: str, iterations: int) -> dict:
    """Run the built tests/c/bench_http1.c; its ns per parse for each scanner."""
    r = subprocess.run([binary, str(iterations)], capture_output=True, text=True,
                       timeout=C_BENCH_TIMEOUT_S)
    if r.returncode != 0:
        return {"error": f"exited {r.returncode}: {(r.stderr or r.stdout).strip()[-200:]}"}
    out = {"output": r.stdout.strip(), "scanners": {}}
    for line in r.stdout.splitlines():
        m = re.match(r"(\S+)\s+parse\s+([\d.]+) ns.*parse\+framing\s+([\d.]+) ns", line)
        if m:
            out["scanners"][m.group(1)] = {"parse_ns": float(m.group(2)),
                                           "parse_framing_ns": float(m.group(3))}
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro")
    ap.add_argument("--budget", type=float, default=0.2, help="seconds per timed run (x%d)" % REPEAT)
    ap.add_argument("--c-bench", help="a built tests/c/bench_http1.c to run as well")
    ap.add_argument("--c-iterations", type=int, default=500000, help="of the C loop, per run")
    args = ap.parse_args(argv)
    doc = {"cases": [], "repeat": REPEAT, "budget_s": args.budget}
    closers: list = []
    try:
        for name, what, fn in cases(closers):
            doc["cases"].append({"name": name, "what": what, "ns": best_ns(fn, args.budget)})
    finally:
        for c in closers:
            c.close()
        if args.c_bench:
            doc["c_bench"] = run_c_bench(args.c_bench, args.c_iterations)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
