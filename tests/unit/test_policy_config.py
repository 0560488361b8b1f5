"""Traffic-governance config (fastproxy/policy/*, and where config/load.py and
routing/http.py use it): every parser's good documents and defaults, then a
table of bad ones per parser with the exact field path and message."""
import re
from pathlib import Path

import pytest

from fastproxy.config.load import load_text
from fastproxy.config.schema import ConfigError, HashPolicy
from fastproxy.policy import breakers, retry
from fastproxy.policy.breakers import UNLIMITED, Breakers, parse_breakers
from fastproxy.policy.duration import parse_duration_ms
from fastproxy.policy.fault import Fault, parse_fault
from fastproxy.policy.health import HealthCheck, HealthState, parse_health_checks
from fastproxy.policy.outlier import OutlierDetection, parse_outlier
from fastproxy.policy.ratelimit import TokenBucket, parse_token_bucket
from fastproxy.policy.retry import ISTIO_DEFAULT, RetryPolicy, parse_retries, parse_retry_on
from fastproxy.routing.http import DIRECT_RESPONSE, REDIRECT, compile_virtual_services

GOVERN_H = Path(__file__).resolve().parents[2] / "csrc" / "govern.h"
W = "x"   # the `where` every direct parser call gets


def error(fn, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    return e.value.path, e.value.message


# ---- the C contract ----------------------------------------------------------------

def _defines() -> dict[str, int]:
    return {k: int(v, 0) for k, v in re.findall(r"^#define\s+(GV_\w+)\s+(0x[0-9a-fA-F]+|\d+)",
                                                  GOVERN_H.read_text(), re.MULTILINE)}


def test_retry_bits_equal_govern_h():
    d = _defines()
    names = [n for n in vars(retry) if n.startswith("RETRY_") and n != "RETRY_ON"]
    assert len(names) == 7
    for n in names:
        assert getattr(retry, n) == d[f"GV_{n}"], n
    assert retry.MAX_RETRIABLE_CODES == d["GV_MAX_RETRIABLE_CODES"]
    assert breakers.UNLIMITED == d["GV_UNLIMITED"]


# ---- durations ---------------------------------------------------------------------

@pytest.mark.parametrize("text, ms", [
    ("1.5s", 1500), ("250ms", 250), ("1m", 60_000), ("1h", 3_600_000), ("100us", 1), ("100µs", 1),
    ("1ns", 1), ("1500000ns", 2), ("1m30s", 90_000), ("2h45m", 9_900_000), (".5s", 500), ("1.s", 1000),
    ("0.001s", 1), ("0.0011s", 2), (" 3s ", 3000), ("4294967295ms", 4294967295),
])
def test_durations(text, ms):
    assert parse_duration_ms(text, W) == ms


def test_zero_only_where_allowed():
    assert parse_duration_ms("0s", W, allow_zero=True) == 0
    assert parse_duration_ms("0", W, allow_zero=True) == 0
    assert error(parse_duration_ms, "0s", W) == (W, "must be more than 0, got '0s'")
    assert error(parse_duration_ms, "0ms", W) == (W, "must be more than 0, got '0ms'")


BAD_UNITS = 'expected a duration such as "1.5s" or "250ms" (units h, m, s, ms, us, ns), got '


@pytest.mark.parametrize("value, message", [
    (5, 'expected a duration such as "1.5s" or "250ms", got 5'),
    (1.5, 'expected a duration such as "1.5s" or "250ms", got 1.5'),
    (None, 'expected a duration such as "1.5s" or "250ms", got None'),
    ("5", BAD_UNITS + "'5'"),
    ("", BAD_UNITS + "''"),
    ("s", BAD_UNITS + "'s'"),
    ("-1s", BAD_UNITS + "'-1s'"),
    ("1 s", BAD_UNITS + "'1 s'"),
    ("1d", BAD_UNITS + "'1d'"),
    ("1s2", BAD_UNITS + "'1s2'"),
    ("1e3ms", BAD_UNITS + "'1e3ms'"),
    ("4294967296ms", "must be at most 4294967295ms, got '4294967296ms'"),
])
def test_bad_durations(value, message):
    assert error(parse_duration_ms, value, W) == (W, message)


# ---- retries -----------------------------------------------------------------------

def test_istio_default_retry_policy():
    assert ISTIO_DEFAULT == RetryPolicy(num_retries=2, retry_on=retry.RETRY_CONNECT_FAILURE
                                        | retry.RETRY_REFUSED_STREAM | retry.RETRY_STATUS_CODES,
                                        per_try_timeout_ms=0, codes=(503,), non_idempotent=False,
                                        backoff_base_ms=25, backoff_max_ms=250)
    # Istio's own retryOn string means exactly that
    assert parse_retry_on("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503",
                          W) == (ISTIO_DEFAULT.retry_on, (503,))


def test_retries_full():
    p = parse_retries({"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx, gateway-error,reset,503,429,503",
                       "backoff": "10ms", "retryRemoteLocalities": True, "retryNonIdempotent": True}, W)
    assert p == RetryPolicy(num_retries=3, per_try_timeout_ms=500, non_idempotent=True, codes=(503, 429),
                            retry_on=retry.RETRY_5XX | retry.RETRY_GATEWAY_ERROR | retry.RETRY_RESET
                            | retry.RETRY_STATUS_CODES, backoff_base_ms=10, backoff_max_ms=100)


def test_retries_keep_the_default_conditions_unless_retry_on_is_given():
    p = parse_retries({"attempts": 5}, W)
    assert (p.num_retries, p.retry_on, p.codes, p.per_try_timeout_ms) == (5, ISTIO_DEFAULT.retry_on, (503,), 0)
    assert (p.backoff_base_ms, p.backoff_max_ms, p.non_idempotent) == (25, 250, False)
    # retryOn replaces conditions and codes: no 503 unless named
    p = parse_retries({"attempts": 1, "retryOn": "connect-failure"}, W)
    assert (p.retry_on, p.codes) == (retry.RETRY_CONNECT_FAILURE, ())
    # a code alone turns retriable-status-codes on; gRPC conditions do nothing
    assert parse_retry_on("502", W) == (retry.RETRY_STATUS_CODES, (502,))
    assert parse_retry_on("cancelled,deadline-exceeded,internal,resource-exhausted,unavailable", W) == (0, ())
    assert parse_retry_on("retriable-4xx,refused-stream", W) == (
        retry.RETRY_RETRIABLE_4XX | retry.RETRY_REFUSED_STREAM, ())
    assert parse_retry_on("retriable-status-codes", W) == (retry.RETRY_STATUS_CODES, ())


def test_attempts_zero_disables_retries():
    assert parse_retries({"attempts": 0}, W) is None
    assert parse_retries({"attempts": 0, "retryOn": "5xx", "perTryTimeout": "1s"}, W) is None


@pytest.mark.parametrize("doc, path, message", [
    ([], W, "expected a mapping, got list"),
    ({"attempts": 1, "retryBudget": 1}, f"{W}.retryBudget",
     "unknown field (expected one of: attempts, backoff, perTryTimeout, retryNonIdempotent, retryOn, "
     "retryRemoteLocalities)"),
    ({"attempts": 1, "retryIgnorePreviousHosts": True}, f"{W}.retryIgnorePreviousHosts", "not supported yet"),
    ({}, f"{W}.attempts", "required field is missing (write attempts: 0 to disable retries)"),
    ({"retryOn": "5xx"}, f"{W}.attempts", "required field is missing (write attempts: 0 to disable retries)"),
    ({"attempts": -1}, f"{W}.attempts", "must be between 0 and 2147483647, got -1"),
    ({"attempts": "3"}, f"{W}.attempts", "expected an integer, got '3'"),
    ({"attempts": True}, f"{W}.attempts", "expected an integer, got True"),
    ({"attempts": 1, "perTryTimeout": "0s"}, f"{W}.perTryTimeout", "must be more than 0, got '0s'"),
    ({"attempts": 1, "perTryTimeout": 2}, f"{W}.perTryTimeout", 'expected a duration such as "1.5s" or "250ms", got 2'),
    ({"attempts": 1, "backoff": "0ms"}, f"{W}.backoff", "must be more than 0, got '0ms'"),
    ({"attempts": 1, "retryOn": ""}, f"{W}.retryOn", "expected a comma-separated list of retry conditions, got ''"),
    ({"attempts": 1, "retryOn": ["5xx"]}, f"{W}.retryOn",
     "expected a comma-separated list of retry conditions, got ['5xx']"),
    ({"attempts": 1, "retryOn": "5xx,,reset"}, f"{W}.retryOn", "empty item in '5xx,,reset'"),
    ({"attempts": 1, "retryOn": "5xx,600"}, f"{W}.retryOn", "status code 600 is not in 100..599"),
    ({"attempts": 1, "retryOn": "99"}, f"{W}.retryOn", "status code 99 is not in 100..599"),
    ({"attempts": 1, "retryOn": "5XX"}, f"{W}.retryOn",
     "unknown retry condition '5XX' (expected status codes or: 5xx, gateway-error, reset, connect-failure, "
     "refused-stream, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, internal, "
     "resource-exhausted, unavailable)"),
    ({"attempts": 1, "retryOn": "retriable-headers"}, f"{W}.retryOn", "'retriable-headers' is not supported yet"),
    ({"attempts": 1, "retryOn": "reset-before-request"}, f"{W}.retryOn",
     "'reset-before-request' is not supported yet"),
    ({"attempts": 1, "retryOn": "500,501,502,503,504,505,506,507,508"}, f"{W}.retryOn",
     "at most 8 status codes, got 9"),
    ({"attempts": 1, "retryNonIdempotent": "yes"}, f"{W}.retryNonIdempotent", "expected true or false, got 'yes'"),
    ({"attempts": 1, "retryRemoteLocalities": 1}, f"{W}.retryRemoteLocalities", "expected true or false, got 1"),
])
def test_bad_retries(doc, path, message):
    assert error(parse_retries, doc, W) == (path, message)


# ---- fault -------------------------------------------------------------------------

def test_fault_parsing():
    f = parse_fault({"delay": {"fixedDelay": "1.5s", "percentage": {"value": 12.5}},
                     "abort": {"httpStatus": 503, "percentage": {"value": 100}}}, W)
    assert f == Fault(delay_ms=1500, delay_percent=12.5, abort_status=503, abort_percent=100.0)
    assert parse_fault({"delay": {"fixedDelay": "5s", "percent": 30}}, W) == Fault(5000, 30.0, 0, 0.0)
    assert parse_fault({"abort": {"httpStatus": 418, "percent": 7}}, W) == Fault(0, 0.0, 418, 7.0)
    # Istio: no percentage given means it never fires
    assert parse_fault({"abort": {"httpStatus": 500}}, W) == Fault(0, 0.0, 500, 0.0)
    assert parse_fault({"delay": {"fixedDelay": "1s"}, "abort": None}, W) == Fault(1000, 0.0, 0, 0.0)


def test_fault_draws():
    f = Fault(delay_ms=200, delay_percent=10.0, abort_status=503, abort_percent=50.0)
    assert f.draw(0.0, 0.0) == (200, 503)
    assert f.draw(0.0999, 0.4999) == (200, 503)
    assert f.draw(0.1, 0.5) == (0, 0)
    assert f.draw(0.05, 0.9) == (200, 0)
    assert f.draw(0.5, 0.1) == (0, 503)
    always, never = Fault(100, 100.0, 500, 100.0), Fault(100, 0.0, 500, 0.0)
    assert always.draw(0.999999, 0.999999) == (100, 500)
    assert never.draw(0.0, 0.0) == (0, 0)
    assert Fault(0, 100.0, 0, 100.0).draw(0.0, 0.0) == (0, 0)
    # uniform draws fire in proportion to the percent
    n = 10_000
    hits = sum(1 for i in range(n) if f.draw(i / n, i / n)[0])
    assert hits == 1000


@pytest.mark.parametrize("doc, path, message", [
    ("503", W, "expected a mapping, got str"),
    ({}, W, "delay or abort is required"),
    ({"delay": None, "abort": None}, W, "delay or abort is required"),
    ({"delay": {"fixedDelay": "1s"}, "reset": {}}, f"{W}.reset", "unknown field (expected one of: abort, delay)"),
    ({"delay": {}}, f"{W}.delay.fixedDelay", "required field is missing"),
    ({"delay": []}, f"{W}.delay", "expected a mapping, got list"),
    ({"delay": {"fixedDelay": "0s"}}, f"{W}.delay.fixedDelay", "must be more than 0, got '0s'"),
    ({"delay": {"fixedDelay": "1s", "percentage": {"value": 101}}}, f"{W}.delay.percentage.value",
     "must be between 0 and 100, got 101"),
    ({"delay": {"fixedDelay": "1s", "percentage": {"value": -0.5}}}, f"{W}.delay.percentage.value",
     "must be between 0 and 100, got -0.5"),
    ({"delay": {"fixedDelay": "1s", "percentage": {"value": "5"}}}, f"{W}.delay.percentage.value",
     "expected a number, got '5'"),
    ({"delay": {"fixedDelay": "1s", "percentage": {}}}, f"{W}.delay.percentage.value", "required field is missing"),
    ({"delay": {"fixedDelay": "1s", "percentage": 5}}, f"{W}.delay.percentage", "expected a mapping, got int"),
    ({"delay": {"fixedDelay": "1s", "percentage": {"value": 5, "denominator": 100}}},
     f"{W}.delay.percentage.denominator", "unknown field (expected one of: value)"),
    ({"delay": {"fixedDelay": "1s", "percentage": {"value": 5}, "percent": 5}}, f"{W}.delay.percent",
     "give percentage or the deprecated percent, not both"),
    ({"delay": {"fixedDelay": "1s", "percent": 5.5}}, f"{W}.delay.percent", "expected an integer, got 5.5"),
    ({"delay": {"fixedDelay": "1s", "percent": 101}}, f"{W}.delay.percent", "must be between 0 and 100, got 101"),
    ({"delay": {"exponentialDelay": "1s"}}, f"{W}.delay.exponentialDelay", "not supported (use fixedDelay)"),
    ({"delay": {"fixedDelay": "1s", "jitter": 1}}, f"{W}.delay.jitter",
     "unknown field (expected one of: fixedDelay, percent, percentage)"),
    ({"abort": {}}, f"{W}.abort.httpStatus", "required field is missing"),
    ({"abort": {"httpStatus": 199}}, f"{W}.abort.httpStatus", "must be between 200 and 599, got 199"),
    ({"abort": {"httpStatus": 600}}, f"{W}.abort.httpStatus", "must be between 200 and 599, got 600"),
    ({"abort": {"httpStatus": "503"}}, f"{W}.abort.httpStatus", "expected an integer, got '503'"),
    ({"abort": {"grpcStatus": "UNAVAILABLE"}}, f"{W}.abort.grpcStatus", "not supported (use httpStatus)"),
    ({"abort": {"http2Error": "REFUSED"}}, f"{W}.abort.http2Error", "not supported (use httpStatus)"),
    ({"abort": {"httpStatus": 503, "percentage": {"value": 200}}}, f"{W}.abort.percentage.value",
     "must be between 0 and 100, got 200"),
])
def test_bad_faults(doc, path, message):
    assert error(parse_fault, doc, W) == (path, message)


# ---- local rate limit --------------------------------------------------------------

def test_token_buckets():
    assert parse_token_bucket({"maxTokens": 100, "tokensPerFill": 10, "fillInterval": "1s"}, W) == \
        TokenBucket(100, 10, 1000)
    assert parse_token_bucket({"maxTokens": 5, "fillInterval": "250ms"}, W) == TokenBucket(5, 1, 250)
    assert parse_token_bucket({"maxTokens": 16777215, "tokensPerFill": 16777215, "fillInterval": "1ms"}, W) == \
        TokenBucket(16777215, 16777215, 1)


@pytest.mark.parametrize("doc, path, message", [
    (100, W, "expected a mapping, got int"),
    ({"fillInterval": "1s"}, f"{W}.maxTokens", "required field is missing"),
    ({"maxTokens": 0, "fillInterval": "1s"}, f"{W}.maxTokens", "must be between 1 and 16777215, got 0"),
    ({"maxTokens": 16777216, "fillInterval": "1s"}, f"{W}.maxTokens", "must be between 1 and 16777215, got 16777216"),
    ({"maxTokens": 1.5, "fillInterval": "1s"}, f"{W}.maxTokens", "expected an integer, got 1.5"),
    ({"maxTokens": 1, "tokensPerFill": 0, "fillInterval": "1s"}, f"{W}.tokensPerFill",
     "must be between 1 and 16777215, got 0"),
    ({"maxTokens": 1}, f"{W}.fillInterval", "required field is missing"),
    ({"maxTokens": 1, "fillInterval": "0s"}, f"{W}.fillInterval", "must be more than 0, got '0s'"),
    ({"maxTokens": 1, "fillInterval": 1000}, f"{W}.fillInterval",
     'expected a duration such as "1.5s" or "250ms", got 1000'),
    ({"maxTokens": 1, "fillInterval": "1s", "max_tokens": 1}, f"{W}.max_tokens",
     "unknown field (expected one of: fillInterval, maxTokens, tokensPerFill)"),
])
def test_bad_token_buckets(doc, path, message):
    assert error(parse_token_bucket, doc, W) == (path, message)


# ---- circuit breakers --------------------------------------------------------------

def test_breakers_defaults_are_istios():
    assert breakers.ISTIO_DEFAULT == Breakers(UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED, 0.0, 3)
    assert UNLIMITED == 2**32 - 1
    assert parse_breakers(None, W) is breakers.ISTIO_DEFAULT
    assert parse_breakers({}, W) == breakers.ISTIO_DEFAULT


def test_breakers_parsing():
    b = parse_breakers({"max_connections": 10, "max_pending_requests": 0, "max_requests": 100, "max_retries": 3,
                        "retry_budget": {"budget_percent": 12.5, "min_retry_concurrency": 1}}, W)
    assert b == Breakers(10, 0, 100, 3, 12.5, 1)
    # Envoy's budget defaults: 20%, 3
    assert parse_breakers({"retry_budget": {}}, W) == Breakers(UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED, 20.0, 3)
    assert parse_breakers({"retry_budget": {"budget_percent": 100}}, W).budget_percent == 100.0
    assert parse_breakers({"max_requests": UNLIMITED}, W).max_requests == UNLIMITED
    assert Breakers.from_doc(b.to_doc()) == b
    assert b.to_doc() == {"max_connections": 10, "max_pending_requests": 0, "max_requests": 100, "max_retries": 3,
                          "budget_percent": 12.5, "min_retry_concurrency": 1}


@pytest.mark.parametrize("doc, path, message", [
    ([], W, "expected a mapping, got list"),
    ({"max_connections": -1}, f"{W}.max_connections", "must be between 0 and 4294967295, got -1"),
    ({"max_pending_requests": 2**32}, f"{W}.max_pending_requests", "must be between 0 and 4294967295, got 4294967296"),
    ({"max_requests": "10"}, f"{W}.max_requests", "expected an integer, got '10'"),
    ({"max_retries": 1.0}, f"{W}.max_retries", "expected an integer, got 1.0"),
    ({"thresholds": []}, f"{W}.thresholds",
     "unknown field (expected one of: max_connections, max_pending_requests, max_requests, max_retries, "
     "retry_budget)"),
    ({"retry_budget": 20}, f"{W}.retry_budget", "expected a mapping, got int"),
    ({"retry_budget": {"budget_percent": 0}}, f"{W}.retry_budget.budget_percent",
     "must be more than 0 (leave retry_budget out for no budget)"),
    ({"retry_budget": {"budget_percent": 100.5}}, f"{W}.retry_budget.budget_percent",
     "must be between 0 and 100, got 100.5"),
    ({"retry_budget": {"budget_percent": {"value": 20}}}, f"{W}.retry_budget.budget_percent",
     "expected a number, got {'value': 20}"),
    ({"retry_budget": {"min_retry_concurrency": -1}}, f"{W}.retry_budget.min_retry_concurrency",
     "must be between 0 and 4294967295, got -1"),
    ({"retry_budget": {"percent": 20}}, f"{W}.retry_budget.percent",
     "unknown field (expected one of: budget_percent, min_retry_concurrency)"),
])
def test_bad_breakers(doc, path, message):
    assert error(parse_breakers, doc, W) == (path, message)


# ---- outlier detection -------------------------------------------------------------

def test_outlier_defaults_are_envoys():
    d = parse_outlier({}, W)
    assert d == OutlierDetection(5, 5, 10_000, 30_000, 300_000, 10) == OutlierDetection()
    assert OutlierDetection.from_doc(d.to_doc()) == d
    assert d.to_doc() == {"consecutive_5xx": 5, "consecutive_gateway_failure": 5, "interval_ms": 10000,
                          "base_ejection_time_ms": 30000, "max_ejection_time_ms": 300000, "max_ejection_percent": 10}


def test_outlier_parsing():
    d = parse_outlier({"consecutive_5xx": 0, "consecutive_gateway_failure": 3, "interval_ms": 100,
                       "base_ejection_time_ms": 200, "max_ejection_time_ms": 200, "max_ejection_percent": 100}, W)
    assert d == OutlierDetection(0, 3, 100, 200, 200, 100)
    # Envoy: an unset max is the larger of 300 s and the base
    assert parse_outlier({"base_ejection_time_ms": 400_000}, W).max_ejection_time_ms == 400_000
    assert parse_outlier({"base_ejection_time_ms": 1000}, W).max_ejection_time_ms == 300_000


@pytest.mark.parametrize("doc, path, message", [
    (True, W, "expected a mapping, got bool"),
    ({"consecutive_5xx": -1}, f"{W}.consecutive_5xx", "must be between 0 and 4294967295, got -1"),
    ({"consecutive_gateway_failure": "5"}, f"{W}.consecutive_gateway_failure", "expected an integer, got '5'"),
    ({"interval_ms": 0}, f"{W}.interval_ms", "must be between 1 and 4294967295, got 0"),
    ({"base_ejection_time_ms": 0}, f"{W}.base_ejection_time_ms", "must be between 1 and 4294967295, got 0"),
    ({"max_ejection_time_ms": 0}, f"{W}.max_ejection_time_ms", "must be between 1 and 4294967295, got 0"),
    ({"base_ejection_time_ms": 5000, "max_ejection_time_ms": 4999}, f"{W}.max_ejection_time_ms",
     "must not be less than base_ejection_time_ms (5000), got 4999"),
    ({"max_ejection_percent": 101}, f"{W}.max_ejection_percent", "must be between 0 and 100, got 101"),
    ({"interval": "10s"}, f"{W}.interval",
     "unknown field (expected one of: base_ejection_time_ms, consecutive_5xx, consecutive_gateway_failure, "
     "interval_ms, max_ejection_percent, max_ejection_time_ms)"),
])
def test_bad_outlier(doc, path, message):
    assert error(parse_outlier, doc, W) == (path, message)


# ---- health checks -----------------------------------------------------------------

def test_health_check_parsing_and_defaults():
    assert parse_health_checks(None, W) is None
    assert parse_health_checks([], W) is None
    hc = parse_health_checks([{"timeout_ms": 200, "interval_ms": 1000, "healthy_threshold": 1,
                               "unhealthy_threshold": 2,
                               "http_health_check": {"path": "/healthz?full=1", "host": "svc.local:8080",
                                                     "expected_statuses": [{"start": 200, "end": 300},
                                                                           {"start": 404, "end": 405}]}}], W)
    assert hc == HealthCheck("http", 1000, 200, 1, 2, b"/healthz?full=1", b"svc.local:8080", ((200, 300), (404, 405)))
    assert parse_health_checks([{"http_health_check": {"path": "/"}}], W) == \
        HealthCheck("http", 5000, 1000, 2, 3, b"/", None, ((200, 201),))
    assert parse_health_checks([{"tcp_health_check": {}}], W) == HealthCheck("tcp", 5000, 1000, 2, 3)
    assert parse_health_checks([{"tcp_health_check": None, "interval_ms": 50}], W).interval_ms == 50
    for check in (hc, HealthCheck("tcp", 1, 1, 1, 1)):
        assert HealthCheck.from_doc(check.to_doc()) == check
    assert hc.to_doc() == {"kind": "http", "interval_ms": 1000, "timeout_ms": 200, "healthy_threshold": 1,
                           "unhealthy_threshold": 2, "path": "/healthz?full=1", "host": "svc.local:8080",
                           "expected": [[200, 300], [404, 405]]}


def test_health_check_request_and_verdict():
    hc = parse_health_checks([{"http_health_check": {"path": "/ready"}}], W)
    assert hc.request("backend") == (b"GET /ready HTTP/1.1\r\nHost: backend\r\nUser-Agent: fastproxy-health\r\n"
                                     b"Connection: close\r\n\r\n")
    named = parse_health_checks([{"http_health_check": {"path": "/", "host": "h.example"}}], W)
    assert named.request("backend").startswith(b"GET / HTTP/1.1\r\nHost: h.example\r\n")
    assert HealthCheck("tcp", 1, 1, 1, 1).request("x") == b""
    assert [s for s in (199, 200, 201, 204, 399) if hc.passes(s)] == [200]
    ranged = HealthCheck("http", 1, 1, 1, 1, b"/", None, ((200, 400), (503, 504)))
    assert [s for s in (199, 200, 302, 399, 400, 502, 503, 504) if ranged.passes(s)] == [200, 302, 399, 503]


def test_health_state_thresholds():
    s = HealthState(HealthCheck("tcp", 1, 1, healthy_threshold=2, unhealthy_threshold=3))
    assert s.healthy
    # (result, flipped, healthy after)
    steps = [(False, False, True), (False, False, True), (True, False, True),       # a pass resets the run
             (False, False, True), (False, False, True), (False, True, False),      # third failure in a row
             (False, False, False), (True, False, False), (False, False, False),    # a failure resets the run
             (True, False, False), (True, True, True), (True, False, True)]
    for ok, flipped, healthy in steps:
        assert (s.observe(ok), s.healthy) == (flipped, healthy)
    one = HealthState(HealthCheck("tcp", 1, 1, 1, 1))
    assert [one.observe(ok) for ok in (False, False, True, True, False)] == [True, False, True, False, True]


_HC_KEYS = ("unknown field (expected one of: healthy_threshold, http_health_check, interval_ms, tcp_health_check, "
            "timeout_ms, unhealthy_threshold)")


@pytest.mark.parametrize("doc, path, message", [
    ({"tcp_health_check": {}}, W, "expected a list, got dict"),
    ([{"tcp_health_check": {}}, {"tcp_health_check": {}}], f"{W}[1]", "at most one health check per cluster"),
    (["tcp"], f"{W}[0]", "expected a mapping, got str"),
    ([{}], f"{W}[0]", "exactly one of http_health_check, tcp_health_check is required"),
    ([{"tcp_health_check": {}, "http_health_check": {"path": "/"}}], f"{W}[0]",
     "exactly one of http_health_check, tcp_health_check is required (got both)"),
    ([{"tcp_health_check": {}, "timeout": "1s"}], f"{W}[0].timeout", _HC_KEYS),
    ([{"tcp_health_check": {}, "timeout_ms": 0}], f"{W}[0].timeout_ms", "must be between 1 and 4294967295, got 0"),
    ([{"tcp_health_check": {}, "interval_ms": 0}], f"{W}[0].interval_ms", "must be between 1 and 4294967295, got 0"),
    ([{"tcp_health_check": {}, "healthy_threshold": 0}], f"{W}[0].healthy_threshold",
     "must be between 1 and 4294967295, got 0"),
    ([{"tcp_health_check": {}, "unhealthy_threshold": "3"}], f"{W}[0].unhealthy_threshold",
     "expected an integer, got '3'"),
    ([{"tcp_health_check": {"send": "PING"}}], f"{W}[0].tcp_health_check.send", "unknown field (expected one of: )"),
    ([{"tcp_health_check": []}], f"{W}[0].tcp_health_check", "expected a mapping, got list"),
    ([{"http_health_check": None}], f"{W}[0].http_health_check", "expected a mapping, got null"),
    ([{"http_health_check": {}}], f"{W}[0].http_health_check.path", "required field is missing"),
    ([{"http_health_check": {"path": ""}}], f"{W}[0].http_health_check.path", "expected a non-empty string, got ''"),
    ([{"http_health_check": {"path": "healthz"}}], f"{W}[0].http_health_check.path",
     "expected a path starting with '/' (printable ASCII, no space or '#'), got 'healthz'"),
    ([{"http_health_check": {"path": "/a b"}}], f"{W}[0].http_health_check.path",
     "expected a path starting with '/' (printable ASCII, no space or '#'), got '/a b'"),
    ([{"http_health_check": {"path": "/a#b"}}], f"{W}[0].http_health_check.path",
     "expected a path starting with '/' (printable ASCII, no space or '#'), got '/a#b'"),
    ([{"http_health_check": {"path": "/", "host": "a b"}}], f"{W}[0].http_health_check.host",
     "invalid host 'a b'"),
    ([{"http_health_check": {"path": "/", "host": 7}}], f"{W}[0].http_health_check.host",
     "expected a non-empty string, got 7"),
    ([{"http_health_check": {"path": "/", "method": "HEAD"}}], f"{W}[0].http_health_check.method",
     "unknown field (expected one of: expected_statuses, host, path)"),
    ([{"http_health_check": {"path": "/", "expected_statuses": []}}], f"{W}[0].http_health_check.expected_statuses",
     "expected a non-empty list of {start, end} ranges, got []"),
    ([{"http_health_check": {"path": "/", "expected_statuses": [200]}}],
     f"{W}[0].http_health_check.expected_statuses[0]", "expected a mapping, got int"),
    ([{"http_health_check": {"path": "/", "expected_statuses": [{"start": 200}]}}],
     f"{W}[0].http_health_check.expected_statuses[0].end", "required field is missing"),
    ([{"http_health_check": {"path": "/", "expected_statuses": [{"start": 99, "end": 200}]}}],
     f"{W}[0].http_health_check.expected_statuses[0].start", "must be between 100 and 599, got 99"),
    ([{"http_health_check": {"path": "/", "expected_statuses": [{"start": 200, "end": 601}]}}],
     f"{W}[0].http_health_check.expected_statuses[0].end", "must be between 101 and 600, got 601"),
    ([{"http_health_check": {"path": "/", "expected_statuses": [{"start": 200, "end": 300},
                                                                {"start": 300, "end": 300}]}}],
     f"{W}[0].http_health_check.expected_statuses[1].end",
     "must be more than start (300): the range is [start, end)"),
])
def test_bad_health_checks(doc, path, message):
    assert error(parse_health_checks, doc, W) == (path, message)


# ---- clusters (config/load.py) -----------------------------------------------------

EP = "endpoints: [{address: '127.0.0.1:9000'}, {address: '127.0.0.1:9001', weight: 3}]"


def cluster(extra: str = "") -> str:
    """A config whose clusters[1] is the one under test."""
    return (f"clusters:\n  - {{name: first, {EP}}}\n  - {{name: c, {EP}{', ' + extra if extra else ''}}}\n"
            "listeners: []\n")


def test_cluster_defaults():
    c = load_text(cluster(), {}).clusters[1]
    assert (c.lb_policy, c.hash_policy, c.choice_count, c.minimum_ring_size, c.maximum_ring_size,
            c.maglev_table_size, c.healthy_panic_threshold) == ("ROUND_ROBIN", None, 2, 1024, 8388608, 65537, 50.0)
    assert c.breakers == breakers.ISTIO_DEFAULT
    assert c.outlier_detection is None and c.health_check is None


def test_cluster_governance_fields():
    c = load_text(cluster(
        "lb_policy: LEAST_REQUEST, least_request_lb_config: {choice_count: 3}, "
        "common_lb_config: {healthy_panic_threshold: 0}, "
        "circuit_breakers: {max_requests: 8, retry_budget: {budget_percent: 25}}, "
        "outlier_detection: {consecutive_5xx: 2, base_ejection_time_ms: 100}, "
        "health_checks: [{interval_ms: 100, http_health_check: {path: /h}}]"), {}).clusters[1]
    assert (c.lb_policy, c.choice_count, c.healthy_panic_threshold) == ("LEAST_REQUEST", 3, 0.0)
    assert c.breakers == Breakers(UNLIMITED, UNLIMITED, 8, UNLIMITED, 25.0, 3)
    assert c.outlier_detection == OutlierDetection(consecutive_5xx=2, base_ejection_time_ms=100)
    assert c.health_check == HealthCheck("http", 100, 1000, 2, 3, b"/h")
    ring = load_text(cluster("lb_policy: RING_HASH, hash_policy: {header: X-User}, "
                             "ring_hash_lb_config: {minimum_ring_size: 64, maximum_ring_size: 128}"), {}).clusters[1]
    assert (ring.hash_policy, ring.minimum_ring_size, ring.maximum_ring_size) == (HashPolicy(header="x-user"), 64, 128)
    maglev = load_text(cluster("lb_policy: MAGLEV, hash_policy: {cookie: session}, "
                               "maglev_lb_config: {table_size: 251}, common_lb_config: {healthy_panic_threshold: 12.5}"),
                       {}).clusters[1]
    assert (maglev.hash_policy, maglev.maglev_table_size, maglev.healthy_panic_threshold) == (
        HashPolicy(cookie="session"), 251, 12.5)
    ip = load_text(cluster("lb_policy: RING_HASH, hash_policy: {source_ip: true}"), {}).clusters[1]
    assert ip.hash_policy == HashPolicy(source_ip=True)
    assert [HashPolicy(header="x").to_doc(), HashPolicy(cookie="s").to_doc(), HashPolicy(source_ip=True).to_doc()] == [
        {"header": "x"}, {"cookie": "s"}, {"source_ip": True}]
    assert load_text(cluster("lb_policy: RANDOM"), {}).clusters[1].lb_policy == "RANDOM"


C = "clusters[1]"


@pytest.mark.parametrize("extra, path, message", [
    ("lb_policy: LEAST_CONN", f"{C}.lb_policy",
     "expected one of ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV, got 'LEAST_CONN'"),
    ("lb_policy: RING_HASH", f"{C}.hash_policy", "required with lb_policy RING_HASH (header, cookie or source_ip)"),
    ("lb_policy: MAGLEV", f"{C}.hash_policy", "required with lb_policy MAGLEV (header, cookie or source_ip)"),
    ("hash_policy: {header: x}", f"{C}.hash_policy", "only for lb_policy RING_HASH or MAGLEV, not ROUND_ROBIN"),
    ("lb_policy: RING_HASH, hash_policy: {}", f"{C}.hash_policy",
     "exactly one of header, cookie, source_ip is required"),
    ("lb_policy: RING_HASH, hash_policy: {header: a, cookie: b}", f"{C}.hash_policy",
     "exactly one of header, cookie, source_ip is required"),
    ("lb_policy: RING_HASH, hash_policy: {query: a}", f"{C}.hash_policy.query",
     "unknown field (expected one of: cookie, header, source_ip)"),
    ("lb_policy: RING_HASH, hash_policy: {header: 'a b'}", f"{C}.hash_policy.header", "invalid header name 'a b' (a token)"),
    ("lb_policy: RING_HASH, hash_policy: {cookie: ''}", f"{C}.hash_policy.cookie",
     "expected a non-empty string, got ''"),
    ("lb_policy: RING_HASH, hash_policy: {source_ip: false}", f"{C}.hash_policy.source_ip", "expected true, got False"),
    ("lb_policy: RING_HASH, hash_policy: [x]", f"{C}.hash_policy", "expected a mapping, got list"),
    ("least_request_lb_config: {choice_count: 3}", f"{C}.least_request_lb_config",
     "only for lb_policy LEAST_REQUEST, not ROUND_ROBIN"),
    ("lb_policy: LEAST_REQUEST, least_request_lb_config: {choice_count: 1}",
     f"{C}.least_request_lb_config.choice_count", "must be between 2 and 100, got 1"),
    ("lb_policy: LEAST_REQUEST, least_request_lb_config: {active_request_bias: 1}",
     f"{C}.least_request_lb_config.active_request_bias", "unknown field (expected one of: choice_count)"),
    ("lb_policy: MAGLEV, hash_policy: {header: x}, ring_hash_lb_config: {}", f"{C}.ring_hash_lb_config",
     "only for lb_policy RING_HASH, not MAGLEV"),
    ("lb_policy: RING_HASH, hash_policy: {header: x}, ring_hash_lb_config: {minimum_ring_size: 0}",
     f"{C}.ring_hash_lb_config.minimum_ring_size", "must be between 1 and 8388608, got 0"),
    ("lb_policy: RING_HASH, hash_policy: {header: x}, ring_hash_lb_config: {maximum_ring_size: 8388609}",
     f"{C}.ring_hash_lb_config.maximum_ring_size", "must be between 1 and 8388608, got 8388609"),
    ("lb_policy: RING_HASH, hash_policy: {header: x}, ring_hash_lb_config: {minimum_ring_size: 2048, "
     "maximum_ring_size: 1024}", f"{C}.ring_hash_lb_config.maximum_ring_size",
     "must not be less than minimum_ring_size (2048), got 1024"),
    ("lb_policy: RING_HASH, hash_policy: {header: x}, ring_hash_lb_config: {hash_function: XX_HASH}",
     f"{C}.ring_hash_lb_config.hash_function",
     "unknown field (expected one of: maximum_ring_size, minimum_ring_size)"),
    ("lb_policy: RING_HASH, hash_policy: {header: x}, maglev_lb_config: {}", f"{C}.maglev_lb_config",
     "only for lb_policy MAGLEV, not RING_HASH"),
    ("lb_policy: MAGLEV, hash_policy: {header: x}, maglev_lb_config: {table_size: 65536}",
     f"{C}.maglev_lb_config.table_size", "must be a prime number, got 65536"),
    ("lb_policy: MAGLEV, hash_policy: {header: x}, maglev_lb_config: {table_size: 5000011}",
     f"{C}.maglev_lb_config.table_size", "must be between 2 and 5000010, got 5000011"),
    ("lb_policy: MAGLEV, hash_policy: {header: x}, maglev_lb_config: {table_size: '251'}",
     f"{C}.maglev_lb_config.table_size", "expected an integer, got '251'"),
    ("common_lb_config: {healthy_panic_threshold: 101}", f"{C}.common_lb_config.healthy_panic_threshold",
     "must be between 0 and 100, got 101"),
    ("common_lb_config: {healthy_panic_threshold: {value: 50}}", f"{C}.common_lb_config.healthy_panic_threshold",
     "expected a number, got {'value': 50}"),
    ("common_lb_config: {zone_aware_lb_config: {}}", f"{C}.common_lb_config.zone_aware_lb_config",
     "unknown field (expected one of: healthy_panic_threshold)"),
    ("circuit_breakers: {max_connections: -1}", f"{C}.circuit_breakers.max_connections",
     "must be between 0 and 4294967295, got -1"),
    ("circuit_breakers: {retry_budget: {budget_percent: 0}}", f"{C}.circuit_breakers.retry_budget.budget_percent",
     "must be more than 0 (leave retry_budget out for no budget)"),
    ("outlier_detection: {base_ejection_time_ms: 10, max_ejection_time_ms: 5}",
     f"{C}.outlier_detection.max_ejection_time_ms", "must not be less than base_ejection_time_ms (10), got 5"),
    ("outlier_detection: {base_ejection_time_ms: 0}", f"{C}.outlier_detection.base_ejection_time_ms",
     "must be between 1 and 4294967295, got 0"),
    ("outlier_detection: [1]", f"{C}.outlier_detection", "expected a mapping, got list"),
    ("health_checks: [{tcp_health_check: {}}, {tcp_health_check: {}}]", f"{C}.health_checks[1]",
     "at most one health check per cluster"),
    ("health_checks: [{http_health_check: {path: x}}]", f"{C}.health_checks[0].http_health_check.path",
     "expected a path starting with '/' (printable ASCII, no space or '#'), got 'x'"),
    ("lb_config: {}", f"{C}.lb_config", None),
])
def test_bad_clusters(extra, path, message):
    p, m = error(load_text, cluster(extra), {})
    assert p == path
    if message is None:
        assert m.startswith("unknown field (expected one of: circuit_breakers, common_lb_config, connect_timeout_ms,")
    else:
        assert m == message


# ---- routes and virtual services (routing/http.py) -----------------------------------

R = "virtual_services[0].http[0]"


def vs(route: dict | None = None, **spec) -> list:
    r = {"route": [{"destination": {"host": "c"}}]} if route is None else route
    return [{"hosts": ["a.example"], "http": [r], **spec}]


def only_route(docs):
    routes = compile_virtual_services(docs).routes()
    assert len(routes) == 1
    return routes[0]


def test_route_policy_defaults():
    r = only_route(vs())
    assert (r.timeout_ms, r.retry, r.fault, r.connect_timeout_ms, r.idle_timeout_ms) == (None, ISTIO_DEFAULT, None, 0, 0)
    # absent: the proxy's http_request_timeout_ms applies; "0s" (below) is none
    assert (r.rate_limit, r.rate_limit_key, r.rate_limit_slot) == (None, None, -1)
    assert (r.vh_rate_limit, r.vh_rate_limit_key, r.vh_rate_limit_slot) == (None, None, -1)
    # nothing goes upstream: no retry policy
    assert only_route(vs({"redirect": {"uri": "/x"}})).retry is None
    assert only_route(vs({"directResponse": {"status": 204}})).retry is None


def test_route_policy_fields():
    route = {"route": [{"destination": {"host": "c"}}], "timeout": "2s",
             "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx"},
             "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 5}}},
             "connectTimeout": "250ms", "idleTimeout": "30s",
             "localRateLimit": {"maxTokens": 10, "fillInterval": "1s"},
             "match": [{"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/b"}}]}
    routes = compile_virtual_services(vs(route, localRateLimit={"maxTokens": 100, "tokensPerFill": 50,
                                                                "fillInterval": "1m"})).routes()
    assert len(routes) == 2
    for r in routes:   # every match block carries the same policy and the same buckets
        assert (r.timeout_ms, r.connect_timeout_ms, r.idle_timeout_ms) == (2000, 250, 30_000)
        assert r.retry == RetryPolicy(3, retry.RETRY_5XX, 500, (), False)
        assert r.fault == Fault(0, 0.0, 503, 5.0)
        assert (r.rate_limit, r.rate_limit_key) == (TokenBucket(10, 1, 1000), R)
        assert (r.vh_rate_limit, r.vh_rate_limit_key) == (TokenBucket(100, 50, 60_000), "virtual_services[0]")
    assert only_route(vs({"route": [{"destination": {"host": "c"}}], "timeout": "0s"})).timeout_ms == 0
    assert only_route(vs({"route": [{"destination": {"host": "c"}}], "retries": {"attempts": 0}})).retry is None
    # a rate limit works with any action
    for action in ({"redirect": {"uri": "/x"}}, {"directResponse": {"status": 429}}):
        r = only_route(vs({**action, "localRateLimit": {"maxTokens": 1, "fillInterval": "1s"}}))
        assert (r.rate_limit, r.rate_limit_key) == (TokenBucket(1, 1, 1000), R)
    # a Kubernetes object: the keys are the spec's paths
    k8s = [{"kind": "VirtualService", "metadata": {"name": "v"},
            "spec": {"hosts": ["h"], "localRateLimit": {"maxTokens": 1, "fillInterval": "1s"},
                     "http": [{"route": [{"destination": {"host": "c"}}],
                               "localRateLimit": {"maxTokens": 2, "fillInterval": "1s"}}]}}]
    r = only_route(k8s)
    assert (r.vh_rate_limit_key, r.rate_limit_key) == ("virtual_services[0].spec", "virtual_services[0].spec.http[0]")


ROUTE = {"route": [{"destination": {"host": "c"}}]}


@pytest.mark.parametrize("docs, path, message", [
    (vs({**ROUTE, "timeout": "2"}), f"{R}.timeout", BAD_UNITS + "'2'"),
    (vs({**ROUTE, "timeout": "-1s"}), f"{R}.timeout", BAD_UNITS + "'-1s'"),
    (vs({**ROUTE, "connectTimeout": "0s"}), f"{R}.connectTimeout", "must be more than 0, got '0s'"),
    (vs({**ROUTE, "idleTimeout": "0ms"}), f"{R}.idleTimeout", "must be more than 0, got '0ms'"),
    (vs({**ROUTE, "retries": {"attempts": 2, "retryOn": "sometimes"}}), f"{R}.retries.retryOn",
     "unknown retry condition 'sometimes' (expected status codes or: 5xx, gateway-error, reset, connect-failure, "
     "refused-stream, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, internal, "
     "resource-exhausted, unavailable)"),
    (vs({**ROUTE, "retries": "3"}), f"{R}.retries", "expected a mapping, got str"),
    (vs({**ROUTE, "fault": {}}), f"{R}.fault", "delay or abort is required"),
    (vs({**ROUTE, "fault": {"abort": {"httpStatus": 100}}}), f"{R}.fault.abort.httpStatus",
     "must be between 200 and 599, got 100"),
    (vs({**ROUTE, "localRateLimit": {"maxTokens": 0, "fillInterval": "1s"}}), f"{R}.localRateLimit.maxTokens",
     "must be between 1 and 16777215, got 0"),
    (vs(localRateLimit={"maxTokens": 1}), "virtual_services[0].localRateLimit.fillInterval",
     "required field is missing"),
    (vs({"redirect": {"uri": "/"}, "retries": {"attempts": 1}}), f"{R}.retries", "retries cannot be used with redirect"),
    (vs({"redirect": {"uri": "/"}, "fault": {"abort": {"httpStatus": 500}}}), f"{R}.fault",
     "fault cannot be used with redirect"),
    (vs({"directResponse": {"status": 200}, "timeout": "1s"}), f"{R}.timeout",
     "timeout cannot be used with directResponse"),
    (vs({"directResponse": {"status": 200}, "connectTimeout": "1s"}), f"{R}.connectTimeout",
     "connectTimeout cannot be used with directResponse"),
    (vs({"directResponse": {"status": 200}, "idleTimeout": "1s"}), f"{R}.idleTimeout",
     "idleTimeout cannot be used with directResponse"),
    (vs({**ROUTE, "mirrorPercentage": {"value": 5}}), f"{R}.mirrorPercentage", "not supported yet"),
])
def test_bad_route_policy(docs, path, message):
    assert error(compile_virtual_services, docs) == (path, message)


def test_kinds_of_routes_without_upstream_keep_their_kind():
    assert only_route(vs({"redirect": {"uri": "/x"}})).kind == REDIRECT
    assert only_route(vs({"directResponse": {"status": 204}})).kind == DIRECT_RESPONSE
