"""Renders counter sums as Prometheus text (0.0.4) or OpenMetrics (1.0.0). Pure.

A sample is (Metric, labels, value); value is a number, or a Histogram for
a metric of kind "histogram". Samples of one metric are grouped under one
HELP/TYPE in first-seen order, whatever order they come in.

The two formats differ where OpenMetrics says so: a counter family is named
without its `_total` suffix (its samples keep it), HELP also escapes double
quotes, bucket bounds are floats ("1.0"), and the exposition ends in `# EOF`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .names import (
    C_CX_DESTROY,
    C_CX_TOTAL,
    CLUSTER_ACTIVE,
    CLUSTER_METRICS,
    L_CX_DESTROY,
    L_CX_TOTAL,
    LISTENER_ACTIVE,
    LISTENER_METRICS,
    WORKER_METRICS,
    Metric,
)

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Histogram:
    bounds: tuple[float, ...]   # upper bounds, ascending, the last one +Inf
    counts: tuple[int, ...]     # NON-cumulative count per bound
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)


Sample = tuple[Metric, dict[str, str], "float | Histogram"]


def negotiate(accept: str | None) -> str:
    """The content type to answer a scrape with: OpenMetrics when its Accept
    header lists application/openmetrics-text (with q > 0), else text 0.0.4."""
    for item in (accept or "").split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media.lower() != "application/openmetrics-text":
            continue
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            return OPENMETRICS
    return TEXT


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(v: str, om: bool) -> str:
    v = v.replace("\\", "\\\\").replace("\n", "\\n")
    return v.replace('"', '\\"') if om else v


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _bound(b: float, om: bool) -> str:
    if b == float("inf"):
        return "+Inf"
    if om:
        return repr(float(b))   # OpenMetrics: canonical floats, "1.0"
    return _number(b)


def samples(sums: Sequence[int], blocks: dict[tuple[str, str], int]) -> list[Sample]:
    """The data-path samples: per-worker counter sums read through the slot blocks."""
    out: list[Sample] = [(m, {}, sums[slot]) for m, slot in WORKER_METRICS]
    for (kind, name), base in sorted(blocks.items()):
        if kind == "listener":
            label = {"listener_name": name}
            for m, off, extra in LISTENER_METRICS:
                out.append((m, {**label, **extra}, sums[base + off]))
            out.append((LISTENER_ACTIVE, label, max(0, sums[base + L_CX_TOTAL] - sums[base + L_CX_DESTROY])))
        else:
            label = {"cluster_name": name}
            for m, off, extra in CLUSTER_METRICS:
                out.append((m, {**label, **extra}, sums[base + off]))
            out.append((CLUSTER_ACTIVE, label, max(0, sums[base + C_CX_TOTAL] - sums[base + C_CX_DESTROY])))
    return out


def _histogram_lines(name: str, labels: dict[str, str], h: Histogram, om: bool, lines: list[str]) -> None:
    acc = 0
    for b, c in zip(h.bounds, h.counts):
        acc += c
        lines.append(f"{name}_bucket{_labels({**labels, 'le': _bound(b, om)})} {acc}")
    lines.append(f"{name}_sum{_labels(labels)} {_number(h.sum)}")
    lines.append(f"{name}_count{_labels(labels)} {acc}")


def render(all_samples: Sequence[Sample], content_type: str = TEXT) -> str:
    """The exposition of all_samples in the format of content_type (TEXT or OPENMETRICS)."""
    om = content_type == OPENMETRICS
    groups: dict[str, list[Sample]] = {}
    for s in all_samples:
        groups.setdefault(s[0].name, []).append(s)
    lines = []
    for name, group in groups.items():
        m = group[0][0]
        family = name[:-6] if om and m.kind == "counter" and name.endswith("_total") else name
        lines.append(f"# HELP {family} {_help(m.help, om)}")
        lines.append(f"# TYPE {family} {m.kind}")
        for _, labels, value in group:
            if m.kind == "histogram":
                _histogram_lines(name, labels, value, om, lines)
            else:
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
    if om:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"


def merged_type(wanted: str, app_content_type: str | None) -> str:
    """The format of a merged scrape: the app's, when its metrics came back
    (OpenMetrics only if it answered OpenMetrics), else the one the scraper wanted."""
    if app_content_type is None:
        return wanted
    return OPENMETRICS if app_content_type.lower().startswith("application/openmetrics-text") else TEXT


def merge(ours: str, app: str, content_type: str) -> str:
    """Our exposition followed by the app's, both in content_type, as Istio's
    15020 merge does (families are not deduplicated). OpenMetrics keeps one
    `# EOF`, at the end, and no blank lines."""
    if content_type != OPENMETRICS:
        return ours + app + ("" if not app or app.endswith("\n") else "\n")
    lines = [l for l in ours.split("\n") if l and l != "# EOF"]
    lines += [l for l in app.split("\n") if l and l != "# EOF"]
    return "\n".join(lines + ["# EOF"]) + "\n"
