"""The publisher's segments: the governance segment is created, named and
removed with the other two, and a governance slot is zeroed before the first
table naming it is published, never after (its state survives reloads)."""
import subprocess
import sys
from pathlib import Path

from fastproxy.config.load import load
from fastproxy.manager.publisher import Publisher, remove_stale_segments, segment_names

SHM = Path("/dev/shm")


def _config(*addresses):
    return load({"settings": {"workers": 1, "max_endpoints": 8, "max_rate_limits": 4},
                 "clusters": [{"name": "web", "endpoints": [{"address": a} for a in addresses]}]}, {})


def test_segment_names():
    assert segment_names(42) == ("/fastproxy-42-table", "/fastproxy-42-counters", "/fastproxy-42-govern")


def test_stale_governance_segment_is_removed():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    stale = SHM / f"fastproxy-{pid}-govern"
    stale.write_bytes(b"")
    try:
        assert f"fastproxy-{pid}-govern" in remove_stale_segments()
        assert not stale.exists()
    finally:
        stale.unlink(missing_ok=True)


def test_new_slots_are_zeroed_once_before_publishing():
    p = Publisher(_config("10.0.0.1:80").settings)
    try:
        names = [n.lstrip("/") for n in (p.table_name, p.counters_name, p.govern_name)]
        assert all((SHM / n).exists() for n in names)
        seg = p.govern
        assert seg.nendpoint == 8 and seg.nbucket == 4 and seg.ncluster == p.slots.nslots // 16
        # state an earlier owner could have left in slots 0 and 1
        seg.set_health(0, 0, False)
        seg.set_health(0, 1, False)
        p.publish(p.compile(_config("10.0.0.1:80")))
        ep0 = p.doc["clusters"]["web"]["endpoints"][0][3]
        assert ep0 == 0 and seg.endpoint_stats(0)["hc_failed"] == 0
        assert seg.endpoint_stats(1)["hc_failed"] == 1      # not handed out yet: left alone
        # a slot in use keeps its state across a reload; a new one starts from zero
        seg.set_health(0, 0, False)
        p.publish(p.compile(_config("10.0.0.1:80", "10.0.0.2:80")))
        assert seg.endpoint_stats(0)["hc_failed"] == 1
        assert p.doc["clusters"]["web"]["endpoints"][1][3] == 1 and seg.endpoint_stats(1)["hc_failed"] == 0
    finally:
        p.close()
    assert not any((SHM / n).exists() for n in names)


def test_running_out_of_endpoint_slots_names_the_setting():
    p = Publisher(_config("10.0.0.1:80").settings)
    try:
        many = _config(*(f"10.0.0.{i}:80" for i in range(1, 10)))
        try:
            p.compile(many)
        except ValueError as e:
            assert str(e).startswith("settings.max_endpoints: ")
        else:
            raise AssertionError("9 endpoints fit in 8 slots")
    finally:
        p.close()
