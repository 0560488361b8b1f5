"""Prometheus rendering from counter sums: golden text, and it parses."""
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from fastproxy.stats import prometheus
from fastproxy.stats.names import (
    BLOCK,
    C_CX_DESTROY,
    C_CX_TOTAL,
    C_KA_RACE,
    C_RQ_2XX,
    C_RQ_5XX,
    C_RQ_TOTAL,
    C_RX_BYTES,
    L_CX_TOTAL,
    L_DETECT_TLS,
    L_REFUSED_LOOP,
    L_RQ_4XX,
    Metric,
)

GOLDEN = Path(__file__).parent / "golden" / "prometheus.txt"


def render():
    sums = [0] * (4 * BLOCK)
    sums[0] = 123  # spliced bytes
    lb, cb = BLOCK, 2 * BLOCK
    sums[lb + L_CX_TOTAL] = 5
    sums[lb + L_REFUSED_LOOP] = 1
    sums[cb + C_CX_TOTAL] = 4
    sums[cb + C_CX_DESTROY] = 1
    sums[cb + C_RX_BYTES] = 2 ** 40
    sums[lb + L_DETECT_TLS] = 2
    sums[lb + L_RQ_4XX] = 3
    sums[cb + C_RQ_TOTAL] = 9
    sums[cb + C_RQ_2XX] = 7
    sums[cb + C_RQ_5XX] = 1
    sums[cb + C_KA_RACE] = 1
    blocks = {("listener", 'out"bound\\'): lb, ("cluster", "echo"): cb}
    extra = [(Metric("fastproxy_config_generation", "gauge", "Generation."), {}, 4)]
    return prometheus.render(prometheus.samples(sums, blocks) + extra)


def test_golden():
    assert render() == GOLDEN.read_text()


def test_parses_and_active_is_derived():
    fams = {f.name: f for f in text_string_to_metric_families(render())}
    active = fams["fastproxy_cluster_upstream_cx_active"].samples[0]
    assert active.labels == {"cluster_name": "echo"} and active.value == 3
    refused = {s.labels["reason"]: s.value for s in fams["fastproxy_listener_downstream_cx_refused"].samples}
    assert refused == {"loop": 1, "no_route": 0}
    # the awkward label survives escaping
    assert fams["fastproxy_listener_downstream_cx"].samples[0].labels["listener_name"] == 'out"bound\\'


def test_http_series_read_their_slots():
    fams = {f.name: f for f in text_string_to_metric_families(render())}
    detected = {s.labels["protocol"]: s.value for s in fams["fastproxy_listener_protocol_detected"].samples}
    assert detected == {"http1": 0, "http2": 0, "tls": 2, "opaque": 0, "timeout": 0}
    down = {s.labels["response_code_class"]: s.value for s in fams["fastproxy_listener_downstream_rq"].samples}
    assert down == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 3, "5xx": 0}
    up = {s.labels["response_code_class"]: s.value
          for s in fams["fastproxy_cluster_upstream_rq_completed"].samples}
    assert up == {"1xx": 0, "2xx": 7, "3xx": 0, "4xx": 0, "5xx": 1}
    assert fams["fastproxy_cluster_upstream_rq"].samples[0].value == 9
    assert fams["fastproxy_cluster_upstream_keepalive_race_replays"].samples[0].value == 1
