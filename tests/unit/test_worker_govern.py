"""worker/govern.py's pure parts: what lets a ClusterGov outlive a reload, and
the Cookie field reader for cookie hashing."""
from fastproxy.worker.govern import _cookie, signature
from tests.unit.test_routing_table import CFG, table


def test_a_cluster_unchanged_by_a_reload_keeps_its_signature():
    t1, slots = table()
    t2, _ = table(slots=slots)                                  # the same config again
    assert signature(t1.clusters["echo"]) == signature(t2.clusters["echo"])
    t3, _ = table(CFG.replace("weight: 4", "weight: 5"), slots=slots)
    assert "weight: 4" in CFG
    assert signature(t3.clusters["echo"]) != signature(t1.clusters["echo"])


def test_cookie_values_by_name():
    assert _cookie(b"a=1; session=xyz; b=2", b"session") == b"xyz"
    assert _cookie(b"session=", b"session") == b""
    assert _cookie(b"a=1", b"session") is None
    assert _cookie(None, b"session") is None
    assert _cookie(b"sessionx=1; session", b"session") is None      # no "=": not a cookie pair
