"""What machine a run happened on: CPU, cores, kernel, memory, the TCP knobs that matter."""

from __future__ import annotations

import os
import platform
import time

import psutil

SYSCTLS = [
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.ip_local_port_range",
    "net.core.somaxconn",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "fs.pipe-max-size",
]


def describe() -> dict:
    """Facts about this machine, for results.json and report.md."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "hypervisor": _has_cpu_flag("hypervisor"),
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "os": _os_release(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "sysctl": {name: _read("/proc/sys/" + name.replace(".", "/")) for name in SYSCTLS},
    }


def _cpu_model() -> str:
    for line in (_read("/proc/cpuinfo", raw=True) or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _has_cpu_flag(flag: str) -> bool:
    for line in (_read("/proc/cpuinfo", raw=True) or "").splitlines():
        if line.startswith("flags"):
            return flag in line.split(":", 1)[1].split()
    return False


def _os_release() -> str:
    for line in (_read("/etc/os-release", raw=True) or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def _read(path: str, *, raw: bool = False) -> str | None:
    """File text (whitespace folded to single spaces unless raw), None if unreadable."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    return text if raw else " ".join(text.split())


def background_busy(seconds: float = 1.0) -> dict[str, float]:
    """Busy share of each CPU over `seconds` while the bench itself is idle.

    Anything well above zero is someone else's work on the machine, which
    makes every number of the run noisier; the report says so.
    """
    before = psutil.cpu_times(percpu=True)
    time.sleep(seconds)
    after = psutil.cpu_times(percpu=True)
    out = {}
    for i, (b, a) in enumerate(zip(before, after)):
        total = sum(a) - sum(b)
        idle = (a.idle - b.idle) + (getattr(a, "iowait", 0.0) - getattr(b, "iowait", 0.0))
        out[str(i)] = round(min(1.0, max(0.0, (total - idle) / total)), 3) if total > 0 else 0.0
    return out
