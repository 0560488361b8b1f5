"""Network faults made with iptables inside a test namespace (issue 5: this
kernel has no tc netem): the proxy in namespace a, two HTTP upstreams in
namespace b, and the fault on the proxy's OUTPUT to one of them.

- REJECT --reject-with tcp-reset: every connect to endpoint 1 is refused;
  Istio's default retry policy (connect-failure) sends each of those
  requests to endpoint 2 (previous_hosts): the client sees no error.
- -m statistic --mode random --probability 0.5 -j DROP on the SYNs to
  endpoint 1: about half its connects time out (connect_timeout_ms 200) and
  are retried on endpoint 2; the other half are served by endpoint 1.
"""
import json
import subprocess

import pytest

from tests.privileged.lab import lab_settings
from tests.support.netns import B_V4
from tests.support.polling import poll_until
from tests.support.proxy_config import proxy_config
from tests.support.proxy_process import PYTHON, REPO_ROOT

P1, P2 = 18101, 18102
LISTEN = 18080
REQUESTS = 60

# A client inside namespace a: REQUESTS GETs, each on a new connection (so
# the proxy's worker and endpoint choice vary); prints the statuses.
CLIENT = """
import http.client, json, sys
statuses = []
for i in range(int(sys.argv[2])):
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
    try:
        c.request("GET", f"/n/{i}", headers={"Host": "svc.local", "Connection": "close"})
        r = c.getresponse(); r.read(); statuses.append(r.status)
    except Exception as e:
        statuses.append(repr(e))
    finally:
        c.close()
print(json.dumps(statuses))
"""


def _client(lab) -> list:
    argv = lab.pair.exec_argv(lab.pair.a, PYTHON, "-c", CLIENT, str(LISTEN), str(REQUESTS))
    out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip(), f"client printed nothing: {out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def _start(lab):
    one = lab.start_http_upstream(P1, "one")
    two = lab.start_http_upstream(P2, "two")
    doc = proxy_config(lab_settings(connect_timeout_ms=200),
                       [{"name": "web", "address": f"127.0.0.1:{LISTEN}", "http": {"cluster": "backend"}}],
                       [{"name": "backend", "endpoints": [{"address": f"{B_V4}:{P1}"}, {"address": f"{B_V4}:{P2}"}]}])
    proxy = lab.start_proxy(doc)
    return proxy, one, two


def _metric(proxy, name: str) -> float:
    return proxy.admin.metrics().value_or_zero(name, cluster_name="backend")


@pytest.mark.parametrize("fault", ["reject", "drop-half"])
def test_iptables_faults_are_retried_on_the_other_endpoint(lab, fault):
    proxy, one, two = _start(lab)
    rule = ["-p", "tcp", "-d", B_V4, "--dport", str(P1)]
    if fault == "reject":
        rule += ["-j", "REJECT", "--reject-with", "tcp-reset"]
    else:
        rule += ["--syn", "-m", "statistic", "--mode", "random", "--probability", "0.5", "-j", "DROP"]
    lab.pair.run_in(lab.pair.a, "iptables", "-A", "OUTPUT", *rule)

    statuses = _client(lab)
    assert statuses == [200] * REQUESTS, f"client errors under {fault}: {statuses}"
    served_one, served_two = len(one.records()), len(two.records())
    assert served_one + served_two == REQUESTS, (served_one, served_two)
    fails = poll_until(lambda: _metric(proxy, "fastproxy_cluster_upstream_cx_connect_fail_total") or None,
                       timeout=5, message="connect failures counted")
    retries = _metric(proxy, "fastproxy_cluster_upstream_rq_retry_total")
    if fault == "reject":
        assert served_one == 0, "endpoint 1 served requests through a REJECT"
        assert retries == fails, (retries, fails)
    else:
        # some connects to endpoint 1 got through, some were dropped and timed out
        assert served_one > 0, "no connect to endpoint 1 got through a 50% drop"
        assert _metric(proxy, "fastproxy_cluster_upstream_cx_connect_timeout_total") > 0
    print(f"{fault}: endpoint 1 served {served_one}, endpoint 2 {served_two}; "
          f"{fails:.0f} connect failures, {retries:.0f} retries, 0 client errors")
