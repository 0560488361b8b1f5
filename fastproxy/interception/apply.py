"""The executor of `fastproxy init`: the only part that touches the host.

It reads the state (iptables-save, nft list, ip -j ...), asks the pure
modules what to change, and runs it:

- atomically: one `iptables-restore --noflush` per family (each table one
  transaction), one `nft -f` for native nftables;
- idempotently: our part of the current state is compared with what the
  config wants; equal means nothing is run, different means our part is
  replaced in the same transaction. Running twice leaves the state of once;
- cleanly: --cleanup removes our chains, our jump rules, our ip rules and
  routes (protocol 155) and, for iptables-nft, a table we created that is
  empty again. Nothing else.

A Runner runs the commands. In simulate mode (--dry-run) it still runs the
read-only listings when it can (so the plan is exact for this host) and
prints every change as a shell command with its input instead of running it.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO

from . import policy_routing, rules_iptables, rules_nft
from .flags import (
    INBOUND_PASSTHROUGH_V4, INBOUND_PASSTHROUGH_V6, VALIDATION_PROBE_PORT, VALIDATION_TIMEOUT_S, InitConfig)
from .rules_iptables import V4, V6, Family

log = logging.getLogger("fastproxy.init")

EXIT_VALIDATION_FAILED = 126
IPTABLES_VARIANTS = ("iptables-nft", "iptables-legacy")
# Tables iptables-nft itself creates; any other nftables table is "native".
_XTABLES_TABLES = {"filter", "nat", "mangle", "raw", "security", "broute"}
_XTABLES_FAMILIES = {"ip", "ip6", "arp", "bridge"}
_SO_ORIGINAL_DST = 80       # SOL_IP; IP6T_SO_ORIGINAL_DST is the same number at SOL_IPV6
_EXIT_NO_PRIVILEGE_DROP = 3  # exit status of the validation prober that could not become the proxy's user


class InitError(RuntimeError):
    """A command failed, or the host lacks what the config needs."""


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    stdin: str | None = None
    why: str = ""


class Runner:
    """Runs commands for the executor: the one seam to the host."""

    def __init__(self, simulate: bool = False, out: TextIO | None = None,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 which: Callable[[str], str | None] = shutil.which):
        self.simulate = simulate
        self.out = out if out is not None else sys.stdout
        self._run = run
        self._which = which
        self.changed = 0
        self.cache: dict[tuple, object] = {}

    def has(self, tool: str) -> bool:
        return self._which(tool) is not None

    def probe(self, argv: list[str]) -> subprocess.CompletedProcess | None:
        """Runs a read-only command; None when it could not be started."""
        try:
            return self._run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None

    def try_read(self, argv: list[str]) -> str | None:
        """Output of a read-only command, or None if it failed (never raises)."""
        res = self.probe(argv)
        return res.stdout if res is not None and res.returncode == 0 else None

    def read(self, argv: list[str]) -> str | None:
        """Output of a read-only command. On failure: raises, or in simulate
        mode notes it and returns None (the plan then assumes an empty state)."""
        res = self.probe(argv)
        if res is not None and res.returncode == 0:
            return res.stdout
        why = "not found" if res is None else (res.stderr.strip() or f"exit status {res.returncode}")
        if self.simulate:
            self.out.write(f"# could not run {shlex.join(argv)} ({why}); assuming nothing is installed\n")
            return None
        raise InitError(f"{shlex.join(argv)} failed: {why}")

    def change(self, cmd: Command) -> None:
        """Runs (or, simulating, prints) a command that changes the host."""
        self.changed += 1
        if self.simulate:
            self.out.write(_as_shell(cmd))
            return
        log.info("%s: %s%s", cmd.why or "running", shlex.join(cmd.argv),
                 f" with input:\n{cmd.stdin.rstrip()}" if cmd.stdin else "")
        try:
            res = self._run(list(cmd.argv), input=cmd.stdin, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InitError(f"{shlex.join(cmd.argv)} could not run: {e}") from None
        if res.returncode != 0:
            detail = res.stderr.strip() or res.stdout.strip() or f"exit status {res.returncode}"
            raise InitError(f"{shlex.join(cmd.argv)} failed ({cmd.why}): {detail}")

    def note(self, text: str) -> None:
        if self.simulate:
            self.out.write(f"# {text}\n")
        else:
            log.info("%s", text)


def _as_shell(cmd: Command) -> str:
    head = f"# {cmd.why}\n" if cmd.why else ""
    if cmd.stdin is None:
        return f"{head}{shlex.join(cmd.argv)}\n"
    body = cmd.stdin if cmd.stdin.endswith("\n") else cmd.stdin + "\n"
    return f"{head}{shlex.join(cmd.argv)} <<'EOF'\n{body}EOF\n"


# ---------------------------------------------------------------------------
# Backends


class Iptables:
    """iptables-legacy or iptables-nft, IPv4 and IPv6."""

    def __init__(self, runner: Runner, name: str):
        self.runner = runner
        self.name = name
        self.variant = name.split("-", 1)[1]   # legacy | nft

    def tool(self, fam: Family, action: str) -> str | None:
        """`iptables-nft-save` and friends; the unsuffixed tool when it is this variant."""
        stem = "iptables" if fam.version == 4 else "ip6tables"
        explicit = f"{stem}-{self.variant}-{action}"
        if self.runner.has(explicit):
            return explicit
        plain = f"{stem}-{action}"
        if self.runner.has(plain) and _generic_variant(self.runner, stem) == self.variant:
            return plain
        return None

    def available(self) -> bool:
        return self.tool(V4, "save") is not None and self.tool(V4, "restore") is not None

    def saved(self, fam: Family, strict: bool = False) -> dict[str, rules_iptables.SavedTable] | None:
        """The parsed save output of `fam`; None when the tool is missing or
        the output unreadable (which raises instead when `strict`)."""
        save = self.tool(fam, "save")
        if save is None:
            return None
        text = self.runner.read([save]) if strict else self.runner.try_read([save])
        return None if text is None else rules_iptables.parse(text)

    def restore_argv(self, fam: Family) -> list[str]:
        restore = self.tool(fam, "restore")
        if restore is None:
            raise InitError(f"{fam.tool}-{self.variant}-restore not found (needed for IPv{fam.version})")
        argv = [restore, "--noflush"]
        return argv + ["--wait=30"] if self.variant == "legacy" else argv

    def has_ours(self) -> bool:
        for fam in (V4, V6):
            tables = self.saved(fam)
            if tables and rules_iptables.ours(tables):
                return True
        return False

    def install(self, cfg: InitConfig) -> None:
        for fam in (V4, V6):
            desired = rules_iptables.render(cfg, fam)
            if not desired and self.tool(fam, "save") is None:
                continue
            if self.tool(fam, "save") is None:
                raise InitError(f"{fam.tool}-{self.variant}-save not found (needed for IPv{fam.version})")
            # Unreadable matters only when this family has rules to install.
            current = self.saved(fam, strict=bool(desired)) or {}
            needed = set(rules_iptables.parse(desired)) if desired else set()
            if self.variant == "nft":
                # A base chain we cannot see is taken as existing: never marked, never deleted.
                existing = {t: self._base_chains(fam, t) for t in needed & set(current)}
                markers = rules_iptables.markers_for(current, desired, {
                    t: set(rules_iptables.BUILTIN_CHAINS) if c is None else c for t, c in existing.items()})
                desired = rules_iptables.with_markers(desired, markers)
            tx = rules_iptables.replace_input(current, desired)
            if tx is None:
                if desired:
                    self.runner.note(f"{self.name}: IPv{fam.version} rules already in place")
                continue
            what = "install" if desired else "remove"
            self.runner.change(Command(tuple(self.restore_argv(fam)), tx,
                                       f"{self.name}: {what} fastproxy IPv{fam.version} rules"))
            if self.variant == "nft":
                self._drop_owned(fam, current, keep=needed)

    def remove(self) -> None:
        for fam in (V4, V6):
            current = self.saved(fam)
            if not current:
                continue
            tx = rules_iptables.cleanup_input(current)
            if tx is None:
                continue
            self.runner.change(Command(tuple(self.restore_argv(fam)), tx,
                                       f"{self.name}: remove fastproxy IPv{fam.version} rules"))
            if self.variant == "nft":
                self._drop_owned(fam, current, keep=set())

    def _base_chains(self, fam: Family, table: str) -> set[str] | None:
        """The base chains that exist now in an iptables-nft table; None if unknown."""
        if not self.runner.has("nft"):
            return None
        listing = self.runner.try_read(["nft", "list", "table", _nft_family(fam), table])
        return None if listing is None else rules_iptables.nft_base_chains(listing)

    def _drop_owned(self, fam: Family, before: dict, keep: set[str]) -> None:
        """iptables-nft: deletes the tables and base chains fastproxy created
        (see the owner markers), except tables in `keep`, once they are empty."""
        owned_t = rules_iptables.owned_tables(before) - keep
        owned_c = {t: c for t, c in rules_iptables.owned_base_chains(before).items() if t not in keep}
        if not (owned_t or owned_c):
            return
        # What is left once our part is gone: predicted when simulating, read otherwise.
        state, predicted = (before, True) if self.runner.simulate else (self.saved(fam) or {}, False)
        nft_fam = _nft_family(fam)
        for table in sorted(owned_t | set(owned_c)):
            if table not in state:
                continue
            t = state[table]
            if not self.runner.has("nft"):
                self.runner.note(f"nft is missing: what fastproxy created in table {nft_fam} {table} stays")
            elif table in owned_t and t.is_empty(ignoring_ours=predicted):
                self.runner.change(Command(("nft", "delete", "table", nft_fam, table),
                                           why=f"{self.name}: table {table} was created by fastproxy, empty again"))
            else:
                exists = set(owned_c.get(table, ())) if predicted else (self._base_chains(fam, table) or set())
                for chain in sorted(owned_c.get(table, set()) & exists):
                    if t.chain_is_empty(chain, ignoring_ours=predicted):
                        self.runner.change(Command(
                            ("nft", "delete", "chain", nft_fam, table, chain),
                            why=f"{self.name}: base chain {chain} of table {table} was created by fastproxy, "
                                "empty again"))


class Nftables:
    """Native nftables: the one `table inet fastproxy`."""

    name = "nft"

    def __init__(self, runner: Runner):
        self.runner = runner

    def available(self) -> bool:
        return self.runner.has("nft")

    def tables(self) -> list[tuple[str, str]] | None:
        text = self.runner.try_read(["nft", "list", "tables"]) if self.available() else None
        if text is None:
            return None
        out = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "table":
                out.append((parts[1], parts[2]))
        return out

    def has_ours(self) -> bool:
        return (rules_nft.FAMILY, rules_nft.TABLE) in (self.tables() or [])

    def has_native_tables(self) -> bool:
        return any(not (fam in _XTABLES_FAMILIES and name in _XTABLES_TABLES) for fam, name in self.tables() or [])

    def install(self, cfg: InitConfig) -> None:
        # The script replaces the table in one transaction: an unchanged config
        # gives the same table again, so this is idempotent without comparing
        # nft's listing (which reformats what we wrote) to our script.
        if not self.available():
            raise InitError("nft not found (needed for --backend nft)")
        self.runner.change(Command(("nft", "-f", "-"), rules_nft.render(cfg),
                                   "nft: install table inet fastproxy (replacing any earlier one, atomically)"))

    def remove(self) -> None:
        if self.has_ours():
            self.runner.change(Command(("nft", "-f", "-"), rules_nft.render_cleanup(),
                                       "nft: remove table inet fastproxy"))


def _nft_family(fam: Family) -> str:
    return "ip" if fam.version == 4 else "ip6"


def _generic_variant(runner: Runner, stem: str) -> str | None:
    """legacy or nft, for the unsuffixed `iptables` / `ip6tables` on PATH."""
    key = ("variant", stem)
    if key not in runner.cache:
        text = runner.try_read([stem, "--version"]) if runner.has(stem) else None
        runner.cache[key] = None if text is None else ("nft" if "nf_tables" in text else "legacy")
    return runner.cache[key]  # type: ignore[return-value]


def backends(runner: Runner) -> dict[str, Iptables | Nftables]:
    return {"iptables-nft": Iptables(runner, "iptables-nft"),
            "iptables-legacy": Iptables(runner, "iptables-legacy"),
            "nft": Nftables(runner)}


def detect_backend(runner: Runner) -> tuple[str, str]:
    """The backend for this network namespace, and why. Like istio-iptables:
    the variant whose tables already hold rules wins (nft before legacy);
    our own earlier install wins over that; native nftables tables mean nft;
    a fresh namespace gets the variant of the `iptables` on PATH."""
    found = backends(runner)
    for name, b in found.items():
        if b.available() and b.has_ours():
            return name, f"fastproxy rules already installed with {name}"
    for name in IPTABLES_VARIANTS:
        b = found[name]
        if b.available() and any(b.saved(fam) for fam in (V4, V6)):
            return name, f"{name}-save shows existing tables"
    nft = found["nft"]
    if nft.available() and nft.has_native_tables():
        return "nft", "native nftables tables exist"
    generic = _generic_variant(runner, "iptables")
    if generic and found[f"iptables-{generic}"].available():
        return f"iptables-{generic}", f"no rules yet; the iptables on PATH is {generic}"
    for name in (*IPTABLES_VARIANTS, "nft"):
        if found[name].available():
            return name, f"no rules yet; {name} is the tool available"
    raise InitError("no iptables-legacy, iptables-nft or nft found on PATH")


def host_is_ipv6_only(runner: Runner) -> bool:
    text = runner.try_read(["ip", "-j", "addr", "show"]) if runner.has("ip") else None
    return policy_routing.ipv6_only(text) if text else False


# ---------------------------------------------------------------------------
# Install and cleanup


def effective_config(cfg: InitConfig, runner: Runner) -> InitConfig:
    """Istio turns IPv6 on by itself when the host's addresses are IPv6 only."""
    if not cfg.dual_stack and host_is_ipv6_only(runner):
        runner.note("the host has only IPv6 addresses: IPv6 rules enabled (as with --dual-stack)")
        return replace(cfg, dual_stack=True)
    return cfg


def install(cfg: InitConfig, runner: Runner) -> str:
    """Makes fastproxy's interception on this host exactly `cfg`. Returns the backend used."""
    found = backends(runner)
    if cfg.backend == "auto":
        name, why = detect_backend(runner)
        runner.note(f"backend {name} ({why})")
    else:
        name = cfg.backend
        if not found[name].available():
            raise InitError(f"--backend {name}: its tools are not on PATH")
        runner.note(f"backend {name} (--backend)")
    for other, b in found.items():
        if other != name and b.available() and b.has_ours():
            runner.note(f"removing fastproxy rules left in {other}")
            b.remove()
    found[name].install(cfg)
    _routing(cfg, runner)
    return name


def cleanup(runner: Runner) -> None:
    """Removes everything fastproxy init added, from every backend."""
    for b in backends(runner).values():
        if b.available():
            b.remove()
    _routing(None, runner)
    if runner.changed == 0:
        runner.note("nothing of fastproxy's to remove")


def _routing(cfg: InitConfig | None, runner: Runner) -> None:
    """Brings our ip rules and routes in line with `cfg` (None: remove them all)."""
    want = policy_routing.wanted(cfg) if cfg else []
    kinds = (("rule", policy_routing.IpRule, policy_routing.list_rules_argv, policy_routing.delete_rule_argv),
             ("route", policy_routing.LocalRoute, policy_routing.list_routes_argv, policy_routing.delete_route_argv))
    for version in (4, 6):
        for kind, cls, list_argv, delete in kinds:
            wanted_here = [w for w in want if w.version == version and isinstance(w, cls)]
            if not wanted_here and not runner.has("ip"):
                continue
            listing = runner.read(list_argv(version)) if runner.has("ip") else None
            have = policy_routing.ours(listing) if listing else []
            for w in wanted_here:
                match = next((e for e in have if w.matches(e)), None)
                if match is not None:
                    have.remove(match)
                else:
                    runner.change(Command(tuple(w.add_argv()), why=f"TPROXY: ip {kind} for diverted packets"))
            for extra in have:
                runner.change(Command(tuple(delete(version, extra)), why=f"remove fastproxy's ip {kind}"))
    if cfg is not None and policy_routing.passthrough_v6_wanted(cfg):
        listing = runner.read(policy_routing.list_lo_v6_argv())
        if not (listing and policy_routing.has_passthrough_v6(listing)):
            runner.change(Command(tuple(policy_routing.address_argv()),
                                  why=f"IPv6 inbound passthrough source {INBOUND_PASSTHROUGH_V6}"))


# ---------------------------------------------------------------------------
# --run-validation


def validate(cfg: InitConfig, timeout: float = VALIDATION_TIMEOUT_S) -> str | None:
    """Checks that the rules really redirect, the way istio-iptables'
    validation does: listen on the loopback address at the capture ports, and
    connect as the proxy user from loopback to the passthrough address
    (127.0.0.6 / ::6) on the probe port. The rule sending the proxy's traffic
    to its own pod's address to the inbound listener must catch it, and the
    listener must see the probe port as the original destination. Returns
    None when it works, else what went wrong."""
    families = [(socket.AF_INET, "127.0.0.1", INBOUND_PASSTHROUGH_V4, socket.SOL_IP)]
    if cfg.dual_stack:
        families.append((socket.AF_INET6, "::1", INBOUND_PASSTHROUGH_V6, socket.IPPROTO_IPV6))
    for family, local, target, level in families:
        try:
            problem = _validate_family(cfg, family, local, target, level, timeout)
        except OSError as e:
            problem = f"cannot run the check on {local}: {e}"
        if problem:
            return problem
    return None


def _validate_family(cfg: InitConfig, family: int, local: str, target: str, level: int,
                     timeout: float) -> str | None:
    listeners = []
    try:
        for port in dict.fromkeys((cfg.inbound_port, cfg.outbound_port)):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((local, port))
                s.listen(16)
            except OSError as e:
                s.close()
                if e.errno != errno.EADDRINUSE:
                    raise
                continue
            listeners.append(s)
        if not listeners:
            return f"cannot listen on {local} at port {cfg.inbound_port} or {cfg.outbound_port}: in use"
        pid = _spawn_prober(cfg, family, local, target, timeout)
        try:
            return _await_probe(listeners, level, timeout, f"[{target}]:{VALIDATION_PROBE_PORT}", pid, cfg)
        finally:
            _reap(pid)
    finally:
        for s in listeners:
            s.close()


def _spawn_prober(cfg: InitConfig, family: int, local: str, target: str, timeout: float) -> int:
    """A child that, as the proxy's user, keeps connecting to target:probe port
    until the deadline (the first attempts may race the listeners)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        if os.geteuid() == 0:
            try:
                os.setgroups([])
                os.setgid(cfg.proxy_gids[0])
                os.setuid(cfg.proxy_uids[0])
            except OSError:
                code = _EXIT_NO_PRIVILEGE_DROP
                raise
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = socket.socket(family, socket.SOCK_STREAM)
            c.settimeout(1.0)
            try:
                c.bind((local, 0))
                c.connect((target, VALIDATION_PROBE_PORT))
                c.recv(16)
                code = 0
                break
            except OSError:
                time.sleep(0.1)
            finally:
                c.close()
    finally:
        os._exit(code)


def _await_probe(listeners: list[socket.socket], level: int, timeout: float, dest: str, pid: int,
                 cfg: InitConfig) -> str | None:
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            got = f"; the listener saw original ports {seen}" if seen else ""
            return f"a connection to {dest} from the proxy's user was not redirected within {timeout:g}s{got}"
        # Peek without reaping: _reap() is the one place the child is waited for.
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info and info.si_code == os.CLD_EXITED and info.si_status == _EXIT_NO_PRIVILEGE_DROP:
            return f"cannot switch to the proxy's uid {cfg.proxy_uids[0]} / gid {cfg.proxy_gids[0]} for the check"
        ready, _, _ = select.select(listeners, [], [], min(left, 0.2))
        for s in ready:
            conn, _ = s.accept()
            with conn:
                port = _original_port(conn, level)
                conn.sendall(str(port).encode())
            if port == VALIDATION_PROBE_PORT:
                return None
            seen.append(port)


def _original_port(conn: socket.socket, level: int) -> int | None:
    size = 16 if level == socket.SOL_IP else 28
    try:
        raw = conn.getsockopt(level, _SO_ORIGINAL_DST, size)
    except OSError:
        return None
    return struct.unpack_from("!H", raw, 2)[0]


def _reap(pid: int) -> None:
    """Stops and waits for the prober (our own child, by pid)."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
