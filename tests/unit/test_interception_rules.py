"""Golden tests of the `fastproxy init` rule builders, plus the pure pieces
around them (flag/env parsing, the replace/remove transactions, the dry-run
plan of the executor against a simulated empty host).

Each case is a set of istio-iptables flags. Its golden files under
golden/interception/ are, for case NAME:
  NAME.iptables-v4.txt   iptables-restore --noflush input
  NAME.iptables-v6.txt   ip6tables-restore --noflush input (dual stack only)
  NAME.nft.txt           nft -f script
  NAME.ip.txt            ip rule / route / addr commands (TPROXY, dual stack only)
Regenerate with FASTPROXY_UPDATE_GOLDEN=1, then read every diff by eye.
"""
import io
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from fastproxy.interception import apply, flags, policy_routing, rules_iptables, rules_nft
from fastproxy.interception.flags import InitConfigError, from_sources

GOLDEN = Path(__file__).parent / "golden" / "interception"
UPDATE = os.environ.get("FASTPROXY_UPDATE_GOLDEN") == "1"

# name -> istio-iptables command line
CASES = {
    "default": "",
    "tproxy": "-m TPROXY",
    "dual-stack": "--dual-stack",
    "tproxy-dual-stack": "-m TPROXY --dual-stack",
    "inbound-ports-include": "-b 8080,9090",
    "inbound-ports-exclude": "-b '*' -d 22,8081",
    "inbound-disabled": "-b ''",
    "outbound-cidrs": "-i 10.0.0.0/8,172.16.0.0/12,fd00::/8 -x 10.96.0.10 --dual-stack",
    "outbound-ports-only": "-i '' -q 3306,5432",
    "outbound-ports-exclude-dns": "-o 25,53 --redirect-dns",
    "dns-dual-stack": "--redirect-dns --dual-stack",
    "uid-gid-lists": "-u 1337,1338 -g 1337,2000",
    "interfaces": "-k kv0,vm+ -c eth9",
    "virt-interfaces-cidrs": "-k kv0 -i 10.0.0.0/8,2001:db8::/32 --dual-stack",
    "tproxy-ports-include": "-m TPROXY -b 8080 -t 1234 -r 200 -c eth9",
    "loopback-include": "-i 127.0.0.0/8,10.0.0.0/8",
    "custom-ports": "-p 16001 -z 16006 -u 2000",
    "everything": ("-m TPROXY --dual-stack --redirect-dns -k kv0 -c eth9 -x 10.0.0.0/8,fd00::/8 "
                   "-d 22 -o 25 -q 3306 -u 1337,4242 -g 1337"),
}


def config(cmdline: str, environ: dict | None = None) -> flags.InitConfig:
    """Parses a command line the way `fastproxy init` does."""
    import argparse

    from fastproxy.interception.cli import add_parser

    top = argparse.ArgumentParser()
    add_parser(top.add_subparsers(dest="command"))
    args = top.parse_args(["init", *shlex.split(cmdline)])
    return from_sources({f.field: getattr(args, f.field) for f in flags.FLAGS}, environ or {})


def routing_commands(cfg: flags.InitConfig) -> str:
    cmds = [w.add_argv() for w in policy_routing.wanted(cfg)]
    if policy_routing.passthrough_v6_wanted(cfg):
        cmds.append(policy_routing.address_argv())
    return "".join(shlex.join(c) + "\n" for c in cmds)


def rendered(cfg: flags.InitConfig) -> dict[str, str]:
    out = {
        "iptables-v4": rules_iptables.render(cfg, rules_iptables.V4),
        "iptables-v6": rules_iptables.render(cfg, rules_iptables.V6),
        "nft": rules_nft.render(cfg),
        "ip": routing_commands(cfg),
    }
    return {k: v for k, v in out.items() if v}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    files = rendered(config(CASES[name]))
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for old in GOLDEN.glob(f"{name}.*.txt"):
            old.unlink()
        for kind, text in files.items():
            (GOLDEN / f"{name}.{kind}.txt").write_text(text)
    on_disk = {p.name[len(name) + 1:-4]: p.read_text() for p in GOLDEN.glob(f"{name}.*.txt")}
    assert sorted(on_disk) == sorted(files), "golden files differ; FASTPROXY_UPDATE_GOLDEN=1 regenerates"
    for kind, text in files.items():
        assert text == on_disk[kind], f"{name}.{kind}.txt differs; FASTPROXY_UPDATE_GOLDEN=1 regenerates"


def test_no_stale_golden_files():
    names = {p.name.split(".", 1)[0] for p in GOLDEN.glob("*.txt")}
    assert names <= set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_rule_carries_a_comment_tag(name):
    files = rendered(config(CASES[name]))
    for kind in ("iptables-v4", "iptables-v6"):
        for line in files.get(kind, "").splitlines():
            if line.startswith("-A "):
                assert '-m comment --comment "fastproxy: ' in line, line
    body = files["nft"].split("{", 1)[1]
    for line in body.splitlines():
        line = line.strip()
        if line and not line.startswith(("chain ", "type ", "}")) and line != "":
            assert 'comment "fastproxy: ' in line, line


def test_ipv6_rules_only_with_dual_stack():
    assert rules_iptables.render(config(""), rules_iptables.V6) == ""
    v6 = rules_iptables.render(config("--dual-stack"), rules_iptables.V6)
    assert "::1/128" in v6 and "::6/128" in v6 and "127.0.0.1" not in v6
    assert "meta nfproto ipv6 return" in rules_nft.render(config(""))
    assert "meta nfproto ipv6 return" not in rules_nft.render(config("--dual-stack"))


def test_always_excluded():
    for cmdline in ("", "-m TPROXY", "-b 15021,8080", "-m TPROXY -b 15090"):
        cfg = config(cmdline)
        v4 = rules_iptables.render(cfg, rules_iptables.V4)
        nft = rules_nft.render(cfg)
        # the proxy's ports return before any inbound capture
        assert "--dports 15000,15020,15021,15090" in v4 and "tcp dport { 15000, 15020, 15021, 15090 } return" in nft
        # the proxy's own traffic, localhost and inbound passthrough are never captured
        assert "-m owner --uid-owner 1337 -m comment" in v4 and "-m owner --gid-owner 1337 -m comment" in v4
        assert '-d 127.0.0.1/32 -m comment --comment "fastproxy: to 127.0.0.1: never captured" -j RETURN' in v4
        assert "-s 127.0.0.6/32 -o lo" in v4 and 'oifname "lo" ip saddr 127.0.0.6 return' in nft


# ---------------------------------------------------------------------------
# Flags and environment


def test_defaults_are_istio_injector_defaults():
    cfg = config("")
    assert (cfg.outbound_port, cfg.inbound_port, cfg.proxy_uids, cfg.proxy_gids) == (15001, 15006, (1337,), (1337,))
    assert cfg.inbound_ports_include == "*" and cfg.outbound_ip_ranges_include == "*"
    assert cfg.inbound_interception_mode == "REDIRECT" and cfg.backend == "auto"


def test_env_is_used_and_flag_wins():
    env = {flags.FASTPROXY_INBOUND_PORTS_EXCLUDE: "22, 8081", flags.FASTPROXY_OUTBOUND_PORT: "16001",
           flags.FASTPROXY_REDIRECT_DNS: "true", flags.FASTPROXY_INIT_BACKEND: "NFT"}
    cfg = config("", env)
    assert cfg.inbound_ports_exclude == (22, 8081) and cfg.outbound_port == 16001
    assert cfg.redirect_dns is True and cfg.backend == "nft"
    cfg = config("-d 9000 -p 17001 --redirect-dns=false --backend iptables-legacy", env)
    assert cfg.inbound_ports_exclude == (9000,) and cfg.outbound_port == 17001
    assert cfg.redirect_dns is False and cfg.backend == "iptables-legacy"


def test_empty_value_disables_a_direction():
    assert config("-b ''").inbound_enabled is False
    assert config("", {flags.FASTPROXY_INBOUND_PORTS_INCLUDE: ""}).inbound_enabled is False
    assert config("-i ''").outbound_ip_ranges_include == ()


def test_gid_defaults_to_uid():
    assert config("-u 2000").proxy_gids == (2000,)
    assert config("-u 2000 -g 3000").proxy_gids == (3000,)


def test_cidrs_are_normalised_and_split_by_family():
    cfg = config("-i 10.1.2.3/8,fd00::1/8,192.0.2.7")
    assert [str(n) for n in cfg.outbound_ip_ranges_include] == ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"]


@pytest.mark.parametrize("cmdline,env,message", [
    ("-p 0", {}, "-p/--envoy-port: port 0 is out of range 1-65535"),
    ("-z http", {}, "-z/--inbound-capture-port: expected a port number 1-65535, got 'http'"),
    ("-m TPROXI", {}, "-m/--istio-inbound-interception-mode: expected REDIRECT or TPROXY, got 'TPROXI'"),
    ("-x '*'", {}, "-x/--istio-service-exclude-cidr: '*' is not allowed here"),
    ("-i '*,10.0.0.0/8'", {}, "-i/--istio-service-cidr: '*' must be the whole value"),
    ("-i 10.0.0.300/8", {}, "-i/--istio-service-cidr: '10.0.0.300/8' is not an IP address or CIDR"),
    ("-u proxy", {}, "-u/--proxy-uid: expected a numeric id, got 'proxy'"),
    ("-k 'has space'", {}, "-k/--kube-virt-interfaces: 'has space' is not a valid interface name"),
    ("-c averyveryverylongname0", {}, "-c/--istio-exclude-interfaces: 'averyveryverylongname0' is not a valid"),
    ("-k eth1 -c eth1", {}, "-c/--istio-exclude-interfaces: eth1 also given to -k"),
    ("-p 15006", {}, "-z/--inbound-capture-port: inbound port 15006 must differ from the outbound port"),
    ("--backend iptables", {}, "--backend: expected one of auto, iptables-legacy, iptables-nft, nft"),
    ("--dry-run --run-validation", {}, "--run-validation: cannot validate a dry run"),
    ("", {flags.FASTPROXY_INBOUND_PORTS_EXCLUDE: "22,x"},
     "FASTPROXY_INBOUND_PORTS_EXCLUDE: expected a port number 1-65535, got 'x'"),
    ("", {flags.FASTPROXY_DUAL_STACK: "maybe"}, "FASTPROXY_DUAL_STACK: expected true or false, got 'maybe'"),
    ("-m TPROXY -r 254", {}, "-r/--istio-inbound-tproxy-route-table: table 254 is one of the kernel's own"),
])
def test_errors_name_the_flag_or_variable(cmdline, env, message):
    with pytest.raises(InitConfigError) as e:
        config(cmdline, env)
    assert str(e.value).startswith(message), str(e.value)


def test_every_flag_has_an_env_constant_and_a_doc():
    for f in flags.FLAGS:
        assert getattr(flags, f.env) == f.env and f.env.startswith("FASTPROXY_")
        assert flags.field_doc(f.field)
    assert len({f.env for f in flags.FLAGS}) == len(flags.FLAGS)


# ---------------------------------------------------------------------------
# Reading iptables-save output; replace and remove transactions

SAVED_WITH_OTHERS = """\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [10:600]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [3:180]
:KUBE-SOMETHING - [0:0]
-A OUTPUT -m comment --comment "user: keep me" -j KUBE-SOMETHING
-A POSTROUTING -o eth0 -j MASQUERADE
COMMIT
"""


def _installed(cfg_text: str, base: str = SAVED_WITH_OTHERS) -> str:
    """The save output after applying our v4 rules on top of `base` (text merge)."""
    desired = rules_iptables.render(config(cfg_text), rules_iptables.V4)
    tables = rules_iptables.parse(base)
    for name, t in rules_iptables.parse(desired).items():
        into = tables.setdefault(name, rules_iptables.SavedTable())
        for chain, rules in t.chains.items():
            into.chains.setdefault(chain, []).extend(rules)
    out = []
    for name, t in tables.items():
        out.append(f"*{name}")
        out += [f":{c} {t.policies.get(c, '-')} [0:0]" for c in t.chains]
        for rules in t.chains.values():
            out += rules
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def test_desired_text_parses_back_to_itself():
    for cmdline in CASES.values():
        text = rules_iptables.render(config(cmdline), rules_iptables.V4)
        assert rules_iptables.replace_input({}, text) == text   # fresh host: exactly the golden input


def test_replace_is_none_when_already_in_place():
    saved = rules_iptables.parse(_installed(""))
    desired = rules_iptables.render(config(""), rules_iptables.V4)
    assert rules_iptables.replace_input(saved, desired) is None


def test_replace_swaps_only_our_part():
    saved = rules_iptables.parse(_installed("-m TPROXY"))
    desired = rules_iptables.render(config("-d 22"), rules_iptables.V4)
    tx = rules_iptables.replace_input(saved, desired)
    lines = tx.splitlines()
    # old jumps deleted, mangle chains (no longer used) flushed then deleted, nothing of others touched
    assert '-D OUTPUT -m comment --comment "fastproxy: enter fastproxy outbound capture" -j FASTPROXY_OUTPUT' in lines
    assert "-F FASTPROXY_DIVERT" in lines and "-X FASTPROXY_DIVERT" in lines
    assert lines.index("-F FASTPROXY_TPROXY") < lines.index("-X FASTPROXY_TPROXY")
    assert not any("KUBE-SOMETHING" in line or "MASQUERADE" in line or "--dport 9 " in line for line in lines)
    assert "*filter" not in lines
    assert '-A FASTPROXY_INBOUND -p tcp -m tcp --dport 22 -m comment --comment "fastproxy: inbound port 22 ' \
           'is excluded (-d)" -j RETURN' in lines


def test_cleanup_removes_exactly_ours():
    saved = rules_iptables.parse(_installed("-m TPROXY --redirect-dns"))
    tx = rules_iptables.cleanup_input(saved)
    assert tx.startswith("# fastproxy init: remove the rules of")
    removed = [line for line in tx.splitlines() if line.startswith(("-D ", "-F ", "-X "))]
    assert removed and all("FASTPROXY_" in line for line in removed)
    assert rules_iptables.cleanup_input(rules_iptables.parse(SAVED_WITH_OTHERS)) is None
    assert rules_iptables.ours(rules_iptables.parse(SAVED_WITH_OTHERS)) == {}


def test_owner_markers_for_iptables_nft():
    desired = rules_iptables.render(config("-m TPROXY"), rules_iptables.V4)
    current = rules_iptables.parse(SAVED_WITH_OTHERS)
    # nat exists with PREROUTING and POSTROUTING base chains (OUTPUT not yet created); mangle does not exist
    markers = rules_iptables.markers_for(current, desired, {"nat": {"PREROUTING", "POSTROUTING"}})
    assert markers == {"mangle": ["FASTPROXY_OWNS_TABLE"], "nat": ["FASTPROXY_OWNS_OUTPUT"]}
    marked = rules_iptables.with_markers(desired, markers)
    tables = rules_iptables.parse(marked)
    assert rules_iptables.owned_tables(tables) == {"mangle"}
    assert rules_iptables.owned_base_chains(tables) == {"nat": {"OUTPUT"}}
    # markers survive a re-run
    assert rules_iptables.markers_for(tables, desired, {"nat": {"PREROUTING", "OUTPUT", "POSTROUTING"}}) == markers


def test_table_emptiness():
    t = rules_iptables.parse(_installed("", base="*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"))
    assert not t["nat"].is_empty() and t["nat"].is_empty(ignoring_ours=True)
    assert not rules_iptables.parse(SAVED_WITH_OTHERS)["nat"].is_empty(ignoring_ours=True)


def test_nft_base_chains():
    listing = """table ip nat {
\tchain POSTROUTING {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "lo" counter packets 0 bytes 0 accept
\t}

\tchain FASTPROXY_OUTPUT {
\t\t counter packets 0 bytes 0 return
\t}
}"""
    assert rules_iptables.nft_base_chains(listing) == {"POSTROUTING"}


def test_iproute_listings():
    rules = ('[{"priority":0,"src":"all","table":"local"},'
             '{"priority":32765,"src":"all","fwmark":"0x539","table":"133","protocol":"155"}]')
    mine = policy_routing.ours(rules)
    assert len(mine) == 1 and policy_routing.IpRule(4, 1337, 133).matches(mine[0])
    assert policy_routing.delete_rule_argv(4, mine[0]) == [
        "ip", "-4", "rule", "del", "priority", "32765", "fwmark", "0x539", "lookup", "133", "protocol", "155"]
    routes = '[{"type":"local","dst":"default","dev":"lo","table":"133","protocol":"155","scope":"host"}]'
    assert policy_routing.LocalRoute(4, 133).matches(policy_routing.ours(routes)[0])
    addrs = ('[{"ifname":"lo","flags":["LOOPBACK"],"addr_info":[{"family":"inet6","local":"::6","prefixlen":128,'
             '"scope":"global"}]},{"ifname":"eth0","flags":[],"addr_info":[{"family":"inet6","local":"fd00::5",'
             '"prefixlen":64,"scope":"global"},{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]')
    assert policy_routing.has_passthrough_v6(addrs) and policy_routing.ipv6_only(addrs)
    with_v4 = addrs.replace('"addr_info":[{"family":"inet6","local":"fd00::5"',
                            '"addr_info":[{"family":"inet","local":"10.0.0.5","scope":"global"},'
                            '{"family":"inet6","local":"fd00::5"')
    assert not policy_routing.ipv6_only(with_v4)


# ---------------------------------------------------------------------------
# The executor in simulate mode, against a fake host where nothing is installed


class FakeHost:
    """Answers the executor's commands: the tools listed exist, every listing is empty."""

    def __init__(self, tools=("iptables", "iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save",
                              "ip6tables-nft-restore", "nft", "ip")):
        self.tools = set(tools)
        self.ran: list[list[str]] = []

    def which(self, tool):
        return f"/usr/sbin/{tool}" if tool in self.tools else None

    def run(self, argv, **kw):
        self.ran.append(argv)
        if argv[-1] == "--version":
            return subprocess.CompletedProcess(argv, 0, "iptables v1.8.9 (nf_tables)\n", "")
        out = "[]" if argv[:2] == ["ip", "-j"] else ""
        return subprocess.CompletedProcess(argv, 0, out, "")


@pytest.mark.parametrize("backend", ["iptables-nft", "nft"])
def test_dry_run_prints_the_exact_plan_and_changes_nothing(backend):
    host, out = FakeHost(), io.StringIO()
    runner = apply.Runner(simulate=True, out=out, run=host.run, which=host.which)
    cfg = config(f"-m TPROXY --dual-stack --backend {backend}")
    apply.install(cfg, runner)
    text = out.getvalue()
    if backend == "nft":
        assert f"nft -f - <<'EOF'\n{rules_nft.render(cfg)}EOF\n" in text
    else:
        v4 = rules_iptables.render(cfg, rules_iptables.V4)
        # fresh host: every table is new, so it carries the owner marker
        assert rules_iptables.with_markers(v4, {"mangle": ["FASTPROXY_OWNS_TABLE"], "nat": ["FASTPROXY_OWNS_TABLE"]}) \
            in text
        assert "iptables-nft-restore --noflush <<'EOF'\n" in text
    for cmd in (policy_routing.IpRule(4, 1337, 133), policy_routing.LocalRoute(6, 133)):
        assert shlex.join(cmd.add_argv()) in text
    assert shlex.join(policy_routing.address_argv()) in text
    # only listings ran
    assert all(a[0] in ("nft", "ip") and a[1] in ("list", "-j") or a[0].endswith("-save") or a[-1] == "--version"
               for a in host.ran), host.ran


def test_detect_backend_on_a_fresh_host_uses_the_iptables_on_path():
    host = FakeHost()
    runner = apply.Runner(simulate=True, out=io.StringIO(), run=host.run, which=host.which)
    assert apply.detect_backend(runner)[0] == "iptables-nft"
    host = FakeHost(tools=("nft",))
    runner = apply.Runner(simulate=True, out=io.StringIO(), run=host.run, which=host.which)
    assert apply.detect_backend(runner)[0] == "nft"
