"""Istio series: summed by KEY across worker regions, rendered as Prometheus
text and OpenMetrics (golden files), and every output parsed by
prometheus_client's two parsers.

Regenerate the golden files with FASTPROXY_UPDATE_GOLDEN=1, then read every diff by eye.
"""
import os
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as om_families,
)
from prometheus_client.parser import text_string_to_metric_families

from fastproxy._native.shm import CounterSegment
from fastproxy.config.schema import Listener, SocketAddress
from fastproxy.stats import istio, names, prometheus
from fastproxy.stats.names import (
    BLOCK,
    BYTES_BOUNDS,
    DURATION_BOUNDS_MS,
    S_DURATION,
    S_DURATION_SUM_US,
    S_REQUEST_BYTES,
    S_REQUEST_BYTES_SUM,
    S_REQUESTS,
    S_RESPONSE_BYTES,
    S_RESPONSE_BYTES_SUM,
    SERIES_WIDTH,
    T_CLOSED,
    T_OPENED,
    T_RX_BYTES,
    T_TX_BYTES,
    Metric,
    http_key,
    ledger_area,
    region_slots,
    series_area,
    tcp_key,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FASTPROXY_UPDATE_GOLDEN") == "1"

OUT_L, IN_L, EXPLICIT_L = 1 * BLOCK, 2 * BLOCK, 3 * BLOCK
REVIEWS, PASSTHROUGH, INBOUND_PT = 4 * BLOCK, 5 * BLOCK, 6 * BLOCK
REPORTERS = {OUT_L: "source", IN_L: "destination", EXPLICIT_L: "source"}
CLUSTERS = {REVIEWS: "reviews.default.svc.cluster.local", PASSTHROUGH: "PassthroughCluster",
            INBOUND_PT: "InboundPassthroughCluster"}
IDENT = istio.Identity("productpage-v1", "bookinfo", 'product"page\\svc')


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{name} missing; FASTPROXY_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), f"{name} differs; FASTPROXY_UPDATE_GOLDEN=1 regenerates"


def http_series(key: int, durations_ms=(), req_sizes=(), resp_sizes=()) -> tuple:
    """One worker's series for requests of the given durations and body sizes
    (bodies of 0 bytes for the requests not given one)."""
    n = len(durations_ms)
    req_sizes = tuple(req_sizes) + (0,) * (n - len(req_sizes))
    resp_sizes = tuple(resp_sizes) + (0,) * (n - len(resp_sizes))
    v = [0] * SERIES_WIDTH
    v[0] = key
    v[S_REQUESTS] = len(durations_ms)
    for d in durations_ms:
        v[S_DURATION + next(i for i, b in enumerate(DURATION_BOUNDS_MS) if d <= b)] += 1
        v[S_DURATION_SUM_US] += int(d * 1000)
    for off, total, sizes in ((S_REQUEST_BYTES, S_REQUEST_BYTES_SUM, req_sizes),
                              (S_RESPONSE_BYTES, S_RESPONSE_BYTES_SUM, resp_sizes)):
        for n in sizes:
            v[off + next(i for i, b in enumerate(BYTES_BOUNDS) if n <= b)] += 1
            v[total] += n
    return tuple(v)


def tcp_series(key: int, opened: int, closed: int, rx: int, tx: int) -> tuple:
    v = [0] * SERIES_WIDTH
    v[0], v[T_OPENED], v[T_CLOSED], v[T_RX_BYTES], v[T_TX_BYTES] = key, opened, closed, rx, tx
    return tuple(v)


K200 = http_key(OUT_L, REVIEWS, 0, 200)
K503 = http_key(OUT_L, REVIEWS, 0, 503)
K_IN = http_key(IN_L, INBOUND_PT, 0, 200)
K_NR = http_key(EXPLICIT_L, 0, 0x08, 404)
K_UF = http_key(OUT_L, REVIEWS, 0x01 | 0x04, 503)
K_TCP = tcp_key(OUT_L, PASSTHROUGH)
K_TCP_IN = tcp_key(IN_L, INBOUND_PT)


def two_regions() -> list[list[tuple]]:
    """The same keys in two workers, in different orders (so at different offsets)."""
    w0 = [http_series(K200, [0.4, 3, 7000], [0, 10, 0], [1, 2000, 5]),
          tcp_series(K_TCP, 3, 2, 3 << 20, 100),
          http_series(K503, [30])]
    w1 = [http_series(K503, [2000000], [1], [50_000_000]),
          http_series(K_NR, [0.2]),
          http_series(K200, [1]),
          http_series(K_IN, [12, 12.5]),
          http_series(K_UF, [4000]),
          tcp_series(K_TCP_IN, 1, 1, 7, 9),
          tcp_series(K_TCP, 7, 7, 7 << 20, 0)]
    return [w0, w1]


def render(content_type=prometheus.TEXT, cap=None):
    series = istio.sum_series(two_regions())
    cap = cap or istio.SeriesCap(100)
    return prometheus.render(istio.samples(series, REPORTERS, CLUSTERS, IDENT, cap), content_type)


# ---- keys, areas and summing --------------------------------------------------

def test_key_packing_round_trips():
    assert istio.decode_key(http_key(OUT_L, REVIEWS, 0x41, 503)) == (False, OUT_L, REVIEWS, 0x41, 503)
    assert istio.decode_key(tcp_key(IN_L, INBOUND_PT)) == (True, IN_L, INBOUND_PT, 0, 0)
    assert http_key(0, 0, 0, 0) == 1 << 63 and tcp_key(0, 0) == 3 << 62


def test_series_area_sits_on_top_of_the_static_slots():
    settings = {"counter_slots": 65536, "max_series_per_worker": 2048, "max_endpoints": 4096}
    assert series_area(settings) == (65536, 2048)
    # then the governance ledger: 4 slots per cluster slot, 1 per endpoint slot
    assert ledger_area(settings) == (65536 + 2048 * SERIES_WIDTH, 65536 // 16 * 4 + 4096)
    assert region_slots(settings) == 65536 + 2048 * SERIES_WIDTH + 65536 // 16 * 4 + 4096


def test_sum_series_adds_by_key_not_by_offset():
    sums = istio.sum_series(two_regions())
    assert sums[K200][S_REQUESTS] == 4 and sums[K200][0] == K200
    assert sums[K503][S_REQUESTS] == 2
    assert sums[K_TCP][T_OPENED] == 10 and sums[K_TCP][T_CLOSED] == 9
    assert sums[K_TCP][T_RX_BYTES] == 10 << 20
    assert set(sums) == {K200, K503, K_NR, K_IN, K_UF, K_TCP, K_TCP_IN}


def test_series_read_from_shared_memory_regions():
    """Two worker regions hold the same keys at different offsets; the
    manager reads them with CounterView.series and sums by key."""
    base, nmax = 1024, 8
    name = f"/fastproxy-test-{os.getpid()}-series"
    with CounterSegment(name, 2, base + nmax * SERIES_WIDTH, create=True) as seg:
        try:
            for w, region in enumerate(two_regions()):
                view = seg.view(w)
                for i, s in enumerate(region):
                    for off in range(SERIES_WIDTH - 1, -1, -1):   # KEY last, as the engine does
                        view.set(base + i * SERIES_WIDTH + off, s[off])
            regions = [seg.view(w).series(base, nmax, SERIES_WIDTH) for w in range(2)]
            assert [len(r) for r in regions] == [3, 7]
            assert regions == two_regions()
            assert istio.sum_series(regions) == istio.sum_series(two_regions())
            assert seg.sum(base)[:4] == [0, 0, 0, 0] and len(seg.sum(base)) == base
            with pytest.raises(IndexError):
                seg.view(0).series(base, nmax + 1, SERIES_WIDTH)
        finally:
            seg.close(unlink=True)


# ---- labels -------------------------------------------------------------------------

def test_response_flags_in_envoy_order():
    assert names.response_flags(0) == "-"
    assert names.response_flags(0x01 | 0x02 | 0x04) == "UT,UF,UC"
    assert names.response_flags(0x08 | 0x10 | 0x20 | 0x40) == "NR,DC,DPE,UPE"


def test_reporter_of_listeners():
    addr = SocketAddress("0.0.0.0", 15001)
    assert istio.reporter_of(Listener("o", addr, use_original_dst=True, traffic_direction="OUTBOUND")) == "source"
    assert istio.reporter_of(Listener("i", addr, use_original_dst=True, traffic_direction="INBOUND")) == "destination"
    assert istio.reporter_of(Listener("u", addr, use_original_dst=True)) == "destination"
    assert istio.reporter_of(Listener("e", addr)) == "source"
    assert istio.reporter_of(Listener("e", addr, traffic_direction="INBOUND")) == "destination"


def by_labels(family, **match):
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in match.items())]


def test_labels_and_values():
    fams = {f.name: f for f in text_string_to_metric_families(render())}
    req = fams["istio_requests"]
    ok = by_labels(req, response_code="200", reporter="source")
    assert len(ok) == 1 and ok[0].value == 4
    assert ok[0].labels == {
        "reporter": "source", "source_workload": "productpage-v1", "source_workload_namespace": "bookinfo",
        "destination_workload": "unknown", "destination_workload_namespace": "unknown",
        "destination_service": "reviews.default.svc.cluster.local", "request_protocol": "http",
        "response_code": "200", "response_flags": "-", "connection_security_policy": "unknown"}
    inbound = by_labels(req, reporter="destination")[0]
    assert inbound.labels["destination_workload"] == "productpage-v1"
    assert inbound.labels["source_workload"] == "unknown"
    assert inbound.labels["destination_service"] == 'product"page\\svc'
    assert inbound.labels["connection_security_policy"] == "none"
    nr = by_labels(req, response_code="404")[0]
    assert nr.labels["response_flags"] == "NR" and nr.labels["destination_service"] == "unknown"
    assert by_labels(req, response_flags="UF,UC")[0].value == 1
    assert by_labels(req, response_code="503", response_flags="-")[0].value == 2

    tcp = fams["istio_tcp_connections_opened"]
    out = by_labels(tcp, reporter="source")[0]
    assert out.value == 10 and out.labels["destination_service"] == "PassthroughCluster"
    assert out.labels["request_protocol"] == "tcp" and "response_code" not in out.labels
    assert by_labels(fams["istio_tcp_received_bytes"], reporter="source")[0].value == 10 << 20
    assert by_labels(fams["istio_tcp_sent_bytes"], reporter="destination")[0].value == 9


def test_histograms_are_cumulative_and_consistent():
    fams = {f.name: f for f in text_string_to_metric_families(render())}
    dur = fams["istio_request_duration_milliseconds"]
    ok = {s.name: s for s in by_labels(dur, response_code="200", reporter="source")
          if s.name != "istio_request_duration_milliseconds_bucket"}
    buckets = {s.labels["le"]: s.value for s in by_labels(dur, response_code="200", reporter="source")
               if s.name.endswith("_bucket")}
    # durations 0.4, 3, 7000 (worker 0) and 1 (worker 1)
    assert buckets["0.5"] == 1 and buckets["1"] == 2 and buckets["5"] == 3
    assert buckets["5000"] == 3 and buckets["10000"] == 4 and buckets["+Inf"] == 4
    assert ok["istio_request_duration_milliseconds_count"].value == 4
    assert ok["istio_request_duration_milliseconds_sum"].value == pytest.approx(0.4 + 3 + 7000 + 1)
    slow = {s.labels["le"]: s.value for s in by_labels(dur, response_code="503", response_flags="-")
            if s.name.endswith("_bucket")}
    assert slow["1800000"] == 1 and slow["3600000"] == 2     # 30 ms and 2,000,000 ms
    resp = {s.labels["le"]: s.value for s in by_labels(fams["istio_response_bytes"], response_code="503",
                                                        response_flags="-") if s.name.endswith("_bucket")}
    assert resp["10000000"] == 1 and resp["+Inf"] == 2       # 0 bytes and 50 MB
    assert len(DURATION_BOUNDS_MS) == 20 and len(BYTES_BOUNDS) == 9


# ---- formats ---------------------------------------------------------------------

def test_golden_text():
    golden("istio.txt", render())


def test_golden_openmetrics():
    golden("istio.openmetrics.txt", render(prometheus.OPENMETRICS))


def test_openmetrics_parses_with_the_same_values():
    text = {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(render()) for s in f.samples}
    om_text = render(prometheus.OPENMETRICS)
    assert om_text.endswith("\n# EOF\n")
    om = {}
    for f in om_families(om_text):
        if f.type == "counter":
            assert not f.name.endswith("_total")
        for s in f.samples:
            labels = dict(s.labels)
            if "le" in labels:
                labels["le"] = prometheus._bound(float(labels["le"]), False)
            om[(s.name, tuple(sorted(labels.items())))] = s.value
    assert om == text


def test_manager_style_exposition_parses_in_both_formats():
    """Data-path counters, manager gauges and Istio series together."""
    sums = [0] * (8 * BLOCK)
    blocks = {("listener", "outbound"): OUT_L, ("cluster", "reviews"): REVIEWS}
    extra = [(Metric("fastproxy_build_info", "gauge", "Build information."), {"version": "1"}, 1),
             (Metric("fastproxy_worker_cpu_seconds_total", "counter", "CPU."), {"worker": "0"}, 1.25)]
    samples = prometheus.samples(sums, blocks) + istio.samples(
        istio.sum_series(two_regions()), REPORTERS, CLUSTERS, IDENT, istio.SeriesCap(100)) + extra
    names = {f.name for f in text_string_to_metric_families(prometheus.render(samples))}
    om_names = {f.name for f in om_families(prometheus.render(samples, prometheus.OPENMETRICS))}
    assert "istio_requests" in names and "istio_requests" in om_names
    assert "fastproxy_worker_cpu_seconds" in om_names and "fastproxy_build_info" in om_names


@pytest.mark.parametrize("accept,expected", [
    (None, prometheus.TEXT),
    ("", prometheus.TEXT),
    ("text/plain;version=0.0.4", prometheus.TEXT),
    (("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
      "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), prometheus.OPENMETRICS),   # Prometheus' own header
    ("application/openmetrics-text; q=0", prometheus.TEXT),
    ("text/plain, Application/OpenMetrics-Text", prometheus.OPENMETRICS),
])
def test_negotiate(accept, expected):
    assert prometheus.negotiate(accept) == expected


# ---- cardinality cap -------------------------------------------------------------

def test_cap_keeps_first_label_sets_and_counts_the_rest():
    cap = istio.SeriesCap(2)
    fams = {f.name: f for f in text_string_to_metric_families(render(cap=cap))}
    assert len(fams["istio_requests"].samples) == 2
    assert len(fams["istio_tcp_connections_opened"].samples) == 2
    dropped = {s.labels["metric"]: s.value for s in fams["fastproxy_metric_series_dropped"].samples}
    assert dropped["istio_requests_total"] == 3 and dropped["istio_tcp_sent_bytes_total"] == 0
    kept = {tuple(sorted(s.labels.items())) for s in fams["istio_requests"].samples}
    # the same label sets stay admitted on the next scrape, and drops are counted once each
    fams2 = {f.name: f for f in text_string_to_metric_families(render(cap=cap))}
    assert {tuple(sorted(s.labels.items())) for s in fams2["istio_requests"].samples} == kept
    assert {s.labels["metric"]: s.value for s in fams2["fastproxy_metric_series_dropped"].samples} == dropped


# ---- merged metrics (15020) -------------------------------------------------------

APP_TEXT = "# HELP app_hits_total Hits.\n# TYPE app_hits_total counter\napp_hits_total 3\n"
APP_OM = "# HELP app_hits Hits.\n# TYPE app_hits counter\napp_hits_total 3\n# EOF\n"


def test_merge_text():
    assert prometheus.merged_type(prometheus.OPENMETRICS, "text/plain; version=0.0.4") == prometheus.TEXT
    out = prometheus.merge(render(), APP_TEXT.rstrip("\n"), prometheus.TEXT)
    names = {f.name for f in text_string_to_metric_families(out)}
    assert "app_hits" in names and "istio_requests" in names


def test_merge_openmetrics_keeps_one_eof():
    ct = prometheus.merged_type(prometheus.OPENMETRICS, "application/openmetrics-text; version=1.0.0")
    assert ct == prometheus.OPENMETRICS
    out = prometheus.merge(render(ct), APP_OM, ct)
    assert out.count("# EOF") == 1 and out.endswith("app_hits_total 3\n# EOF\n")
    assert "app_hits" in {f.name for f in om_families(out)}
    assert prometheus.merged_type(prometheus.TEXT, None) == prometheus.TEXT


def test_a_dead_workers_tcp_series_are_closed_by_the_supervisor():
    """Before a dead worker's replacement starts, its open TCP connections
    are gone: closed catches up with opened (HTTP series are left alone)."""
    from types import SimpleNamespace

    from fastproxy._native.govern import GovernSegment
    from fastproxy.manager.supervisor import Supervisor
    from fastproxy.stats.names import SlotRegistry

    base, nmax = 1024, 4
    ledger = base + nmax * SERIES_WIDTH
    name = f"/fastproxy-test-{os.getpid()}-reconcile"
    gov = GovernSegment(f"{name}-govern", create=True, ncluster=base // 16, nendpoint=8, nbucket=1)
    with CounterSegment(name, 1, ledger + gov.ledger_slots, create=True) as seg:
        try:
            view = seg.view(0)
            for i, s in enumerate([http_series(K200, [1, 2]), tcp_series(K_TCP, 5, 3, 10, 20)]):
                for off in range(SERIES_WIDTH - 1, -1, -1):
                    view.set(base + i * SERIES_WIDTH + off, s[off])
            publisher = SimpleNamespace(counters=seg, slots=SlotRegistry(base), series=(base, nmax), govern=gov,
                                        ledger=ledger)
            Supervisor(publisher, 1, "info", None)._reconcile(0)
            after = view.series(base, nmax, SERIES_WIDTH)
            assert after[0] == http_series(K200, [1, 2])
            assert after[1][T_OPENED] == after[1][T_CLOSED] == 5 and after[1][T_RX_BYTES] == 10
        finally:
            seg.close(unlink=True)
            gov.close(unlink=True)
