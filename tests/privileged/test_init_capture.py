"""Issue 4, acceptance 2: the rules of the real `fastproxy init`, proved in
network namespaces with the proxy's own counters and the bytes that arrive.

One lab per backend x interception mode (module-scoped, shared by the tests
of that combination; IPv4 and IPv6 both run in it):

    namespace "app" (the pod)                      namespace "peer"
    fastproxy (setpriv --regid 1337), app server   client, peer server
    192.0.2.1  2001:db8::1   ---- veth ----        192.0.2.2  2001:db8::2
                                                   192.0.2.3  2001:db8::3 (excluded by -x)

    fastproxy init -g 1337 -m MODE --backend BACKEND --dual-stack
                   -o 9090 -x 192.0.2.3/32,2001:db8::3/128 -d 8081

The proxy runs on the default capture listeners (no `listeners` in its
config), gets the mode from FASTPROXY_INBOUND_INTERCEPTION_MODE (the name
the injector sets) and runs as Istio's TPROXY sidecar does: uid 0, gid 1337.
Every check compares the counters scraped from /stats/prometheus inside the
namespace before and after, exactly: what must move moves by the expected
amount, and nothing else moves.

Needs root, `ip`, `setpriv`, `curl` and the backend's tools; otherwise the
lab's tests are skipped with the reason.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from tests.privileged.lab import ADMIN_PORT, PROXY_GID, lab_settings
from tests.support.admin_client import AdminClient, NetnsAdminClient
from tests.support.echo_process import EchoProcess
from tests.support.netns import A_V4, A_V6, B_V4, B_V6, NetnsPair, run
from tests.support.polling import poll_until
from tests.support.proxy_config import hermetic_settings, proxy_config, write_config
from tests.support.proxy_process import PYTHON, REPO_ROOT, ProxyProcess, hermetic_env

pytestmark = pytest.mark.privileged

APP_PORT = 8080              # the app's port: inbound capture
APP_EXCLUDED_PORT = 8081     # -d: inbound bypass
PEER_PORT = 8080             # outbound capture
PEER_EXCLUDED_PORT = 9090    # -o: outbound bypass
X_V4, X_V6 = "192.0.2.3", "2001:db8::3"   # -x: a peer address outbound traffic to bypasses the proxy
APP_TAG, PEER_TAG = "APP|", "PEER|"
NBYTES = 65_536

FAMILIES = {
    4: {"app": A_V4, "peer": B_V4, "excluded": X_V4, "passthrough": "127.0.0.6"},
    6: {"app": A_V6, "peer": B_V6, "excluded": X_V6, "passthrough": "::6"},
}

INIT_FLAGS = ["-g", str(PROXY_GID), "--dual-stack", "-o", str(PEER_EXCLUDED_PORT),
              "-x", f"{X_V4}/32,{X_V6}/128", "-d", str(APP_EXCLUDED_PORT)]

# What each backend needs on PATH, and the listings whose exact text
# `--cleanup` must give back.
BACKEND_TOOLS = {
    "iptables-nft": ("iptables-nft", "ip6tables-nft", "iptables-nft-save", "ip6tables-nft-save",
                     "iptables-nft-restore", "ip6tables-nft-restore", "nft"),
    "iptables-legacy": ("iptables-legacy", "ip6tables-legacy", "iptables-legacy-save", "ip6tables-legacy-save",
                        "iptables-legacy-restore", "ip6tables-legacy-restore", "nft"),
    "nft": ("nft",),
}
LISTINGS = {
    "iptables-nft": (("iptables-nft-save",), ("ip6tables-nft-save",), ("nft", "list", "ruleset")),
    "iptables-legacy": (("iptables-legacy-save",), ("ip6tables-legacy-save",), ("nft", "list", "ruleset")),
    "nft": (("nft", "list", "ruleset"),),
}
ROUTING_LISTINGS = (("ip", "-4", "rule", "show"), ("ip", "-6", "rule", "show"),
                    ("ip", "-4", "route", "show", "table", "all"), ("ip", "-6", "route", "show", "table", "all"))

# Rules fastproxy did not write, present before `init`: `--cleanup` must leave them exactly.
# v4 mangle is left absent (TPROXY makes fastproxy create it, and cleanup must drop it again),
# except for legacy, whose tables cannot be deleted once they exist.
_FOREIGN_XT = (
    ("iptables", "-t", "nat", "-A", "OUTPUT", "-d", "198.51.100.7/32", "-p", "tcp", "-m", "comment",
     "--comment", "not fastproxy", "-j", "RETURN"),
    ("iptables", "-t", "filter", "-A", "INPUT", "-s", "198.51.100.9/32", "-j", "DROP"),
    ("ip6tables", "-t", "nat", "-A", "OUTPUT", "-d", "2001:db8:ffff::7/128", "-p", "tcp", "-j", "RETURN"),
    ("ip6tables", "-t", "mangle", "-A", "PREROUTING", "-s", "2001:db8:ffff::/48", "-j", "RETURN"),
)
_FOREIGN_NFT = """\
table inet not_fastproxy {
    chain out {
        type nat hook output priority 10; policy accept;
        ip daddr 198.51.100.7 tcp dport 80 return
    }
    chain in {
        type filter hook input priority 0; policy accept;
        ip6 saddr 2001:db8:ffff::9 drop
    }
}
"""

COUNTERS = {
    "out_cx": ("fastproxy_listener_downstream_cx_total", {"listener_name": "virtualOutbound"}),
    "out_rx": ("fastproxy_listener_downstream_cx_rx_bytes_total", {"listener_name": "virtualOutbound"}),
    "out_tx": ("fastproxy_listener_downstream_cx_tx_bytes_total", {"listener_name": "virtualOutbound"}),
    "out_loop": ("fastproxy_listener_downstream_cx_refused_total", {"listener_name": "virtualOutbound",
                                                                    "reason": "loop"}),
    "out_no_route": ("fastproxy_listener_downstream_cx_refused_total", {"listener_name": "virtualOutbound",
                                                                        "reason": "no_route"}),
    "in_cx": ("fastproxy_listener_downstream_cx_total", {"listener_name": "virtualInbound"}),
    "in_rx": ("fastproxy_listener_downstream_cx_rx_bytes_total", {"listener_name": "virtualInbound"}),
    "in_tx": ("fastproxy_listener_downstream_cx_tx_bytes_total", {"listener_name": "virtualInbound"}),
    "in_loop": ("fastproxy_listener_downstream_cx_refused_total", {"listener_name": "virtualInbound",
                                                                   "reason": "loop"}),
    "in_no_route": ("fastproxy_listener_downstream_cx_refused_total", {"listener_name": "virtualInbound",
                                                                       "reason": "no_route"}),
    "pass_cx": ("fastproxy_cluster_upstream_cx_total", {"cluster_name": "PassthroughCluster"}),
    "pass_tx": ("fastproxy_cluster_upstream_cx_tx_bytes_total", {"cluster_name": "PassthroughCluster"}),
    "pass_rx": ("fastproxy_cluster_upstream_cx_rx_bytes_total", {"cluster_name": "PassthroughCluster"}),
    "pass_fail": ("fastproxy_cluster_upstream_cx_connect_fail_total", {"cluster_name": "PassthroughCluster"}),
    "inpass_cx": ("fastproxy_cluster_upstream_cx_total", {"cluster_name": "InboundPassthroughCluster"}),
    "inpass_tx": ("fastproxy_cluster_upstream_cx_tx_bytes_total", {"cluster_name": "InboundPassthroughCluster"}),
    "inpass_rx": ("fastproxy_cluster_upstream_cx_rx_bytes_total", {"cluster_name": "InboundPassthroughCluster"}),
    "inpass_fail": ("fastproxy_cluster_upstream_cx_connect_fail_total",
                    {"cluster_name": "InboundPassthroughCluster"}),
}


def _missing(backend: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables/nft)"
    missing = [t for t in ("ip", "setpriv", "curl", *BACKEND_TOOLS[backend]) if shutil.which(t) is None]
    return f"missing tools for backend {backend}: {', '.join(missing)}" if missing else None


def _skip(reason: str) -> None:
    pytest.skip(f"privileged init capture tests skipped: {reason}")


class CaptureLab:
    """The two namespaces, their servers, the proxy, and the rules of one
    backend x mode. Every process is stopped by its pid at teardown."""

    def __init__(self, backend: str, mode: str, tmp):
        self.backend = backend
        self.mode = mode
        self.tmp = tmp
        self.pair = NetnsPair()
        self.app_ns, self.peer_ns = self.pair.a, self.pair.b
        self.servers: list[EchoProcess] = []
        self.proxy: ProxyProcess | None = None
        self.app_server: EchoProcess | None = None
        self.peer_server: EchoProcess | None = None
        self.before: dict[str, str] = {}
        self.routing_before: dict[str, str] = {}

    # -- building ------------------------------------------------------------------

    def build(self) -> None:
        self.pair.create()
        self.pair.run_in(self.peer_ns, "ip", "addr", "add", f"{X_V4}/24", "dev", self.pair.veth_b)
        self.pair.run_in(self.peer_ns, "ip", "addr", "add", f"{X_V6}/64", "dev", self.pair.veth_b, "nodad")
        self._foreign_rules()
        self.before = self.listings()
        self.routing_before = self.routing()
        self.app_server = self._server(self.app_ns, (APP_PORT, APP_EXCLUDED_PORT), APP_TAG)
        self.peer_server = self._server(self.peer_ns, (PEER_PORT, PEER_EXCLUDED_PORT), PEER_TAG)
        self.init()
        self._start_proxy()

    def _foreign_rules(self) -> None:
        if self.backend == "nft":
            out = subprocess.run(self.pair.exec_argv(self.app_ns, "nft", "-f", "-"), input=_FOREIGN_NFT,
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, f"nft -f (foreign table): {out.stderr}"
            return
        variant = self.backend.split("-", 1)[1]
        for tool, *args in _FOREIGN_XT:
            self.pair.run_in(self.app_ns, f"{tool}-{variant}", *args)
        if variant == "legacy":
            self.pair.run_in(self.app_ns, "iptables-legacy", "-t", "mangle", "-S")

    def _server(self, ns: str, ports, tag: str) -> EchoProcess:
        listen = [a for p in ports for a in (f"0.0.0.0:{p}", f"[::]:{p}")]
        server = EchoProcess(listen, tag=tag, prefix=self.pair.exec_argv(ns))
        self.servers.append(server)
        return server

    def _start_proxy(self) -> None:
        path = write_config(self.tmp / "proxy.yaml", proxy_config(lab_settings(), None, []))
        prefix = self.pair.exec_argv(self.app_ns, "setpriv", f"--regid={PROXY_GID}", "--clear-groups")
        self.proxy = ProxyProcess(path, NetnsAdminClient(self.app_ns, ADMIN_PORT), self.tmp / "proxy.stderr",
                                  env={"FASTPROXY_INBOUND_INTERCEPTION_MODE": self.mode}, prefix=prefix)
        self.proxy.start().wait_ready(timeout=20)

    # -- fastproxy init ---------------------------------------------------------------

    def fastproxy_init(self, *args: str) -> subprocess.CompletedProcess:
        """`python -m fastproxy init ARGS` in the app namespace; must succeed."""
        argv = self.pair.exec_argv(self.app_ns, PYTHON, "-m", "fastproxy", "init", *args)
        out = subprocess.run(argv, cwd=REPO_ROOT, env=hermetic_env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"fastproxy init {' '.join(args)} -> {out.returncode}:\n{out.stderr}"
        return out

    def init(self) -> subprocess.CompletedProcess:
        return self.fastproxy_init(*INIT_FLAGS, "-m", self.mode, "--backend", self.backend)

    def _listing(self, argv) -> str:
        return self.pair.run_in(self.app_ns, *argv).stdout

    def listings(self) -> dict[str, str]:
        """The backend's rule listings, without iptables-save's timestamp lines
        and with packet counters zeroed (traffic, not rules)."""
        out = {}
        for argv in LISTINGS[self.backend]:
            text = self._listing(argv)
            text = "\n".join(line for line in text.splitlines()
                             if not line.startswith(("# Generated by", "# Completed on")))
            text = re.sub(r"\[\d+:\d+\]", "[0:0]", text)
            out[" ".join(argv)] = re.sub(r"counter packets \d+ bytes \d+", "counter packets 0 bytes 0", text)
        return out

    def routing(self) -> dict[str, str]:
        """ip rules, and the routes the kernel did not derive from an address
        itself (those come and go with link-local autoconfiguration and with
        ::6, which init adds when missing and never removes: it is inert)."""
        return {" ".join(argv): "\n".join(line for line in self._listing(argv).splitlines()
                                          if " proto kernel " not in f"{line} ")
                for argv in ROUTING_LISTINGS}

    # -- traffic --------------------------------------------------------------------

    def client(self, ns: str, host: str, port: int, prefix: str, seed: int, as_proxy_gid: bool = False) -> dict:
        """One echo-verified transfer of NBYTES from a fresh process in `ns`
        (root, gid 0: the app; or with the proxy's gid)."""
        argv = self.pair.exec_argv(ns)
        if as_proxy_gid:
            argv += ["setpriv", f"--regid={PROXY_GID}", "--clear-groups"]
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        argv += [PYTHON, "-m", "tests.support.tcp_client", "--connect", target, "--bytes", str(NBYTES),
                 "--seed", str(seed), "--timeout", "10", "--expect-prefix", prefix]
        out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert out.stdout.strip(), f"client printed nothing: {out.stderr}"
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["echo_ok"], f"{ns} -> {target}: {result}"
        return result

    def counters(self) -> dict[str, float]:
        m = self.proxy.admin.metrics()
        return {key: m.value(name, **labels) for key, (name, labels) in COUNTERS.items()}

    def deltas(self, before: dict[str, float]) -> dict[str, float]:
        now = self.counters()
        return {k: now[k] - before[k] for k in now if now[k] != before[k]}

    def expect_deltas(self, before: dict[str, float], expected: dict[str, float]) -> None:
        """Exactly `expected` moved (polled: byte counters follow the relay)."""
        last = {}

        def matches():
            last["got"] = self.deltas(before)
            return last["got"] == expected

        try:
            poll_until(matches, timeout=5, message="the counters")
        except AssertionError:
            raise AssertionError(f"counter deltas {last.get('got')}, expected exactly {expected}") from None

    @staticmethod
    def new_peer(server: EchoProcess, seen: int) -> dict:
        """The one connection `server` accepted after the first `seen`."""
        peers = poll_until(lambda: p if len(p := server.peers()) > seen else None, timeout=5,
                           message="the server to report the connection")
        assert len(peers) == seen + 1, f"expected one new connection, got {peers[seen:]}"
        return peers[seen]

    # -- teardown ------------------------------------------------------------------

    def teardown(self) -> list[str]:
        problems = []
        if self.proxy is not None and self.proxy.proc is not None:
            try:
                if self.proxy.running():
                    self.proxy.assert_clean_exit(self.proxy.terminate(timeout=15))
                else:
                    problems.append(f"proxy had exited with {self.proxy.proc.returncode}:\n"
                                    f"{self.proxy.stderr_tail()}")
            except AssertionError as exc:
                problems.append(str(exc))
            finally:
                self.proxy.kill()
                self.proxy.close_files()
        for server in self.servers:
            server.stop()
        problems += self.pair.destroy()
        left = [ns for ns in run("ip", "netns", "list").stdout.split() if ns in (self.app_ns, self.peer_ns)]
        if left:
            problems.append(f"namespaces left behind: {left}")
        return problems


LABS = [(backend, mode) for backend in ("iptables-nft", "nft", "iptables-legacy") for mode in ("REDIRECT", "TPROXY")]


@pytest.fixture(scope="module", params=LABS, ids=[f"{b}-{m}" for b, m in LABS])
def capture_lab(request, tmp_path_factory):
    backend, mode = request.param
    reason = _missing(backend)
    if reason:
        _skip(reason)
    lab = CaptureLab(backend, mode, tmp_path_factory.mktemp(f"{backend}-{mode}"))
    problems: list[str] = []
    try:
        try:
            lab.build()
        except RuntimeError as exc:   # `ip` or a rule tool refused: this host cannot run the lab
            _skip(f"cannot build the {backend} lab: {exc}")
        yield lab
    finally:
        problems += lab.teardown()
    if problems:
        pytest.fail("capture lab teardown:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def lab(capture_lab, launched_proxies):
    """The shared lab; its proxy's stderr goes into the report of a failing test."""
    launched_proxies.append(capture_lab.proxy)
    return capture_lab


# ---------------------------------------------------------------------------------------


def test_rules_are_installed_by_the_requested_backend_and_mode(lab):
    text = "\n".join(lab.listings().values())
    assert "fastproxy: " in text, text
    if lab.backend == "nft":
        assert "table inet fastproxy" in text
    else:
        assert "FASTPROXY_OUTPUT" in text and "table inet fastproxy" not in text
    tproxy = re.search(r"-j TPROXY |\btproxy (ip|ip6) to :", text) is not None
    assert tproxy == (lab.mode == "TPROXY"), text
    routing = lab.routing()
    for family in ("-4", "-6"):   # TPROXY's policy routing, in both families (--dual-stack)
        rules = routing[f"ip {family} rule show"]
        assert ("fwmark 0x539 lookup 133" in rules) == (lab.mode == "TPROXY"), rules


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_outbound_is_captured_with_the_original_destination(lab, family):
    fam = FAMILIES[family]
    before, seen = lab.counters(), len(lab.peer_server.peers())

    result = lab.client(lab.app_ns, fam["peer"], PEER_PORT, PEER_TAG, seed=family)

    conn = lab.new_peer(lab.peer_server, seen)
    assert conn["local"] == [fam["peer"], PEER_PORT], conn          # the original destination, not 15001
    assert conn["peer"][0] == fam["app"], conn
    assert conn["peer"][1] != result["local"][1], (conn, result)    # a new connection: the proxy's
    lab.expect_deltas(before, {"out_cx": 1, "out_rx": NBYTES, "out_tx": NBYTES + len(PEER_TAG),
                               "pass_cx": 1, "pass_tx": NBYTES, "pass_rx": NBYTES + len(PEER_TAG)})


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_inbound_is_captured_and_reaches_the_app(lab, family):
    fam = FAMILIES[family]
    before, seen = lab.counters(), len(lab.app_server.peers())

    result = lab.client(lab.peer_ns, fam["app"], APP_PORT, APP_TAG, seed=10 + family)

    conn = lab.new_peer(lab.app_server, seen)
    assert conn["local"] == [fam["app"], APP_PORT], conn
    if lab.mode == "TPROXY":
        # Source preserved, as Istio's original_src does: the client's address, the proxy's port.
        assert conn["peer"][0] == result["local"][0], (conn, result)
        assert conn["peer"][1] != result["local"][1], (conn, result)
    else:
        assert conn["peer"][0] == fam["passthrough"], conn
    lab.expect_deltas(before, {"in_cx": 1, "in_rx": NBYTES, "in_tx": NBYTES + len(APP_TAG),
                               "inpass_cx": 1, "inpass_tx": NBYTES, "inpass_rx": NBYTES + len(APP_TAG)})


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_excluded_outbound_port_bypasses_the_proxy(lab, family):
    fam = FAMILIES[family]
    before, seen = lab.counters(), len(lab.peer_server.peers())

    result = lab.client(lab.app_ns, fam["peer"], PEER_EXCLUDED_PORT, PEER_TAG, seed=20 + family)

    conn = lab.new_peer(lab.peer_server, seen)
    assert conn["peer"] == result["local"], (conn, result)          # the client itself, directly
    assert conn["local"] == [fam["peer"], PEER_EXCLUDED_PORT], conn
    assert lab.deltas(before) == {}


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_excluded_cidr_bypasses_the_proxy(lab, family):
    fam = FAMILIES[family]
    before, seen = lab.counters(), len(lab.peer_server.peers())

    result = lab.client(lab.app_ns, fam["excluded"], PEER_PORT, PEER_TAG, seed=30 + family)

    conn = lab.new_peer(lab.peer_server, seen)
    assert conn["peer"] == result["local"], (conn, result)
    assert conn["local"] == [fam["excluded"], PEER_PORT], conn
    assert lab.deltas(before) == {}


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_excluded_inbound_port_bypasses_the_proxy(lab, family):
    fam = FAMILIES[family]
    before, seen = lab.counters(), len(lab.app_server.peers())

    result = lab.client(lab.peer_ns, fam["app"], APP_EXCLUDED_PORT, APP_TAG, seed=40 + family)

    conn = lab.new_peer(lab.app_server, seen)
    assert conn["peer"] == result["local"], (conn, result)
    assert conn["local"] == [fam["app"], APP_EXCLUDED_PORT], conn
    assert lab.deltas(before) == {}


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_the_proxy_gid_is_never_captured_and_nothing_loops(lab, family):
    """A connection made with the proxy's gid goes straight out (that is what
    keeps the proxy's upstream connections from coming back to it); the
    captured paths above each moved their counters by exactly one connection,
    so no connection came round twice; and no listener ever refused a loop."""
    fam = FAMILIES[family]
    before, seen = lab.counters(), len(lab.peer_server.peers())

    result = lab.client(lab.app_ns, fam["peer"], PEER_PORT, PEER_TAG, seed=50 + family, as_proxy_gid=True)

    conn = lab.new_peer(lab.peer_server, seen)
    assert conn["peer"] == result["local"], (conn, result)
    assert lab.deltas(before) == {}
    now = lab.counters()
    assert now["out_loop"] == now["in_loop"] == 0, now
    assert now["pass_fail"] == now["inpass_fail"] == 0, now
    assert now["out_cx"] == now["pass_cx"] and now["in_cx"] == now["inpass_cx"], now


def test_cleanup_restores_the_exact_rules_and_init_is_idempotent(lab):
    installed = lab.listings()
    assert installed != lab.before

    lab.fastproxy_init("--cleanup")
    try:
        assert lab.listings() == lab.before
        assert lab.routing() == lab.routing_before
        # Nothing is captured any more: the app reaches the peer directly.
        before, seen = lab.counters(), len(lab.peer_server.peers())
        result = lab.client(lab.app_ns, B_V4, PEER_PORT, PEER_TAG, seed=60)
        assert lab.new_peer(lab.peer_server, seen)["peer"] == result["local"]
        assert lab.deltas(before) == {}
    finally:
        lab.init()
    assert lab.listings() == installed
    lab.init()
    assert lab.listings() == installed, "a second `fastproxy init` changed the rules"


def test_tproxy_listener_refused_without_cap_net_admin_names_the_setting(tmp_path, launched_proxies):
    """The worker sets IP_TRANSPARENT only in TPROXY mode; without the
    capability the proxy stops at startup and says which setting needs it."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            _skip("missing tools: setpriv (to drop CAP_NET_ADMIN as root)")
        prefix = ["setpriv", "--inh-caps=-net_admin,-net_raw", "--bounding-set=-net_admin,-net_raw"]
    doc = proxy_config(hermetic_settings(workers=1, inbound_interception_mode="TPROXY"), None, [])
    path = write_config(tmp_path / "tproxy.yaml", doc)
    proxy = ProxyProcess(path, AdminClient(doc["settings"]["admin_port"]), tmp_path / "tproxy.stderr",
                         prefix=prefix)
    launched_proxies.append(proxy)
    proxy.start()
    try:
        rc = proxy.wait_exit(timeout=30)
        err = proxy.stderr_tail()
        assert rc != 0, err
        assert "settings.inbound_interception_mode is TPROXY but IP_TRANSPARENT was refused" in err, err
        assert "CAP_NET_ADMIN" in err, err
        assert proxy.shm_segments() == []
    finally:
        proxy.kill()
        proxy.close_files()
