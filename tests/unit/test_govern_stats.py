"""Governance state rendered as Prometheus samples and as Envoy's /clusters
text (stats/govern.py): golden files, the breaker arithmetic, and both
prometheus_client parsers.

Regenerate the golden files with FASTPROXY_UPDATE_GOLDEN=1, then read every diff by eye.
"""
import os
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from fastproxy.stats import govern, prometheus
from fastproxy.stats.govern import BucketState, ClusterState, HostState

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FASTPROXY_UPDATE_GOLDEN") == "1"
UNLIMITED = 2 ** 32 - 1


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{name} missing; FASTPROXY_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), f"{name} differs; FASTPROXY_UPDATE_GOLDEN=1 regenerates"


def counters(**over) -> dict:
    base = {"version": 7, "cx_active": 0, "rq_pending": 0, "rq_active": 0, "rq_retry_active": 0, "ejected": 0,
            "cx_overflow": 0, "rq_pending_overflow": 0, "rq_overflow": 0, "rq_retry_overflow": 0, "rq_retry": 0,
            "rq_retry_success": 0, "ejections_total": 0, "ejections_5xx": 0, "ejections_gateway": 0,
            "ejections_overflow": 0}
    base.update(over)
    return base


def breakers(cx=UNLIMITED, pending=UNLIMITED, rq=UNLIMITED, retries=UNLIMITED, budget=0.0, min_retry=3) -> dict:
    return {"max_connections": cx, "max_pending_requests": pending, "max_requests": rq, "max_retries": retries,
            "budget_percent": budget, "min_retry_concurrency": min_retry}


def host(address, ejected=False, hc_failed=False, rq_active=0, rq_total=0, weight=1) -> HostState:
    return HostState(address, weight, rq_active, rq_total, ejected, hc_failed)


def clusters() -> list[ClusterState]:
    backend = ClusterState(
        "backend",
        counters(cx_active=4, rq_pending=2, rq_active=10, rq_retry_active=1, ejected=1, cx_overflow=3,
                 rq_pending_overflow=5, rq_overflow=6, rq_retry=9, rq_retry_success=7, rq_retry_overflow=2,
                 ejections_total=4, ejections_5xx=1, ejections_gateway=3, ejections_overflow=1),
        breakers(cx=4, pending=10, rq=100, retries=5, budget=20.0, min_retry=1),
        outlier=True,
        health={"attempt": 12, "success": 9, "failure": 3, "network_failure": 2},
        hosts=(host("10.0.0.1:8080", rq_active=6, rq_total=40),
               host("10.0.0.2:8080", ejected=True, rq_total=11, weight=3),
               host("[2001:db8::3]:8080", hc_failed=True, rq_total=2),
               host("10.0.0.4:8080", ejected=True, hc_failed=True)))
    plain = ClusterState("plain", counters(), breakers(), outlier=False, health=None,
                         hosts=(host("127.0.0.1:9000", rq_active=-1, rq_total=5),))
    return [backend, plain]


def buckets() -> list[BucketState]:
    return [BucketState('virtual_services[0].http[1]', allowed=90, limited=10),
            BucketState('virtual_services[1]', allowed=0, limited=0)]


def render(content_type=prometheus.TEXT) -> str:
    return prometheus.render(govern.samples(clusters(), buckets()), content_type)


def by_name(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_golden_text():
    golden("govern.txt", render())


def test_golden_openmetrics():
    text = render(prometheus.OPENMETRICS)
    golden("govern.openmetrics.txt", text)
    assert {f.name for f in om_families(text)} >= {
        "fastproxy_cluster_upstream_rq_pending_overflow", "fastproxy_cluster_circuit_breakers_default_cx_open",
        "fastproxy_cluster_outlier_detection_ejections_enforced", "fastproxy_http_local_rate_limit_ok"}


def test_golden_clusters_text():
    golden("govern.clusters.txt", govern.clusters_text(clusters()))


def test_membership_counts_health_and_ejections():
    s = by_name(render())
    assert value(s, "fastproxy_cluster_membership_total", cluster_name="backend") == 4
    # only 10.0.0.1 is neither ejected nor failed by the health check
    assert value(s, "fastproxy_cluster_membership_healthy", cluster_name="backend") == 1
    assert value(s, "fastproxy_cluster_health_check_healthy", cluster_name="backend") == 2
    assert value(s, "fastproxy_cluster_outlier_detection_ejections_active", cluster_name="backend") == 2
    assert value(s, "fastproxy_cluster_membership_healthy", cluster_name="plain") == 1


def test_breakers_open_and_remaining():
    s = by_name(render())
    b = {"cluster_name": "backend"}
    assert value(s, "fastproxy_cluster_circuit_breakers_default_cx_open", **b) == 1        # 4 of 4
    assert value(s, "fastproxy_cluster_circuit_breakers_default_remaining_cx", **b) == 0
    assert value(s, "fastproxy_cluster_circuit_breakers_default_rq_pending_open", **b) == 0
    assert value(s, "fastproxy_cluster_circuit_breakers_default_remaining_pending", **b) == 8
    assert value(s, "fastproxy_cluster_circuit_breakers_default_remaining_rq", **b) == 90
    # budget: max(1, 20% of 10 in flight) = 2 retries, 1 in flight
    assert value(s, "fastproxy_cluster_circuit_breakers_default_rq_retry_open", **b) == 0
    assert value(s, "fastproxy_cluster_circuit_breakers_default_remaining_retries", **b) == 1
    p = {"cluster_name": "plain"}
    assert value(s, "fastproxy_cluster_circuit_breakers_default_remaining_cx", **p) == UNLIMITED
    assert value(s, "fastproxy_cluster_circuit_breakers_default_rq_open", **p) == 0


def test_counters_read_their_fields():
    s = by_name(render())
    b = {"cluster_name": "backend"}
    for name, v in (("fastproxy_cluster_upstream_cx_overflow_total", 3),
                    ("fastproxy_cluster_upstream_rq_pending_overflow_total", 5),
                    ("fastproxy_cluster_upstream_rq_active_overflow_total", 6),
                    ("fastproxy_cluster_upstream_rq_retry_total", 9),
                    ("fastproxy_cluster_upstream_rq_retry_success_total", 7),
                    ("fastproxy_cluster_upstream_rq_retry_overflow_total", 2),
                    ("fastproxy_cluster_upstream_rq_active", 10),
                    ("fastproxy_cluster_upstream_rq_pending_active", 2),
                    ("fastproxy_cluster_outlier_detection_ejections_enforced_total", 4),
                    ("fastproxy_cluster_outlier_detection_ejections_enforced_consecutive_5xx_total", 1),
                    ("fastproxy_cluster_outlier_detection_ejections_enforced_consecutive_gateway_failure_total", 3),
                    ("fastproxy_cluster_outlier_detection_ejections_overflow_total", 1),
                    ("fastproxy_cluster_health_check_attempt_total", 12),
                    ("fastproxy_cluster_health_check_success_total", 9),
                    ("fastproxy_cluster_health_check_failure_total", 3),
                    ("fastproxy_cluster_health_check_network_failure_total", 2)):
        assert value(s, name, **b) == v, name


def test_outlier_and_health_only_where_configured():
    s = by_name(render())
    names = {n for (n, labels) in s if ("cluster_name", "plain") in labels}
    assert not any("outlier_detection" in n or "health_check" in n for n in names)
    assert "fastproxy_cluster_circuit_breakers_default_cx_open" in names


def test_rate_limit_counters():
    s = by_name(render())
    r = {"route": "virtual_services[0].http[1]"}
    assert value(s, "fastproxy_http_local_rate_limit_enabled_total", **r) == 100
    assert value(s, "fastproxy_http_local_rate_limit_enforced_total", **r) == 10
    assert value(s, "fastproxy_http_local_rate_limit_rate_limited_total", **r) == 10
    assert value(s, "fastproxy_http_local_rate_limit_ok_total", **r) == 90


@pytest.mark.parametrize("ejected, hc_failed, flags", [
    (False, False, "healthy"),
    (False, True, "/failed_active_hc"),
    (True, False, "/failed_outlier_check"),
    (True, True, "/failed_active_hc/failed_outlier_check"),
])
def test_health_flags_as_envoy_prints_them(ejected, hc_failed, flags):
    h = host("1.2.3.4:5", ejected=ejected, hc_failed=hc_failed)
    assert h.health_flags == flags
    assert h.available == (flags == "healthy")


@pytest.mark.parametrize("rq_active, budget, min_retry, max_retries, limit", [
    (0, 0.0, 3, 7, 7),          # no budget: max_retries
    (0, 20.0, 3, 100, 3),       # budget floor: min_retry_concurrency
    (100, 20.0, 3, 100, 20),    # 20% of 100 in flight
    (100, 20.0, 3, 10, 10),     # max_retries still caps
    (-2, 50.0, 0, 10, 0),       # a transiently negative count reads as 0
    (9, 25.0, 0, 10, 2),        # rounded down, as the C does
    (10, 19.5, 0, 10, 2),       # the percent is whole, rounded half up (ClusterCfg)
    (10, 19.4, 0, 10, 1),
])
def test_retry_limit_matches_the_engine(rq_active, budget, min_retry, max_retries, limit):
    b = breakers(retries=max_retries, budget=budget, min_retry=min_retry)
    assert govern.retry_limit(b, rq_active) == limit


def test_host_statuses_json():
    hs = govern.host_statuses(clusters()[1])
    assert hs == [{"address": "127.0.0.1:9000", "weight": 1, "health_flags": "healthy",
                   "failed_active_health_check": False, "failed_outlier_check": False,
                   "rq_active": 0, "rq_total": 5}]
