"""`fastproxy status`: each endpoint's health from /clusters?format=json and
the circuit-breaker thresholds from the config dump (pure parts of status.py)."""
from fastproxy.status import build

UNLIMITED = 2 ** 32 - 1


def _doc(hosts):
    config = {"clusters": [{"name": "backend", "endpoints": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80"},
                                                            {"address": "10.0.0.3:80"}],
                            "breakers": {"max_connections": 100, "max_pending_requests": UNLIMITED,
                                         "max_requests": UNLIMITED, "max_retries": 3, "budget_percent": 20.0,
                                         "min_retry_concurrency": 2}},
                           {"name": "plain", "endpoints": [{"address": "10.0.0.9:80"}]}]}
    return build({"config": config}, [], "", "", 1.0, {"visible": False, "rules": [], "why": "x"}, hosts)


def test_endpoint_health_from_host_statuses():
    hosts = [{"name": "backend", "host_statuses": [
        {"address": "10.0.0.1:80", "health_flags": "healthy"},
        {"address": "10.0.0.2:80", "health_flags": "/failed_active_hc", "failed_active_health_check": True},
        {"address": "10.0.0.3:80", "health_flags": "/failed_active_hc/failed_outlier_check",
         "failed_active_health_check": True, "failed_outlier_check": True}]}]
    backend, plain = _doc(hosts)["clusters"]
    assert [e["health"] for e in backend["endpoints"]] == [
        "HEALTHY", "UNHEALTHY (health check failed)",
        "UNHEALTHY (health check failed, ejected by outlier detection)"]
    assert plain["endpoints"][0]["health"] == "HEALTHY"


def test_breaker_thresholds_set():
    backend, plain = _doc(None)["clusters"]
    assert backend["breaker"] == "max_connections 100, max_retries 3, retry budget 20% (min 2)"
    assert plain["breaker"] == "not configured"
