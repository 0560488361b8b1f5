"""Renders counter sums as the Prometheus text exposition format (0.0.4). Pure."""
from __future__ import annotations

from collections.abc import Sequence

from .names import (
    CLUSTER_ACTIVE,
    CLUSTER_METRICS,
    C_CX_DESTROY,
    C_CX_TOTAL,
    LISTENER_ACTIVE,
    LISTENER_METRICS,
    L_CX_DESTROY,
    L_CX_TOTAL,
    WORKER_METRICS,
    Metric,
)

Sample = tuple[Metric, dict[str, str], float]


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


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


def render(all_samples: Sequence[Sample]) -> str:
    """Groups samples by metric (one HELP/TYPE each), in first-seen order."""
    groups: dict[str, list[Sample]] = {}
    for s in all_samples:
        groups.setdefault(s[0].name, []).append(s)
    lines = []
    for name, group in groups.items():
        m = group[0][0]
        lines.append(f"# HELP {name} {m.help}")
        lines.append(f"# TYPE {name} {m.kind}")
        for _, labels, value in group:
            lines.append(f"{name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"
