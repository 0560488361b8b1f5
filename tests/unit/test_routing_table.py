"""The compiled table as a worker decodes it: lookups, weights, loop guard."""
from collections import Counter

from fastproxy.config.load import load_text
from fastproxy.routing.table import MODE_INBOUND, MODE_OUTBOUND, MODE_TCP, RouteTable, compile_table, encode
from fastproxy.stats.names import BLOCK, FIRST_BLOCK, SlotRegistry

CFG = """
listeners:
  - {name: echo, address: "127.0.0.1:18080", tcp_proxy: {cluster: echo}}
  - {name: out, address: "0.0.0.0:15001", use_original_dst: true, traffic_direction: OUTBOUND}
  - {name: in, address: "0.0.0.0:15006", use_original_dst: true, traffic_direction: INBOUND}
  - {name: svc, address: "10.0.0.1:80", bind_to_port: false, tcp_proxy: {cluster: echo}}
  - {name: anyip, address: "0.0.0.0:5432", bind_to_port: false, tcp_proxy: {cluster: db}}
clusters:
  - {name: echo, endpoints: [{address: "127.0.0.1:9000", weight: 4}, {address: "127.0.0.1:9001", weight: 1}]}
  - {name: db, endpoints: [{address: "127.0.0.1:5433"}]}
"""


def table(text=CFG, env=None, slots=None):
    slots = slots or SlotRegistry(1024)
    return RouteTable.decode(7, encode(compile_table(load_text(text, env or {}), slots))), slots


def test_modes_and_virtual_lookups():
    t, _ = table()
    modes = {l.name: l.mode for l in t.listeners}
    assert modes == {"echo": MODE_TCP, "out": MODE_OUTBOUND, "in": MODE_INBOUND}
    assert t.outbound(("10.0.0.1", 80)).name == "echo"
    assert t.outbound(("10.9.9.9", 5432)).name == "db"
    assert t.outbound(("10.0.0.2", 80)).name == "PassthroughCluster"


def test_registry_only_refuses_unknown():
    t, _ = table(env={"FASTPROXY_OUTBOUND_TRAFFIC_POLICY": "REGISTRY_ONLY"})
    assert t.outbound(("10.0.0.2", 80)) is None
    assert t.outbound(("10.0.0.1", 80)).name == "echo"


def test_weighted_round_robin_is_exact_and_interleaved():
    t, _ = table()
    c = t.clusters["echo"]
    picks = [c.pick() for _ in range(50)]
    assert Counter(p[1] for p in picks) == {9000: 40, 9001: 10}
    # smooth: the light endpoint is never picked twice in a row
    assert all(not (a[1] == b[1] == 9001) for a, b in zip(picks, picks[1:]))


def test_slot_blocks_are_stable_across_recompiles():
    t1, slots = table()
    t2, _ = table(CFG.replace("name: db", "name: db2").replace("cluster: db}", "cluster: db2}"), slots=slots)
    assert t1.clusters["echo"].block == t2.clusters["echo"].block
    assert t2.clusters["db2"].block not in {c.block for c in t1.clusters.values()}
    assert min(c.block for c in t1.clusters.values()) >= FIRST_BLOCK * BLOCK


def test_loop_guard():
    t, _ = table()
    out = next(l for l in t.listeners if l.name == "out")
    assert t.would_loop(("10.1.1.1", 15001), False, out)       # reached the capture port directly
    assert not t.would_loop(("10.1.1.1", 80), False, out)       # TPROXY-style: real port
    assert t.would_loop(("127.0.0.1", 18080), True, out)        # NAT target is our own explicit listener
    assert not t.would_loop(("10.1.1.1", 18080), True, out)     # a remote host on the same port is fine
