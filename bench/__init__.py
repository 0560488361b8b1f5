"""fastproxy's benchmark harness: `python -m bench [--quick]` from the repo root.

Contenders (direct, fastproxy, HAProxy, Envoy) relay to the same upstream
and are measured side by side in one run, alternating A B A B:
- bulk TCP throughput (1 GiB on one connection, bench.blast);
- requests per CPU-second of the proxy over many short connections (wrk
  with Connection: close against a one-worker nginx).

The proxy is pinned to one CPU, load and upstream to another. Results go to
stdout as a table and to bench/results/<timestamp>/ as results.json and
report.md (machine, versions, exact commands and configs).

Modules: procs (start/stop/CPU time), net (ports, readiness), peers (finding
and installing the outside programs), machine, templates (configs/),
contenders, upstreams, load, scenarios, progress, report; __main__ drives.
"""
