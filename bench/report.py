"""Results out: the stdout table, results.json and report.md, all from one document.

The document (a plain dict, written as results.json) is built first; the
table and report.md are rendered from it, so every number shown is one
that is stored, and every stored number was measured in the run.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata

from bench import peers, scenarios

# Ratio columns: name -> (baseline contender, header). Each scenario says
# which metric each ratio divides.
BASELINES = {"xdirect": "direct", "xhaproxy": "haproxy", "xenvoy": "envoy"}
RATIO_HEADERS = {"xdirect": "xdirect", "xhaproxy": "xHAProxy", "xenvoy": "xEnvoy"}


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


METHOD = [
    "Each contender relays TCP from a fresh 127.0.0.1 port to the same upstream; "
    "'direct' is the load talking to the upstream itself.",
    "Samples alternate contenders within a round (A B C D, A B C D, ...); each sample starts "
    "the contender, checks it, measures, and stops it by PID (SIGTERM, then SIGKILL).",
    "bulk: a fresh one-shot receiver (`python -m bench.blast recv`, splicing into /dev/null) per "
    "sample; the sender (`bench.blast send`, sendfile() from an 8 MiB file) pushes exactly "
    "<bytes> through the contender on one connection and exits after the receiver has them all "
    "and closed. Gbit/s is the receiver's: bytes after its first read over the time from first "
    "to last byte. (Not iperf3: its receiver stops counting while MBs are still in proxy "
    "buffers.) proxy CPU-s/GiB is the proxy's CPU time over the transfer, per GiB.",
    "HAProxy splices in bulk with `option splice-request` + `option splice-response`: with "
    "`option splice-auto` HAProxy 2.6 never splices on loopback (0 spliced bytes per GiB), and "
    "the bulk baseline is meant to be HAProxy splice. Short connections use splice-auto. The "
    "notes column shows the spliced share HAProxy itself reports (show info).",
    "rps: nginx (one process, access_log off) answers `hello, world\n`; one GET through the "
    "contender must return exactly that body before the load; then a wrk warm-up, then the "
    "measured wrk run, all with `Connection: close` so every request is a new TCP connection "
    "through the proxy.",
    "req/CPU-s: wrk's completed requests divided by the user+system CPU seconds of the proxy "
    "process and all its descendants (psutil, live and reaped), read just before and just "
    "after the measured wrk run.",
    "busy load/proxy: the share of the load CPU and of the proxy CPU that was not idle during "
    "the measurement (all processes, from /proc/stat): 100% on the load CPU means the load side "
    "limited the rate; a busy proxy CPU under 'direct' is someone else's work on the machine.",
    "Ratios are ratios of medians from this run only; nothing is carried over from other runs.",
]


def build(run: Run) -> dict:
    """The results document (results.json) of a finished run."""
    summary = scenarios.summarize(run.samples)
    order = [c.name for c in run.field]
    sc_docs = {}
    for sc in run.scenarios:
        per = summary.get(sc.name, {})
        sc_docs[sc.name] = {
            "description": sc.describe(run.params),
            "load_command": sc.load_command,
            "upstream": sc.upstream,
            "ratio_metrics": sc.ratios,
            "summary": {n: {m: vars(spread) for m, spread in ms.items()} for n, ms in per.items()},
            "ratios": {
                name: {k: scenarios.ratio(per, name, BASELINES[k], metric) for k, metric in sc.ratios.items()}
                for name in order
            },
        }
    versions = {c.name: c.version or f"unavailable: {c.reason}" for c in run.field if c.is_proxy}
    for tool in ("nginx", "wrk"):
        versions[tool] = peers.version(tool, run.tools.path(tool))
    versions["python"] = platform.python_version()
    versions["uvloop"] = _dist_version("uvloop")
    p = run.params
    return {
        "schema": 1,
        "started_at": run.started_at.isoformat(timespec="seconds"),
        "duration_s": run.duration_s,
        "interrupted": run.interrupted,
        "mode": "quick" if run.quick else "full",
        "results_dir": run.results_dir,
        "argv": run.argv,
        "params": {"rounds": p.rounds, "duration_s": p.duration_s, "warmup_s": p.warmup_s,
                   "connections": p.connections, "bulk_bytes": p.bulk_bytes, "workers": run.workers},
        "pinning": vars(run.pinning),
        "machine": run.machine,
        "versions": versions,
        "tool_paths": {**run.tools.paths, "envoy": run.tools.envoy},
        "tool_notes": run.tools.notes,
        "method": METHOD,
        "order": order,
        "contenders": {
            c.name: {"available": c.available, "reason": c.reason, "version": c.version,
                     "launches": {s: vars(launch) for s, launch in c.launches.items()}}
            for c in run.field
        },
        "scenarios": sc_docs,
        "skipped_scenarios": run.skipped_scenarios,
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
    return f"{v:.{digits}f}"


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
        notes.append(f"{len(flagged)} with wrk errors")
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
    summary, ratios = sc["summary"], sc["ratios"]
    rows = []
    if scenario == "bulk":
        header = ["contender", "Gbit/s median [min, max]", "xdirect", "xHAProxy", "xEnvoy",
                  "proxy CPU-s/GiB", "busy load/proxy", "notes"]
        for name in doc["order"]:
            c = doc["contenders"][name]
            if not c["available"]:
                rows.append([name, "skipped", "", "", "", "", "", "see problems"])
                continue
            m = summary.get(name, {})
            r = ratios.get(name, {})
            rows.append([
                name, _spread(m.get("gbit_s"), 2),
                _num(r.get("xdirect"), 2), _num(r.get("xhaproxy"), 2), _num(r.get("xenvoy"), 2),
                _num(_median(m.get("proxy_cpu_s_per_gib")), 3), _busy(m),
                _notes(doc, scenario, name),
            ])
    else:
        header = ["contender", "req/CPU-s median [min, max]", "xHAProxy", "xEnvoy",
                  "req/s median [min, max]", "xdirect", "p50 ms", "p99 ms", "errors",
                  "busy load/proxy", "notes"]
        for name in doc["order"]:
            c = doc["contenders"][name]
            if not c["available"]:
                rows.append([name, "skipped", "", "", "", "", "", "", "", "", "see problems"])
                continue
            m = summary.get(name, {})
            r = ratios.get(name, {})
            rows.append([
                name, _spread(m.get("req_per_cpu_s"), 0),
                _num(r.get("xhaproxy"), 2), _num(r.get("xenvoy"), 2),
                _spread(m.get("rps"), 0), _num(r.get("xdirect"), 2),
                _num(_median(m.get("p50_ms")), 2), _num(_median(m.get("p99_ms")), 2),
                _num(_median(m.get("errors")), 0), _busy(m),
                _notes(doc, scenario, name),
            ])
    return header, rows


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


def _ratio_legend(doc: dict, scenario: str) -> str:
    used = doc["scenarios"][scenario]["ratio_metrics"]
    parts = [f"{RATIO_HEADERS[k]} = {metric} / {BASELINES[k]}'s {metric}" for k, metric in used.items()]
    return ("ratios of medians, higher is better: " + "; ".join(parts)
            + ". busy: share of the load CPU / proxy CPU not idle during the measurement")


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
        out.append(sc["description"])
        out.append(_text_table(*table_rows(doc, name)))
        out.append("  " + _ratio_legend(doc, name))
        out.append("")
    out.extend(_problems(doc))
    out.append(f"results: {doc['results_dir']}/results.json, report.md")
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
    return (["problems:", *lines, ""]) if lines else []


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
        out += [f"### {sc['description']}", "", _md_table(*table_rows(doc, name)), "",
                f"_{_ratio_legend(doc, name)}_", ""]
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
        for cname in doc["order"]:
            launch = doc["contenders"][cname]["launches"].get(name)
            if launch:
                out.append(f"# {cname}\n{launch['command']}")
        out += ["```", ""]

    out += ["## Configs", "", "Ports are the ones of the last sample; each start picks fresh free ports.", ""]
    upstream_cfg = doc["scenarios"].get("rps", {}).get("upstream", {}).get("config")
    if upstream_cfg:
        out += ["### nginx (upstream)", "", "```nginx", upstream_cfg.rstrip(), "```", ""]
    for cname in doc["order"]:
        for sname, launch in doc["contenders"][cname]["launches"].items():
            if launch.get("config"):
                lang = "yaml" if launch["config_name"].endswith(".yaml") else ""
                out += [f"### {cname}, {sname} ({launch['config_name']})", "", f"```{lang}",
                        launch["config"].rstrip(), "```", ""]

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
