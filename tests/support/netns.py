"""Two network namespaces joined by a veth pair, for transparent-capture
tests. Only documentation addresses are used: 192.0.2.0/24 and
2001:db8::/64 (IPv6 with `nodad`, so addresses are usable at once).

    namespace `a` (proxy + client)        namespace `b` (upstream)
    veth a: 192.0.2.1/24 2001:db8::1/64   veth b: 192.0.2.2/24 2001:db8::2/64

Namespaces are named fastproxy-test-<pid>-<n>-a/-b; destroy() deletes both
(which also removes the veth pair) and never raises.
"""
import itertools
import os
import shutil
import subprocess

A_V4, B_V4 = "192.0.2.1", "192.0.2.2"
A_V6, B_V6 = "2001:db8::1", "2001:db8::2"
TOOLS = ("ip", "iptables", "ip6tables", "setpriv", "curl")

_serial = itertools.count()


def missing_prerequisites() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {out.returncode}: {out.stderr.strip()}")
    return out


class NetnsPair:
    def __init__(self):
        n = next(_serial)
        base = f"fastproxy-test-{os.getpid()}-{n}"
        self.a = f"{base}-a"
        self.b = f"{base}-b"
        short = f"{os.getpid() % 100000}{n}"
        self.veth_a = f"fpa{short}"[:15]
        self.veth_b = f"fpb{short}"[:15]
        self.created: list[str] = []

    def exec_argv(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run_in(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.exec_argv(ns, *argv), check=check)

    def create(self) -> "NetnsPair":
        for ns in (self.a, self.b):
            run("ip", "netns", "add", ns)
            self.created.append(ns)
        run("ip", "link", "add", self.veth_a, "netns", self.a, "type", "veth",
            "peer", "name", self.veth_b, "netns", self.b)
        for ns, dev, v4, v6 in ((self.a, self.veth_a, A_V4, A_V6), (self.b, self.veth_b, B_V4, B_V6)):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")
        return self

    def redirect(self, family: int, dst: str, dport: int, to_port: int, owner_gid_excluded: int = 1337) -> None:
        """One nat OUTPUT REDIRECT rule in namespace a, skipping the proxy's gid."""
        tool = "ip6tables" if family == 6 else "iptables"
        self.run_in(self.a, tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", dst,
                    "--dport", str(dport), "-m", "owner", "!", "--gid-owner", str(owner_gid_excluded),
                    "-j", "REDIRECT", "--to-ports", str(to_port))

    def redirect_inbound(self, dst: str, dport: int, to_port: int) -> None:
        """One nat PREROUTING REDIRECT rule in namespace a (IPv4): traffic
        arriving from namespace b for dst:dport goes to the inbound capture."""
        self.run_in(self.a, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-d", dst,
                    "--dport", str(dport), "-j", "REDIRECT", "--to-ports", str(to_port))

    def destroy(self) -> list[str]:
        problems = []
        for ns in reversed(self.created):
            out = run("ip", "netns", "del", ns, check=False)
            if out.returncode != 0:
                problems.append(f"ip netns del {ns}: {out.stderr.strip()}")
        self.created.clear()
        return problems
