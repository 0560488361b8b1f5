"""`fastproxy init --run-validation`: exit 0 when redirection works, 126 when it
does not (istio-iptables' contract), checked in a namespace the test creates."""
import pytest

from tests.support.netns import NetnsPair, missing_prerequisites, run
from tests.support.proxy_process import PYTHON

pytestmark = pytest.mark.privileged


@pytest.fixture
def pair():
    why = missing_prerequisites()
    if why:
        pytest.skip(why)
    p = NetnsPair().create()
    try:
        yield p
    finally:
        assert p.destroy() == []


def _init(pair, *flags):
    argv = pair.exec_argv(pair.a, PYTHON, "-m", "fastproxy", "init", "-g", "1337", "--backend", "iptables-nft", *flags)
    return run(*argv, check=False, timeout=60)


def test_validation_passes_when_redirection_works_and_fails_126_when_it_does_not(pair):
    ok = _init(pair, "--run-validation")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # A foreign rule ahead of ours that accepts everything: nothing is redirected any more.
    pair.run_in(pair.a, "iptables-nft", "-t", "nat", "-I", "OUTPUT", "1", "-j", "ACCEPT")
    broken = _init(pair, "--run-validation")
    assert broken.returncode == 126, broken.stdout + broken.stderr
    assert _init(pair, "--cleanup").returncode == 0
