"""Results out: the stdout tables, results.json and report.md, all from one document.

The document (a plain dict, written as results.json) is built first; the
tables and report.md are rendered from it, so every number shown is one
that is stored, and every stored number was measured in the run.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass
from importlib import metadata

from bench import peers, scenarios


@dataclass
class Pinning:
    proxy_cpus: str | None
    load_cpus: str | None
    text: str


@dataclass
class Run:
    """Everything a finished run hands to the report."""

    argv: list[str]
    quick: bool
    params: scenarios.Params
    workers: int
    started_at: object
    duration_s: float
    interrupted: bool
    results_dir: str
    pinning: Pinning
    machine: dict
    tools: peers.Tools
    field: list
    scenarios: list
    skipped_scenarios: dict
    samples: list
    micro: dict | None = None


METHOD = [
    "Each contender listens on a fresh 127.0.0.1 port and forwards to the scenario's upstream; "
    "'direct' is the load talking to the upstream itself. HTTP scenarios run the HTTP "
    "contenders (fastproxy-http, nginx, haproxy-http, envoy-http), bulk the TCP relays "
    "(fastproxy-tcp, haproxy-tcp, envoy-tcp), newconn both.",
    "Samples alternate contenders within a round (A B C D, A B C D, ...); each sample starts "
    "the contender, checks one GET through it (exact 13-byte body, or all of 1 MiB), measures, "
    "and stops it by PID (SIGTERM, then SIGKILL).",
    "HTTP upstream: one nginx process (no master, access_log off, keep-alive never cut by a "
    "request count) answering `Hello, World!` on / and a 1 MiB file on /1mb; the onecore "
    "scenario starts its own on the proxy CPU.",
    "req/CPU-s: wrk's completed requests divided by the user+system CPU seconds of the proxy "
    "process and all its descendants (psutil, live and reaped), read just before and just "
    "after the measured wrk run. CPU-s/1k req is its inverse times 1,000.",
    "Latency percentiles are wrk's (per-request, µs resolution, from a request's write to its "
    "response's end). paced1/paced50 pace requests with wrk's delay() hook (the pause is not "
    "counted); wrk stays closed-loop per connection (wrk2 is not packaged), so at these rates "
    "a slow response delays only its own connection's next request.",
    "RSS: resident memory summed over the proxy's processes (psutil; a fastproxy manager, an "
    "nginx master count too); PSS in results.json shares pages between them out once. "
    "'rest' is after one request, 'load' halfway through the measured keepalive run.",
    "bulk: a fresh one-shot receiver (`python -m bench.blast recv`, splicing into /dev/null) per "
    "sample; the sender (`bench.blast send`, sendfile() from an 8 MiB file) pushes exactly "
    "<bytes> through the contender on one connection. Gbit/s is the receiver's, first to last "
    "byte. HAProxy splices in bulk with `option splice-request` + `option splice-response` "
    "(splice-auto never splices on loopback); the notes show the spliced share HAProxy reports.",
    "busy load/proxy: the share of the load CPU and of the proxy CPU that was not idle during "
    "the measurement (all processes, from /proc/stat): 100% on the load CPU means the load side "
    "limited the rate; a busy proxy CPU under 'direct' is someone else's work on the machine.",
    "Ratios are ratios of medians from this run only; nothing is carried over from other runs.",
]


def build(run: Run) -> dict:
    """The results document (results.json) of a finished run."""
    summary = scenarios.summarize(run.samples)
    order = [c.name for c in run.field]
    layers = {c.name: c.layer for c in run.field}
    sc_docs = {}
    for sc in run.scenarios:
        per = summary.get(sc.name, {})
        names = [c.name for c in run.field if sc.runs(c)]
        sc_docs[sc.name] = {
            "description": sc.describe(run.params),
            "legend": sc.legend,
            "load_command": sc.load_command,
            "upstream": sc.upstream,
            "contenders": names,
            "columns": [vars(col) for col in sc.columns],
            "summary": {n: {m: vars(spread) for m, spread in ms.items()} for n, ms in per.items()},
            "derived": {
                name: {
                    col.header: scenarios.column_value(
                        per, col, name, scenarios.resolve_baseline(col.baseline, layers[name], sc))
                    for col in sc.columns if col.kind in ("ratio", "minus")
                }
                for name in names
            },
            "curves": {name: scenarios.median_curve(run.samples, sc.name, name) for name in names},
        }
    versions = {c.name: c.version or f"unavailable: {c.reason}" for c in run.field if c.is_proxy}
    for tool in ("nginx", "wrk"):
        versions[tool] = peers.version(tool, run.tools.path(tool))
    versions["python"] = platform.python_version()
    for dist in ("uvloop", "httptools", "psutil"):
        versions[dist] = _dist_version(dist)
    p = run.params
    return {
        "schema": 2,
        "started_at": run.started_at.isoformat(timespec="seconds"),
        "duration_s": run.duration_s,
        "interrupted": run.interrupted,
        "mode": "quick" if run.quick else "full",
        "results_dir": run.results_dir,
        "argv": run.argv,
        "params": {"rounds": p.rounds, "duration_s": p.duration_s, "warmup_s": p.warmup_s,
                   "paced_s": p.paced_s, "connections": p.connections,
                   "stream_connections": p.stream_connections,
                   "idle_connections": p.idle_connections, "bulk_bytes": p.bulk_bytes,
                   "workers": run.workers},
        "pinning": vars(run.pinning),
        "machine": run.machine,
        "versions": versions,
        "tool_paths": {**run.tools.paths, "envoy": run.tools.envoy},
        "tool_notes": run.tools.notes,
        "method": METHOD,
        "order": order,
        "contenders": {
            c.name: {"available": c.available, "reason": c.reason, "version": c.version,
                     "layer": c.layer,
                     "launches": {s: vars(launch) for s, launch in c.launches.items()}}
            for c in run.field
        },
        "scenarios": sc_docs,
        "skipped_scenarios": run.skipped_scenarios,
        "micro": run.micro,
        "samples": [vars(s) for s in run.samples],
    }


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def _num(v: float | None, digits: int) -> str:
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _spread(s: dict | None, digits: int) -> str:
    """'median [min, max]', or the median alone for one sample."""
    if not s:
        return "-"
    if s["n"] == 1:
        return _num(s["median"], digits)
    return f"{_num(s['median'], digits)} [{_num(s['min'], digits)}, {_num(s['max'], digits)}]"


def _busy(m: dict) -> str:
    """'load%/proxy%': median busy share of the load CPU and of the proxy CPU."""
    load, proxy = _median(m.get("load_cpu_busy")), _median(m.get("proxy_cpu_busy"))
    if load is None and proxy is None:
        return "-"
    pct = lambda v: "-" if v is None else f"{v * 100:.0f}%"  # noqa: E731
    return f"{pct(load)}/{pct(proxy)}"


def _median(s: dict | None) -> float | None:
    return s["median"] if s else None


def _notes(doc: dict, scenario: str, contender: str) -> str:
    samples = [s for s in doc["samples"] if s["scenario"] == scenario and s["contender"] == contender]
    notes = []
    failed = [s for s in samples if s["error"]]
    if failed:
        notes.append(f"{len(failed)}/{len(samples)} failed")
    flagged = [s for s in samples if s["flagged"]]
    if flagged:
        notes.append(f"{len(flagged)} flagged")
    spliced = [
        s["detail"]["observed"]["spliced_bytes_out"] / s["detail"]["observed"]["bytes_out"]
        for s in samples
        if not s["error"] and s["detail"].get("observed", {}).get("bytes_out")
        and "spliced_bytes_out" in s["detail"]["observed"]
    ]
    if spliced and scenario == "bulk":
        notes.append(f"spliced {min(spliced) * 100:.0f}%")
    return ", ".join(notes)


def table_rows(doc: dict, scenario: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one scenario's table."""
    sc = doc["scenarios"][scenario]
    cols = sc["columns"]
    header = ["contender", *(c["header"] for c in cols)]
    rows = []
    for name in sc["contenders"]:
        c = doc["contenders"][name]
        if not c["available"]:
            rows.append([name, "skipped", *([""] * (len(cols) - 2)), "see problems"])
            continue
        m = sc["summary"].get(name, {})
        derived = sc["derived"].get(name, {})
        row = [name]
        for col in cols:
            kind = col["kind"]
            if kind == "spread":
                row.append(_spread(m.get(col["metric"]), col["digits"]))
            elif kind == "median":
                row.append(_num(_median(m.get(col["metric"])), col["digits"]))
            elif kind == "ratio":
                row.append(_num(derived.get(col["header"]), col["digits"]))
            elif kind == "minus":
                v = derived.get(col["header"])
                row.append("-" if v is None else f"{v:+,.{col['digits']}f}")
            elif kind == "busy":
                row.append(_busy(m))
            else:
                row.append(_notes(doc, scenario, name))
        rows.append(row)
    return header, rows


def micro_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    micro = doc.get("micro") or {}
    rows = [[c["name"], f"{c['ns']:,.0f}", c["what"]] for c in micro.get("cases", [])]
    c_bench = micro.get("c_bench") or {}
    for scanner, v in c_bench.get("scanners", {}).items():
        rows.append([f"parse head: C loop, {scanner} (tests/c/bench_http1.c)", f"{v['parse_ns']:,.1f}",
                     f"no Python; with framing (body length, keep-alive): {v['parse_framing_ns']:,.1f} ns"])
    return ["operation", "ns/op", "what"], rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    def line(cells: list[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1])]
        out.append(cells[-1])
        return "  ".join(out).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _legend(doc: dict, scenario: str) -> str:
    sc = doc["scenarios"][scenario]
    parts = [sc["legend"]] if sc["legend"] else []
    parts.append("medians over the rounds")
    if any(c["kind"] == "busy" for c in sc["columns"]):
        parts.append("busy: share of the load CPU / proxy CPU not idle")
    return "; ".join(parts)


def _headline(doc: dict) -> list[str]:
    m = doc["machine"]
    p = doc["params"]
    return [
        f"fastproxy bench {doc['started_at']}  mode={doc['mode']}  rounds={p['rounds']} "
        f"(contenders alternate A B A B)  workers={p['workers']}",
        f"machine: {m['cpu_model']}, {m['logical_cpus']} CPUs, Linux {m['kernel']}"
        + (" (VM)" if m["hypervisor"] else ""),
        f"pinning: {doc['pinning']['text']}",
        "CPU busy before the run (other work on the machine): "
        + ", ".join(f"CPU {c} {v * 100:.0f}%" for c, v in m.get("background_busy_before_run", {}).items()),
    ]


def stdout_text(doc: dict) -> str:
    out = [*_headline(doc), ""]
    for name, sc in doc["scenarios"].items():
        out.append(f"[{name}] {sc['description']}")
        out.append(_text_table(*table_rows(doc, name)))
        out.append("  " + _legend(doc, name))
        out.append("")
    if doc.get("micro") and doc["micro"].get("cases"):
        out.append("[micro] microbenchmarks, ns per operation (best of runs)")
        header, rows = micro_rows(doc)
        out.append(_text_table(header[:2] + [""], [r[:2] + [""] for r in rows]))
        out.append("")
    out.extend(_problems(doc))
    out.append(f"results: {doc['results_dir']}/report.md, results.json"
               + "".join(f", {f}" for f in doc.get("plots", {}).get("files", [])))
    return "\n".join(out)


def _problems(doc: dict) -> list[str]:
    lines = []
    for s in doc["samples"]:
        if s["error"]:
            error = s["error"].replace("\n", " / ")
            lines.append(f"  failed: round {s['round']} {s['scenario']} {s['contender']}: {error}")
        elif s["flagged"]:
            lines.append(f"  flagged: round {s['round']} {s['scenario']} {s['contender']}: {s['flagged']}")
    for name in doc["order"]:
        c = doc["contenders"][name]
        if not c["available"]:
            lines.append(f"  skipped {name}: {c['reason']}")
    for sc_name, reason in doc["skipped_scenarios"].items():
        lines.append(f"  skipped scenario {sc_name}: {reason}")
    micro = doc.get("micro") or {}
    if micro.get("error"):
        lines.append(f"  microbenchmarks failed: {micro['error']}")
    if micro.get("c_build_error"):
        lines.append(f"  C parser loop did not build: {micro['c_build_error'].splitlines()[-1]}")
    if (doc.get("plots") or {}).get("error"):
        lines.append(f"  no plots: {doc['plots']['error'].splitlines()[-1]}")
    return (["problems:", *lines, ""]) if lines else []


_PORT = re.compile(r"(127\.0\.0\.1:|port_value: |_port: )\d+")


def _generic(config: str, scenario: str) -> str:
    """A config with its ports and scenario name replaced by placeholders."""
    config = _PORT.sub(lambda m: m.group(1) + "<port>", config)
    return re.sub(rf"\b{re.escape(scenario)}\b", "<scenario>", config)


def write_json(doc: dict, directory: str) -> str:
    path = os.path.join(directory, "results.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def write_markdown(doc: dict, directory: str) -> str:
    p = doc["params"]
    m = doc["machine"]
    out = [f"# fastproxy bench, {doc['started_at']}", ""]
    out += [f"- {line}" for line in _headline(doc)]
    out += [
        f"- duration of the run: {doc['duration_s']:.0f} s",
        f"- every number below was measured in this run; medians over {p['rounds']} round(s), "
        "[min, max] shown when there is more than one sample",
        "",
        "## Results",
        "",
    ]
    for name, sc in doc["scenarios"].items():
        out += [f"### {name}: {sc['description']}", "", _md_table(*table_rows(doc, name)), "",
                f"_{_legend(doc, name)}_", ""]
    micro = doc.get("micro") or {}
    if micro.get("cases"):
        out += ["### micro: the hot path's pieces, ns per operation", "",
                _md_table(*micro_rows(doc)), "",
                f"_best of {micro['repeat']} timed runs of ~{micro['budget_s']:g} s each, on the "
                "proxy CPU; each Python figure includes one Python call (see `python call`)_", ""]
    plots = (doc.get("plots") or {}).get("files", [])
    if plots:
        out += ["## Plots", ""]
        out += [f"![{f}]({f})" for f in plots]
        out.append("")
    problems = _problems(doc)
    if problems:
        out += ["### Problems", "", *[f"- {line.strip()}" for line in problems[1:] if line.strip()], ""]

    out += ["## Machine", "", "| what | value |", "|---|---|"]
    for key in ("cpu_model", "logical_cpus", "physical_cores", "hypervisor", "cpu_governor",
                "kernel", "kernel_version", "os", "memory_gib", "python", "background_busy_before_run"):
        out.append(f"| {key} | {m.get(key)} |")
    for key, value in m["sysctl"].items():
        out.append(f"| {key} | {value} |")
    out += ["", "## Pinning", "", doc["pinning"]["text"], ""]

    out += ["## Versions", "", "| program | version |", "|---|---|"]
    for key, value in doc["versions"].items():
        out.append(f"| {key} | {value} |")
    out += ["", "## Method", ""]
    out += [f"- {line}" for line in doc["method"]]
    out += [""]

    out += ["## Commands", ""]
    for name, sc in doc["scenarios"].items():
        out += [f"### {name}", "", "```sh"]
        if sc["upstream"].get("command"):
            out.append(f"# upstream\n{sc['upstream']['command']}")
        if sc["load_command"]:
            out.append(f"# load (port = the contender's listener)\n{sc['load_command']}")
        for cname in sc["contenders"]:
            launch = doc["contenders"][cname]["launches"].get(name)
            if launch:
                out.append(f"# {cname}\n{launch['command']}")
        out += ["```", ""]
    if micro.get("command"):
        out += ["### micro", "", "```sh"]
        if micro.get("c_build"):
            out.append(micro["c_build"])
        out += [micro["command"], "```", ""]

    out += ["## Configs", "", "Each start picks fresh free ports (`<port>`); paths name the scenario "
            "(`<scenario>`). A contender's configs that differ only in those are shown once.", ""]
    seen_upstreams = set()
    for sc in doc["scenarios"].values():
        cfg = sc["upstream"].get("config")
        if cfg and cfg not in seen_upstreams:
            seen_upstreams.add(cfg)
            out += ["### nginx (upstream)", "", "```nginx", cfg.rstrip(), "```", ""]
    for cname in doc["order"]:
        configs: dict[str, list[str]] = {}
        for sname, launch in doc["contenders"][cname]["launches"].items():
            if launch.get("config"):
                configs.setdefault(_generic(launch["config"], sname), []).append(sname)
        for config, snames in configs.items():
            name = doc["contenders"][cname]["launches"][snames[0]]["config_name"]
            lang = "yaml" if name.endswith(".yaml") else ("nginx" if name.endswith(".conf") else "")
            out += [f"### {cname}, {', '.join(snames)} ({name})", "", f"```{lang}", config.rstrip(),
                    "```", ""]

    out += ["## Samples", "", "| round | scenario | contender | metrics | status |", "|---|---|---|---|---|"]
    for s in doc["samples"]:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in s["metrics"].items())
        status = f"failed: {s['error']}" if s["error"] else (f"flagged: {s['flagged']}" if s["flagged"] else "ok")
        out.append(f"| {s['round']} | {s['scenario']} | {s['contender']} | {metrics} | "
                   f"{status.replace('|', '/').replace(chr(10), ' / ')} |")
    if doc["tool_notes"]:
        out += ["", "## Tool notes", "", *[f"- {n}" for n in doc["tool_notes"]]]
    out.append("")
    path = os.path.join(directory, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(out))
    return path
