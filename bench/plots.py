"""PNG plots of a finished run: `python -m bench.plots RESULTS_DIR`.

Reads RESULTS_DIR/results.json, writes into RESULTS_DIR:
- throughput.png: requests per CPU-second of the proxy, per contender
  (median bar, min-max whisker), one panel per scenario that has it;
- latency.png: latency percentiles per contender, HDR-style (x is the
  percentile on a log(1/(1-p)) axis, so the tail gets room), one panel per
  latency scenario; each curve is the median over rounds at each percentile,
  cut where fewer than one request lies beyond the percentile.
Prints the file names written as a JSON list. Needs matplotlib (run with the
bench's peers venv, where the harness installs it); imports nothing else
from the bench, so it runs in that venv.
"""

from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

THROUGHPUT = [("keepalive", "keep-alive, 13-byte answers"),
              ("newconn", "new connection per request")]
LATENCY = [("keepalive", "keep-alive, wrk -c{c} at full load"),
           ("paced1", "1 connection, ~1,000 req/s"),
           ("paced50", "50 connections, ~1,000 req/s (Poisson)"),
           ("onecore", "1 connection, everything on one core")]
# Fixed colours, so a contender looks the same in every panel and run.
COLORS = {
    "direct": "#7f7f7f", "fastproxy-http": "#d62728", "fastproxy-tcp": "#ff9896",
    "nginx": "#2ca02c", "haproxy-http": "#1f77b4", "haproxy-tcp": "#aec7e8",
    "envoy-http": "#9467bd", "envoy-tcp": "#c5b0d5",
}
PERCENTILE_TICKS = [50, 90, 99, 99.9, 99.99, 99.999]


def _x(p: float) -> float:
    return 1.0 / (1.0 - p / 100.0)


def throughput(doc: dict, out: str) -> str | None:
    panels = []
    for name, title in THROUGHPUT:
        sc = doc["scenarios"].get(name)
        if not sc:
            continue
        bars = [(c, sc["summary"].get(c, {}).get("req_per_cpu_s")) for c in sc["contenders"]
                if doc["contenders"][c]["layer"] is not None]
        if any(s for _, s in bars):
            panels.append((title, bars))
    if not panels:
        return None
    height = max(len(b) for _, b in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 0.55 * height + 1.6),
                             squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels):
        bars = bars[::-1]
        names = [c for c, _ in bars]
        med = [s["median"] if s else 0 for _, s in bars]
        lo = [s["median"] - s["min"] if s else 0 for _, s in bars]
        hi = [s["max"] - s["median"] if s else 0 for _, s in bars]
        ax.barh(names, med, xerr=[lo, hi], capsize=3,
                color=[COLORS.get(n, "#bcbd22") for n in names])
        for y, (c, s) in enumerate(bars):
            if s:
                ax.text(s["max"], y, f"  {s['median']:,.0f}", va="center", ha="left", fontsize=8)
            else:
                reason = doc["contenders"][c]["reason"] and "skipped" or "failed"
                ax.text(0, y, f"  no result ({reason}: see report.md)", va="center", ha="left",
                        fontsize=8, color="#555555")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("requests per CPU-second of the proxy (higher is better)")
        ax.set_xlim(0, max(s["max"] for _, s in bars if s) * 1.3)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"fastproxy bench {doc['started_at']} ({doc['mode']}, "
                 f"{doc['params']['rounds']} round(s), median and min-max)", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _requests(doc: dict, scenario: str, contender: str) -> int:
    """Fewest requests of a good sample (how far into the tail the curve means something)."""
    counts = [s["detail"]["wrk"]["requests"] for s in doc["samples"]
              if s["scenario"] == scenario and s["contender"] == contender and not s["error"]
              and "wrk" in s["detail"]]
    return min(counts) if counts else 0


def latency(doc: dict, out: str) -> str | None:
    panels = []
    for name, title in LATENCY:
        sc = doc["scenarios"].get(name)
        if not sc:
            continue
        curves = []
        for c in sc["contenders"]:
            n = _requests(doc, name, c)
            points = [(p, us) for p, us in sc["curves"].get(c, []) if p < 100 and _x(p) <= n]
            if points:
                curves.append((c, points))
        if curves:
            panels.append((title.format(c=doc["params"]["connections"]), curves))
    if not panels:
        return None
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, curves) in zip(axes.flat, panels):
        for c, points in curves:
            ax.plot([_x(p) for p, _ in points], [us for _, us in points], marker=".",
                    markersize=4, linewidth=1.6, label=c, color=COLORS.get(c))
        ax.set_xscale("log")
        ax.set_yscale("log")
        last = max(_x(p) for _, pts in curves for p, _ in pts)
        ticks = [t for t in PERCENTILE_TICKS if _x(t) <= last * 1.01]
        ax.xaxis.set_major_locator(FixedLocator([_x(t) for t in ticks]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _pos: f"{100 - 100 / v:g}%"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency, µs (log)")
        ax.set_title(title, fontsize=10)
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"latency percentiles (wrk), median over {doc['params']['rounds']} round(s), "
                 f"{doc['started_at']}", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.plots RESULTS_DIR", file=sys.stderr)
        return 2
    out = argv[0]
    with open(os.path.join(out, "results.json")) as f:
        doc = json.load(f)
    written = [p for p in (throughput(doc, out), latency(doc, out)) if p]
    print(json.dumps([os.path.basename(p) for p in written]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
