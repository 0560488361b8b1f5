"""fastproxy's benchmark harness: `python -m bench [--quick] [--only S,...]` from the repo root.

Contenders behind the same upstream, measured side by side in one run,
alternating A B A B: direct (no proxy), fastproxy, nginx, HAProxy and Envoy,
as HTTP proxies (fastproxy-http, nginx, haproxy-http, envoy-http) and as
TCP relays (fastproxy-tcp, haproxy-tcp, envoy-tcp). Scenarios: keepalive,
paced1, paced50, onecore, newconn, stream, bulk, idle; plus microbenchmarks
of the hot path's pieces (micro). See bench/README.md.

The proxy is pinned to one CPU, load and upstream to another. Results go to
stdout as tables and to bench/results/<timestamp>/ as report.md,
results.json and PNG plots (machine, versions, exact commands and configs).

Modules: procs (start/stop/CPU time/memory), net (ports, readiness), peers
(finding and installing the outside programs), machine, templates
(configs/), contenders, upstreams, load, scenarios, progress, report;
blast (bulk sender/receiver), idle (idle-connection client), micro
(microbenchmarks) and plots (matplotlib, run in the peers venv) run as their
own processes; __main__ drives.
"""
