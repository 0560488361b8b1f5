"""The `lab` fixture for transparent-capture tests (root only): builds the
namespaces, yields a Lab (lab.py), and always tears down: processes are
stopped by pid and both namespaces deleted."""
import pytest

from tests.privileged.lab import Lab
from tests.support.netns import NetnsPair, missing_prerequisites, run


@pytest.fixture
def lab(tmp_path, launched_proxies):
    reason = missing_prerequisites()
    if reason:
        pytest.skip(f"privileged namespace tests skipped: {reason}")
    pair = NetnsPair()
    try:
        pair.create()
        # iptables-nft in a fresh namespace: the nat table must be usable.
        for tool in ("iptables", "ip6tables"):
            out = pair.run_in(pair.a, tool, "-t", "nat", "-S", check=False)
            if out.returncode != 0:
                pytest.skip(f"privileged namespace tests skipped: {tool} nat unusable: {out.stderr.strip()}")
    except RuntimeError as exc:
        pair.destroy()
        pytest.skip(f"privileged namespace tests skipped: cannot build namespaces: {exc}")
    except BaseException:
        pair.destroy()
        raise
    the_lab = Lab(pair, tmp_path, launched_proxies)
    problems: list[str] = []
    try:
        yield the_lab
    finally:
        problems += the_lab.teardown()
        problems += pair.destroy()
        leftover = [ns for ns in run("ip", "netns", "list").stdout.split() if ns in (pair.a, pair.b)]
        if leftover:
            problems.append(f"namespaces left behind: {leftover}")
    if problems:
        pytest.fail("lab teardown:\n" + "\n".join(problems), pytrace=False)
