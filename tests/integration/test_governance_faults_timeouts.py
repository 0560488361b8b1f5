"""Issue 5, acceptance 4 and the rest of the timeouts, and fault injection.

Timers are measured at the client (time.monotonic around one request on a
fresh connection) and must fire at the configured time +-50 ms, each case
built so that one timer alone decides. Each is measured more than once:
none may fire early, the quickest must be within the band, and none may be
grossly late (a loaded 2-CPU machine can delay one wake-up of a correct
timer by tens of ms, but not the timer's setting):
- per-try timeout, not retried (retryOn lacks 5xx/gateway-error): 300 ms;
- per-try timeouts, each retried on another host: 3 x 200 ms plus the two
  jittered backoffs (Envoy's: [0, 25] and [0, 75] ms);
- the total `timeout` (500 ms) cutting short per-try retries (200 ms x 6);
- the total timeout with retries off: 400 ms.
Each is 504 with flag UT in the JSON access log.
Also: request_headers_timeout_ms (slowloris: 408, also when the head
trickles in), the route idleTimeout (a stalled body is cut, a slow but
steady one is not), connectTimeout (a loopback blackhole: see
tests/support/blackhole.py) and fault injection (abort -> status + FI,
delay -> added latency, header-matched faults, percentages)."""
import time

import pytest

from tests.support.blackhole import BlackholeListener
from tests.support.governed_proxy import HOST, flags_of, gov_cluster, gov_route, gov_vs, start_governed
from tests.support.http_upstreams import HttpUpstream, Reader, connect, get, read_response
from tests.support.load_clients import LoadClients

TOL = 0.050
LATE = 0.250     # the most any one measurement may overrun the band (scheduling)


def _assert_on_time(what: str, took: list[float], low: float, high: float) -> None:
    shown = ", ".join(f"{t * 1000:.0f}" for t in took)
    band = f"{low * 1000:.0f}..{high * 1000:.0f} ms +-{TOL * 1000:.0f}"
    assert min(took) >= low - TOL, f"{what} fired early: {shown} ms, expected {band}"
    assert min(took) <= high + TOL, f"{what} fired late: {shown} ms, expected {band}"
    assert max(took) <= high + LATE, f"{what} fired far too late once: {shown} ms, expected {band}"


def _timed(port: int, path: str, host: str, **kw):
    t0 = time.monotonic()
    resp = get(port, path, host, timeout=10, **kw)
    return resp, time.monotonic() - t0


def _line_for(gp, host: str, count: int = 1) -> list[dict]:
    return gp.wait_log_lines(count, where=lambda l: l.get("authority") == host)


# -- per-try and total timeouts -------------------------------------------------------------

@pytest.fixture
def hanging_three():
    with HttpUpstream("h1", fail_with="hang") as h1, HttpUpstream("h2", fail_with="hang") as h2, \
            HttpUpstream("h3", fail_with="hang") as h3:
        yield h1, h2, h3


CASES = {
    # host: (route policy, expected seconds (low, high) before tolerance, upstream tries (low, high))
    "pertry.local": ({"retries": {"attempts": 2, "perTryTimeout": "300ms", "retryOn": "reset"}},
                     (0.300, 0.300), (1, 1)),
    "retried.local": ({"retries": {"attempts": 2, "perTryTimeout": "200ms", "retryOn": "5xx"}},
                      (0.600, 0.700), (3, 3)),
    "total.local": ({"timeout": "500ms", "retries": {"attempts": 5, "perTryTimeout": "200ms", "retryOn": "5xx"}},
                    (0.500, 0.500), (2, 3)),
    "alone.local": ({"timeout": "400ms", "retries": {"attempts": 0}}, (0.400, 0.400), (1, 1)),
}


@pytest.mark.parametrize("host", list(CASES))
def test_timeouts_fire_on_time_with_504_ut(start_proxy, tmp_path, hanging_three, host):
    policy, (low, high), (tries_lo, tries_hi) = CASES[host]
    gp = start_governed(start_proxy, tmp_path, [gov_cluster("hang", *hanging_three)],
                        [gov_vs(host, gov_route("hang", **policy))])
    took = []
    for attempt in range(3):
        before = sum(h.snapshot()[1] for h in hanging_three)
        resp, t = _timed(gp.port, f"/t/{attempt}", host)
        took.append(t)
        assert resp is not None and resp.status == 504, resp
        tries = sum(h.snapshot()[1] for h in hanging_three) - before
        assert tries_lo <= tries <= tries_hi, f"{tries} upstream tries, expected {tries_lo}..{tries_hi}"
        if tries_lo == tries_hi == 3:
            # previous_hosts: each try on a different host
            assert [h.snapshot()[1] for h in hanging_three] == [attempt + 1] * 3
    _assert_on_time(f"{host}'s 504", took, low, high)
    lines = _line_for(gp, host, 3)
    assert all(l["response_code"] == 504 and "UT" in flags_of(l) for l in lines), lines


# -- request_headers_timeout_ms (slowloris) --------------------------------------------------

SLOW_HEAD = b"GET /slow HTTP/1.1\r\nHost: svc.local\r\nX-Slow: " + b"s" * 40 + b"\r\n"   # never ends


def _slow_head(port: int, trickle: bool):
    """Sends half of SLOW_HEAD at once, or all of it one byte every 40 ms;
    (response, seconds from the first byte to the response, bytes after it)."""
    with connect("127.0.0.1", port, timeout=5) as s:
        t0 = time.monotonic()
        early = b""
        if trickle:
            s.settimeout(0.04)
            for i in range(len(SLOW_HEAD)):
                try:
                    s.sendall(SLOW_HEAD[i:i + 1])
                    early = s.recv(65536)      # doubles as the 40 ms pause
                except TimeoutError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    pass
                break
            s.settimeout(5)
        else:
            s.sendall(SLOW_HEAD[:len(SLOW_HEAD) // 2])
        reader = Reader(s)
        reader.buf += early
        resp = read_response(reader)
        took = time.monotonic() - t0
        rest = reader.read_to_eof()
    return resp, took, rest


@pytest.mark.parametrize("where", ["listener", "setting"])
def test_slow_request_head_gets_408_after_the_headers_timeout(start_proxy, tmp_path, where):
    with HttpUpstream("up") as up:
        if where == "listener":
            gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)],
                                [gov_vs(HOST, gov_route("backend"))],
                                listener={"request_headers_timeout_ms": 300})
        else:
            gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)],
                                [gov_vs(HOST, gov_route("backend"))], http_request_headers_timeout_ms=300)
        # A whole head in time is served.
        assert get(gp.port, "/fine", HOST).status == 200
        # Half a head, then nothing; and a head trickling in, a byte every 40 ms
        # (bytes keep coming, so only a timer from the first byte stops it).
        for trickle in (False, True):
            what = "408 for a trickled head" if trickle else "408 for half a head"
            took = []
            for _ in range(2):
                resp, t, rest = _slow_head(gp.port, trickle)
                took.append(t)
                assert resp is not None and resp.status == 408, (what, resp)
                assert (resp.header("connection") or "").lower() == "close" and rest == b"", (what, resp.raw_head)
            _assert_on_time(what, took, 0.300, 0.300)
        assert up.snapshot()[1] == 1, "a slow request reached the upstream"


# -- route idleTimeout --------------------------------------------------------------------------

def test_route_idle_timeout_cuts_a_stalled_body_not_a_slow_one(start_proxy, tmp_path):
    with HttpUpstream("up") as up:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)],
                            [gov_vs(HOST, gov_route("backend", idleTimeout="300ms"))])
        # Head + 100 bytes of 1000, then silence: cut ~300 ms after the last byte.
        took = []
        for _ in range(2):
            with connect("127.0.0.1", gp.port, timeout=5) as s:
                s.sendall(b"GET /_/stall?n=1000&sent=100 HTTP/1.1\r\nHost: svc.local\r\n\r\n")
                reader = Reader(s)
                t0 = time.monotonic()
                try:
                    resp = read_response(reader)
                except ConnectionResetError:
                    resp = None
                took.append(time.monotonic() - t0)
            assert resp is not None and resp.status == 200 and not resp.complete, resp
            assert len(resp.body) == 100, len(resp.body)
        _assert_on_time("the idle cut of a stalled body", took, 0.300, 0.300)

        # One byte every 100 ms for 800 ms: never idle for 300 ms, so never cut.
        resp, took = _timed(gp.port, "/_/drip?n=8&every_ms=100", HOST)
        assert resp is not None and resp.status == 200 and resp.complete and resp.body == b"d" * 8, resp
        assert took >= 0.8

        # No response head at all: the idle timer ends the wait too.
        up.fail_with = "hang"
        resp, took = _timed(gp.port, "/hang", HOST)
        _assert_on_time("the idle end of a wait for a response head", [took], 0.300, 0.300)
        assert resp is None or resp.status in (408, 504), resp


# -- connectTimeout --------------------------------------------------------------------------------

@pytest.mark.parametrize("level", ["route", "cluster"])
def test_connect_timeout_fires_on_time(start_proxy, tmp_path, level):
    with BlackholeListener() as hole:
        if level == "route":
            clusters = [gov_cluster("hole", hole.address, connect_timeout_ms=5000)]
            route = gov_route("hole", connectTimeout="200ms", retries={"attempts": 0})
            expected = 0.200
        else:
            clusters = [gov_cluster("hole", hole.address, connect_timeout_ms=300)]
            route = gov_route("hole", retries={"attempts": 0})
            expected = 0.300
        gp = start_governed(start_proxy, tmp_path, clusters, [gov_vs(HOST, route)])
        took = []
        for i in range(2):
            resp, t = _timed(gp.port, f"/x/{i}", HOST)
            took.append(t)
            assert resp is not None and resp.status == 503, resp
        _assert_on_time(f"the {level} connect timeout", took, expected, expected)
        m = gp.metrics()
        assert m.value("fastproxy_cluster_upstream_cx_connect_timeout_total", cluster_name="hole") == 2
        lines = _line_for(gp, HOST, 2)
        assert all("UF" in flags_of(line) for line in lines), lines


def test_the_total_timeout_bounds_connects_and_their_retries(start_proxy, tmp_path):
    """timeout: 400ms over an endpoint whose connects hang (10 s connect
    timeout, connect failures retried): 504 UT at 400 ms, not 503 UF after
    the connect timeouts (Envoy's route timeout covers the connects)."""
    with BlackholeListener() as hole:
        clusters = [gov_cluster("hole", hole.address, connect_timeout_ms=10000)]
        route = gov_route("hole", timeout="400ms", retries={"attempts": 3, "retryOn": "connect-failure"})
        gp = start_governed(start_proxy, tmp_path, clusters, [gov_vs(HOST, route)])
        took = []
        for i in range(2):
            resp, t = _timed(gp.port, f"/c/{i}", HOST)
            took.append(t)
            assert resp is not None and resp.status == 504, resp
        _assert_on_time("the total timeout over a hanging connect", took, 0.400, 0.400)
        lines = _line_for(gp, HOST, 2)
        assert all(flags_of(line) == {"UT"} for line in lines), lines


# -- fault injection ---------------------------------------------------------------------------------

def _fault_vs():
    return [gov_vs("abort.local", gov_route("backend", fault={"abort": {"httpStatus": 418,
                                                                         "percentage": {"value": 100.0}}})),
            gov_vs("delay.local", gov_route("backend", fault={"delay": {"fixedDelay": "200ms",
                                                                         "percentage": {"value": 100.0}}})),
            gov_vs("legacy.local", gov_route("backend", fault={"delay": {"fixedDelay": "100ms", "percent": 100}})),
            gov_vs("half.local", gov_route("backend", fault={"abort": {"httpStatus": 500,
                                                                        "percentage": {"value": 50.0}}})),
            gov_vs("header.local",
                   gov_route("backend", match=[{"headers": {"x-chaos": {"exact": "abort"}}}],
                             fault={"abort": {"httpStatus": 500, "percentage": {"value": 100.0}}}),
                   gov_route("backend")),
            gov_vs("both.local", gov_route("backend", fault={
                "delay": {"fixedDelay": "200ms", "percentage": {"value": 100.0}},
                "abort": {"httpStatus": 503, "percentage": {"value": 100.0}}})),
            gov_vs(HOST, gov_route("backend"))]


def test_fault_abort_and_delay(start_proxy, tmp_path):
    with HttpUpstream("up") as up:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)], _fault_vs())
        base_resp, base = _timed(gp.port, "/base", HOST)
        assert base_resp.status == 200

        for i in range(5):
            resp = get(gp.port, f"/abort/{i}", "abort.local")
            assert resp is not None and resp.status == 418 and resp.header("X-Upstream") is None, resp
        assert up.snapshot()[1] == 1, "an aborted request reached the upstream"
        lines = _line_for(gp, "abort.local", 5)
        assert all(l["response_code"] == 418 and "FI" in flags_of(l) for l in lines), lines

        for host, delay in (("delay.local", 0.200), ("legacy.local", 0.100)):
            took = []
            for i in range(3):
                resp, t = _timed(gp.port, f"/delay/{i}", host)
                took.append(t)
                assert resp is not None and resp.status == 200 and resp.header("X-Upstream") == "up", resp
            # Never less than the delay (2 ms for the event loop's millisecond clock).
            assert min(took) >= delay - 0.002, f"{host}: {took}, delay {delay}"
            _assert_on_time(f"{host}'s delay", took, delay, delay + base)
        lines = _line_for(gp, "delay.local", 3)
        assert all(flags_of(l) & {"DI", "FI"} for l in lines), lines


def test_fault_delay_then_abort_when_both_fire(start_proxy, tmp_path):
    """Envoy's fault filter delays first, then aborts: 503 after 200 ms, DI and FI."""
    with HttpUpstream("up") as up:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)], _fault_vs())
        took = []
        for i in range(2):
            resp, t = _timed(gp.port, f"/both/{i}", "both.local")
            took.append(t)
            assert resp is not None and resp.status == 503 and resp.header("X-Upstream") is None, resp
        assert min(took) >= 0.200 - 0.002, took
        _assert_on_time("the delay before the abort", took, 0.200, 0.200)
        assert up.snapshot()[1] == 0
        lines = _line_for(gp, "both.local", 2)
        assert all(flags_of(l) == {"DI", "FI"} for l in lines), lines


def test_fault_only_for_requests_with_a_header(start_proxy, tmp_path):
    with HttpUpstream("up") as up:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)], _fault_vs())
        for i in range(10):
            hit = get(gp.port, f"/h/{i}", "header.local", headers={"x-chaos": "abort"})
            miss = get(gp.port, f"/h/{i}", "header.local", headers={"x-chaos": "no"})
            assert hit.status == 500 and hit.header("X-Upstream") is None, hit
            assert miss.status == 200 and miss.header("X-Upstream") == "up", miss
        assert up.snapshot()[1] == 10


def test_fault_percentage_aborts_about_that_share(start_proxy, tmp_path):
    with HttpUpstream("up") as up:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)], _fault_vs())
        load = LoadClients(gp.port, 4, total=400, seconds=30, host="half.local").run()
        statuses = load.statuses()
        assert set(statuses) <= {200, 500}, statuses
        # Binomial(400, 0.5): sd 10; 140..260 is 6 sd either way.
        assert 140 <= statuses[500] <= 260, statuses
        assert up.snapshot()[1] == statuses[200], "an aborted request reached the upstream (or a 500 was retried)"


def test_timeout_0s_means_none_even_with_a_proxy_wide_default(start_proxy, tmp_path):
    """http_request_timeout_ms is the default for routes that set no timeout;
    a route's `timeout: 0s` turns it off (Istio: 0s disables the timeout)."""
    with HttpUpstream("up") as up:
        gp = start_governed(start_proxy, tmp_path, [gov_cluster("backend", up)],
                            [gov_vs("none.local", gov_route("backend", timeout="0s", retries={"attempts": 0})),
                             gov_vs(HOST, gov_route("backend", retries={"attempts": 0}))],
                            http_request_timeout_ms=200)
        slow, took = _timed(gp.port, "/_/delay?ms=400", "none.local")
        assert slow is not None and slow.status == 200 and took >= 0.4, (slow, took)
        cut, took = _timed(gp.port, "/_/delay?ms=400", HOST)
        assert cut is not None and cut.status == 504, cut
        _assert_on_time("the proxy-wide default timeout", [took], 0.200, 0.200)
