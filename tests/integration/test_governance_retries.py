"""Issue 5, acceptance 3: retries are safe and go elsewhere.

- A POST the upstream received (it answered 503, or reset after reading
  it) is not retried: the upstreams see exactly 1 POST and the client gets
  the failure - unless `retries.retryNonIdempotent: true`, when every
  attempt replays the same body bytes.
- A POST that never reached an upstream (connect failure) is retried.
- A GET whose upstream reset is retried on ANOTHER host (previous_hosts):
  with RANDOM balancing over 3 hosts and a single retry, a retry that could
  land on the resetting host again would fail some of 60 requests.
- attempts 0 disables retries; a bare status code in retryOn; and
  circuit_breakers.max_retries refuses retries (counted as retry overflow).
"""
import hashlib
import http.client

import pytest

from tests.support.governed_proxy import (
    HOST, flags_of, gov_cluster, gov_route, gov_vs, metric_name, start_governed)
from tests.support.http_upstreams import HttpUpstream, get
from tests.support.load_clients import LoadClients, describe
from tests.support.polling import poll_until
from tests.support.ports import free_port

BODY = bytes(range(256)) * 40          # 10,240 bytes, well inside the 64 KiB replay buffer
BODY_SHA = hashlib.sha256(BODY).hexdigest()
RETRY_ALL = {"attempts": 2, "retryOn": "5xx,gateway-error,reset,503"}


def _posts(*ups) -> list[dict]:
    return [r for up in ups for r in up.records if r["method"] == "POST"]


@pytest.mark.parametrize("path", ["/_/status?code=503", "/_/reset-before-response"], ids=["503", "reset"])
def test_post_the_upstream_received_is_not_retried(start_proxy, tmp_path, path):
    with HttpUpstream("a") as a, HttpUpstream("b") as b:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", a, b)],
                            [gov_vs(HOST, gov_route("backend", retries=RETRY_ALL))])
        resp = get(gp.port, path, HOST, method="POST", body=BODY)
        assert resp is not None and resp.status == 503, resp
        posts = _posts(a, b)
        assert len(posts) == 1, f"the upstreams saw {len(posts)} POSTs: {[p['server'] for p in posts]}"
        assert posts[0]["body_sha256"] == BODY_SHA and posts[0]["body_len"] == len(BODY)
        # A GET on the same path is retried (idempotent): 1 + 2 attempts.
        resp = get(gp.port, path, HOST)
        assert resp is not None and resp.status == 503
        gets = [r for up in (a, b) for r in up.records if r["method"] == "GET"]
        assert len(gets) == 3, f"the idempotent GET was tried {len(gets)} times, expected 1 + 2 retries"
        poll_until(lambda: gp.metric("GV_RQ_RETRY", cluster_name="backend") == 2, timeout=5,
                   message="upstream_rq_retry == 2 (the GET's retries only)")
        lines = gp.wait_log_lines(2)
        if "reset" in path:
            assert "UC" in flags_of(lines[0]), lines[0]


def test_post_reset_on_a_pooled_connection_is_not_sent_again(start_proxy, tmp_path):
    """The same on a pooled (kept-alive) upstream connection: the upstream read
    the POST and reset. Neither a retry nor the keep-alive race replay
    (issue 3, meant for a pooled connection the upstream closed before the
    request reached it) may send it again: the upstream saw it."""
    with HttpUpstream("a") as a:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", a)],
                            [gov_vs(HOST, gov_route("backend", retries=RETRY_ALL))], workers=1)
        conn = http.client.HTTPConnection("127.0.0.1", gp.port, timeout=10)
        try:
            conn.request("GET", "/warm", headers={"Host": HOST})     # pools an upstream connection
            warm = conn.getresponse()
            warm.read()
            assert warm.status == 200
            conn.request("POST", "/_/reset-before-response", body=BODY, headers={"Host": HOST})
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        assert resp.status == 503
        posts = _posts(a)
        assert len(posts) == 1, (f"the upstream saw the POST it reset {len(posts)} times (on conns "
                                 f"{[p['conn'] for p in posts]}, the first a pooled one)")


@pytest.mark.parametrize("path", ["/_/status?code=503", "/_/reset-before-response"], ids=["503", "reset"])
def test_post_is_retried_with_retry_non_idempotent(start_proxy, tmp_path, path):
    with HttpUpstream("a") as a, HttpUpstream("b") as b:
        retries = {**RETRY_ALL, "retryNonIdempotent": True}
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", a, b)],
                            [gov_vs(HOST, gov_route("backend", retries=retries))])
        resp = get(gp.port, path, HOST, method="POST", body=BODY)
        assert resp is not None and resp.status == 503, resp
        posts = _posts(a, b)
        assert len(posts) == 3, f"{len(posts)} POSTs; expected the first try and 2 retries"
        # The body was replayed byte for byte on every attempt.
        assert all(p["body_sha256"] == BODY_SHA and p["body_len"] == len(BODY) for p in posts), \
            [(p["server"], p["body_len"]) for p in posts]
        assert {p["server"] for p in posts} == {"a", "b"}, "the retries did not move to the other host"
        poll_until(lambda: gp.metric("GV_RQ_RETRY", cluster_name="backend") == 2, timeout=5,
                   message="upstream_rq_retry == 2")


def test_post_that_never_reached_an_upstream_is_retried(start_proxy, tmp_path):
    """Connect failures are safe to retry for any method (Istio's default
    policy has connect-failure): every POST gets 200 and the live endpoint
    saw each body exactly once."""
    dead = f"127.0.0.1:{free_port()}"
    with HttpUpstream("live") as live:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", dead, live)],
                            [gov_vs(HOST, gov_route("backend"))])
        sent = []
        for i in range(20):
            body = b"post-%d-" % i + BODY
            sent.append(hashlib.sha256(body).hexdigest())
            resp = get(gp.port, f"/post/{i}", HOST, method="POST", body=body)
            assert resp is not None and resp.status == 200, (i, resp)
            assert resp.json()["body_sha256"] == sent[-1]
        got = [r["body_sha256"] for r in _posts(live)]
        assert got == sent, "a POST was lost or duplicated"
        m = gp.metrics()
        assert m.value("fastproxy_cluster_upstream_cx_connect_fail_total", cluster_name="backend") >= 5
        assert m.value(metric_name("GV_RQ_RETRY"), cluster_name="backend") >= 5


def test_get_reset_is_retried_on_another_host(start_proxy, tmp_path):
    with HttpUpstream("bad", fail_with="reset") as bad, HttpUpstream("b") as b, HttpUpstream("c") as c:
        gp = start_governed(start_proxy, tmp_path,
                            [gov_cluster("backend", bad, b, c, lb_policy="RANDOM")],
                            [gov_vs(HOST, gov_route("backend", retries={"attempts": 1, "retryOn": "reset"}))])
        load = LoadClients(gp.port, 4, total=60, seconds=30).run()
        assert not load.failures(), describe(load.failures())
        answered = load.upstreams()
        assert set(answered) <= {"b", "c"} and sum(answered.values()) == 60, answered
        assert b.snapshot()[1] + c.snapshot()[1] == 60
        tried_bad = bad.snapshot()[1]
        assert tried_bad >= 5, f"RANDOM sent only {tried_bad} of 60 first tries to the bad host"
        poll_until(lambda: gp.metric("GV_RQ_RETRY", cluster_name="backend") == tried_bad, timeout=5,
                   message=f"upstream_rq_retry == {tried_bad}: each reset retried once, elsewhere")


def test_attempts_0_disables_retries(start_proxy, tmp_path):
    with HttpUpstream("bad", fail_with=503) as bad, HttpUpstream("good") as good:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", bad, good)],
                            [gov_vs(HOST, gov_route("backend", retries={"attempts": 0}))])
        load = LoadClients(gp.port, 2, total=40, seconds=30).run()
        statuses = load.statuses()
        assert set(statuses) == {200, 503}, statuses
        assert bad.snapshot()[1] + good.snapshot()[1] == 40, "a request was retried"
        assert statuses[503] == bad.snapshot()[1]
        assert gp.metric_or_zero("GV_RQ_RETRY", cluster_name="backend") == 0


def test_bare_status_code_in_retry_on(start_proxy, tmp_path):
    """retryOn "418": retriable-status-codes with 418 added."""
    with HttpUpstream("bad", fail_with=418) as bad, HttpUpstream("good") as good:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", bad, good)],
                            [gov_vs(HOST, gov_route("backend", retries={"attempts": 1, "retryOn": "418"}))])
        load = LoadClients(gp.port, 2, total=40, seconds=30).run()
        assert not load.failures(), describe(load.failures())
        assert good.snapshot()[1] == 40 and bad.snapshot()[1] >= 5


def test_max_retries_0_refuses_retries_and_counts_them(start_proxy, tmp_path):
    with HttpUpstream("bad", fail_with=503) as bad, HttpUpstream("good") as good:
        gp = start_governed(start_proxy, tmp_path,
                            [gov_cluster("backend", bad, good, circuit_breakers={"max_retries": 0})],
                            [gov_vs(HOST, gov_route("backend"))])      # Istio's default: retry 503
        load = LoadClients(gp.port, 2, total=40, seconds=30).run()
        statuses = load.statuses()
        assert set(statuses) <= {200, 503} and statuses[503] == bad.snapshot()[1] >= 5, statuses
        assert good.snapshot()[1] == statuses[200]
        poll_until(lambda: gp.metric("GV_RQ_RETRY_OVERFLOW", cluster_name="backend") == statuses[503],
                   timeout=5, message=f"upstream_rq_retry_overflow == {statuses[503]}")
        assert gp.metric_or_zero("GV_RQ_RETRY", cluster_name="backend") == 0


def test_no_retry_once_the_response_started(start_proxy, tmp_path):
    """The upstream closes mid-body: the head and 5,000 bytes already went
    to the client, so nothing can be retried; the client sees the cut."""
    with HttpUpstream("a") as a, HttpUpstream("b") as b:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", a, b)],
                            [gov_vs(HOST, gov_route("backend", retries=RETRY_ALL))])
        resp = get(gp.port, "/_/truncate?n=100000&sent=5000", HOST)
        assert resp is None or (resp.status == 200 and not resp.complete and len(resp.body) <= 5000), resp
        assert a.snapshot()[1] + b.snapshot()[1] == 1, "a response already under way was retried"
        assert gp.metric_or_zero("GV_RQ_RETRY", cluster_name="backend") == 0


def test_body_over_the_replay_buffer_is_not_replayed(start_proxy, tmp_path):
    """retryNonIdempotent, but a 256 KiB body cannot be kept for a replay
    (the bounded buffer is 64 KiB by default): one POST, the client gets the 503."""
    big = bytes(range(256)) * 1024
    with HttpUpstream("a", fail_with=503) as a, HttpUpstream("b", fail_with=503) as b:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", a, b)],
                            [gov_vs(HOST, gov_route("backend", retries={**RETRY_ALL, "retryNonIdempotent": True}))])
        resp = get(gp.port, "/big", HOST, method="POST", body=big)
        assert resp is not None and resp.status == 503, resp
        posts = _posts(a, b)
        assert len(posts) == 1 and posts[0]["body_len"] == len(big), [(p["server"], p["body_len"]) for p in posts]
        # while a small body is replayed
        resp = get(gp.port, "/small", HOST, method="POST", body=BODY)
        assert resp is not None and resp.status == 503
        assert len(_posts(a, b)) == 1 + 3
