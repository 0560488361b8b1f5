"""Counter slot layout: one declaration shared by Python and the C HTTP engine."""
import re
from pathlib import Path

import pytest

from fastproxy.stats import names
from fastproxy.stats.names import BLOCK, CLUSTER_METRICS, FIRST_BLOCK, LISTENER_METRICS, SlotRegistry

H1PROXY_H = Path(__file__).resolve().parents[2] / "csrc" / "h1proxy.h"
_DEFINE = re.compile(r"^#define\s+H1_([LC]_[A-Z0-9_]+)\s+(\d+)\b", re.MULTILINE)


def c_offsets() -> dict[str, int]:
    return {name: int(value) for name, value in _DEFINE.findall(H1PROXY_H.read_text())}


def test_c_engine_offsets_equal_the_python_ones():
    offsets = c_offsets()
    assert len(offsets) >= 10, f"no H1_L_*/H1_C_* defines found in {H1PROXY_H}"
    for name, value in offsets.items():
        assert hasattr(names, name), f"H1_{name} in csrc/h1proxy.h has no stats.names.{name}"
        assert getattr(names, name) == value, f"H1_{name} = {value}, stats.names.{name} = {getattr(names, name)}"


def test_c_engine_offsets_fit_in_a_block():
    assert all(0 <= v < BLOCK for v in c_offsets().values())


def test_status_class_offsets_are_consecutive():
    # The engine adds at *_RQ_1XX + (status / 100 - 1).
    assert [names.L_RQ_1XX + i for i in range(5)] == [names.L_RQ_1XX, names.L_RQ_2XX, names.L_RQ_3XX,
                                                     names.L_RQ_4XX, names.L_RQ_5XX]
    assert [names.C_RQ_1XX + i for i in range(5)] == [names.C_RQ_1XX, names.C_RQ_2XX, names.C_RQ_3XX,
                                                     names.C_RQ_4XX, names.C_RQ_5XX]


@pytest.mark.parametrize("prefix, metrics", [("L_", LISTENER_METRICS), ("C_", CLUSTER_METRICS)])
def test_every_slot_is_declared_and_exposed_once(prefix, metrics):
    declared = {v for k, v in vars(names).items() if k.startswith(prefix) and isinstance(v, int)}
    exposed = [off for _, off, _ in metrics]
    assert sorted(exposed) == sorted(declared) == list(range(BLOCK))
    # one series per (name, labels)
    series = [(m.name, tuple(sorted(extra.items()))) for m, _, extra in metrics]
    assert len(series) == len(set(series))


def test_registry_hands_out_whole_blocks():
    reg = SlotRegistry(FIRST_BLOCK * BLOCK + 2 * BLOCK)
    a, b = reg.block("listener", "a"), reg.block("cluster", "a")
    assert (a, b) == (FIRST_BLOCK * BLOCK, (FIRST_BLOCK + 1) * BLOCK)
    assert reg.block("listener", "a") == a
    with pytest.raises(OverflowError):
        reg.block("cluster", "b")


def test_response_flag_bits_equal_the_c_engine_ones():
    defines = dict(re.findall(r"^#define\s+H1_F_([A-Z]+)\s+(0x[0-9a-fA-F]+)", H1PROXY_H.read_text(), re.MULTILINE))
    assert len(defines) == 14, defines
    for letters, value in defines.items():
        assert getattr(names, f"FLAG_{letters}") == int(value, 16), letters
        assert names.response_flags(int(value, 16)) == letters


def test_registry_endpoint_and_bucket_slots():
    reg = SlotRegistry(FIRST_BLOCK * BLOCK + BLOCK, max_endpoints=3, max_rate_limits=2)
    assert [reg.endpoint("a", "10.0.0.1", 80), reg.endpoint("a", "10.0.0.2", 80), reg.endpoint("b", "10.0.0.1", 80)] \
        == [0, 1, 2]
    assert reg.endpoint("a", "10.0.0.2", 80) == 1           # stable per (cluster, ip, port)
    with pytest.raises(OverflowError, match=r"endpoint slots exhausted \(3\); raise settings.max_endpoints"):
        reg.endpoint("a", "10.0.0.1", 81)
    assert (reg.bucket("virtual_services[0]"), reg.bucket("virtual_services[0].http[1]")) == (0, 1)
    assert reg.bucket("virtual_services[0]") == 0
    with pytest.raises(OverflowError, match=r"rate-limit slots exhausted \(2\); raise settings.max_rate_limits"):
        reg.bucket("virtual_services[1]")
    eps = reg.endpoint_slots()
    assert eps == {("a", "10.0.0.1", 80): 0, ("a", "10.0.0.2", 80): 1, ("b", "10.0.0.1", 80): 2}
    eps.clear()   # a copy
    assert len(reg.endpoint_slots()) == 3
    assert reg.bucket_slots() == {"virtual_services[0]": 0, "virtual_services[0].http[1]": 1}


def test_registry_capacities_default_to_the_settings():
    from fastproxy.config.schema import SETTINGS_BY_NAME

    reg = SlotRegistry(1024)
    assert reg.max_endpoints == SETTINGS_BY_NAME["max_endpoints"].default == 4096
    assert reg.max_rate_limits == SETTINGS_BY_NAME["max_rate_limits"].default == 1024
    assert SlotRegistry(1024, 5, 6).max_endpoints == 5
