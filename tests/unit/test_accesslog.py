"""Access log formatting (fastproxy/observe/accesslog.py) from hand-made
records in the engine's field order, against golden files, plus the filter,
the sampling, field selection and the sink's bounded buffer.

Regenerate the golden files with FASTPROXY_UPDATE_GOLDEN=1, then read every diff by eye.
"""
import os
import random
from pathlib import Path

import orjson
import pytest

from fastproxy.observe import record as R
from fastproxy.observe.accesslog import JSON_FIELDS, AccessLog, parse_fields
from fastproxy.observe.record import BlockNames, response_flags, tcp_record
from fastproxy.observe.sink import AccessLogSink
from fastproxy.stats.names import G_ACCESS_LOG_DROPPED

GOLDEN = Path(__file__).parent / "golden" / "accesslog"
UPDATE = os.environ.get("FASTPROXY_UPDATE_GOLDEN") == "1"
T0 = 1_714_567_496_789_123     # 2024-05-01T12:44:56.789123Z


class _Listener:
    def __init__(self, name, block, mode):
        self.name, self.block, self.mode = name, block, mode


class _Cluster:
    def __init__(self, name, block):
        self.name, self.block = name, block


class _Table:
    def __init__(self, generation=2):
        self.generation = generation
        self.listeners = [_Listener("virtualOutbound", 16, 1), _Listener("virtualInbound", 32, 2),
                          _Listener("web", 48, 0)]
        self.clusters = {"reviews": _Cluster("reviews", 64), "PassthroughCluster": _Cluster("PassthroughCluster", 80)}


def names() -> BlockNames:
    n = BlockNames()
    n.update(_Table())
    return n


def rec(**over) -> tuple:
    base = dict(start=T0, duration=12_345, upstream=9_876, method=b"GET", path=b"/api/v1/items?x=1",
                protocol=b"HTTP/1.1", status=200, flags=0, rx=0, tx=1234, upstream_host=b"10.0.0.7:9080",
                cluster=64, listener=48, request_id=b"5f0c7c9e-5b7a-4a53-9d3b-0f6c1e2b7a11",
                authority=b"reviews:9080", user_agent=b"curl/8.5.0", peer=b"127.0.0.1:51234",
                original_dst=b"", trace=b"", span=b"", parent=b"", sampled=False, route=b"")
    base.update(over)
    b = base
    r = (b["start"], b["duration"], b["upstream"], b["method"], b["path"], b["protocol"], b["status"],
         b["flags"], b["rx"], b["tx"], b["upstream_host"], b["cluster"], b["listener"], b["request_id"],
         b["authority"], b["user_agent"], b["peer"], b["original_dst"], b["trace"], b["span"], b["parent"],
         b["sampled"], b["route"])
    assert len(r) == R.NFIELDS
    return r


TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
CASES = [
    rec(),
    rec(method=b"POST", path=b"/upload", status=201, rx=65536, tx=0, start=T0 + 1_000_000),
    rec(status=404, flags=R.FLAG_NR, upstream=0, upstream_host=b"", cluster=0, tx=30, request_id=b""),
    rec(status=503, flags=R.FLAG_UF, upstream=0, tx=19, user_agent=b"", authority=b""),
    rec(status=504, flags=R.FLAG_UT, upstream=0, duration=15_000_000),
    rec(status=0, flags=R.FLAG_DC | R.FLAG_UC, tx=100, upstream=0),
    rec(status=400, flags=R.FLAG_DPE, method=b"", path=b"", upstream=0, upstream_host=b"", cluster=0),
    rec(status=502, flags=R.FLAG_UPE, protocol=b"HTTP/1.0", upstream=0),
    rec(listener=16, original_dst=b"10.96.0.5:9080", trace=TRACE, span=b"00f067aa0ba902b7",
        parent=b"b7ad6b7169203331", sampled=True, upstream=400),
    rec(listener=32, original_dst=b"10.1.2.3:8080", trace=TRACE, span=b"1111111111111111", sampled=False,
        user_agent="ünïcode \"quoted\"".encode(), cluster=80),
    tcp_record(T0, 2_000_000, 1 << 20, 512, 16, 80, b"10.1.0.9:40000", b"10.96.0.9:5432", b"10.96.0.9:5432", 0),
    tcp_record(T0, 3_000, 0, 0, 48, 64, b"127.0.0.1:40001", b"", b"", R.FLAG_UF),
]


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{name} missing; FASTPROXY_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), f"{name} differs; FASTPROXY_UPDATE_GOLDEN=1 regenerates"


def test_text_format_golden():
    log = AccessLog("text", names=names())
    _golden("text.log", b"".join(log.lines(CASES)).decode())


def test_json_format_golden():
    log = AccessLog("json", names=names())
    lines = log.lines(CASES)
    for line in lines:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert list(orjson.loads(line)) == list(JSON_FIELDS)
    _golden("json.log", b"".join(lines).decode())


def test_json_field_selection_keeps_the_given_order():
    log = AccessLog("json", fields="response_code, path,upstream_cluster", names=names())
    assert orjson.loads(log.json_line(CASES[0])) == {"response_code": 200, "path": "/api/v1/items?x=1",
                                                     "upstream_cluster": "reviews"}
    assert list(orjson.loads(log.json_line(CASES[0]))) == ["response_code", "path", "upstream_cluster"]


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match="nope"):
        parse_fields("path,nope")
    assert parse_fields("") == tuple(JSON_FIELDS)


def test_text_line_shape_matches_envoy_default():
    line = AccessLog("text", names=names()).text_line(CASES[0]).decode()
    assert line == ('[2024-05-01T12:44:56.789Z] "GET /api/v1/items?x=1 HTTP/1.1" 200 - 0 1234 12 9 "-" '
                    '"curl/8.5.0" "5f0c7c9e-5b7a-4a53-9d3b-0f6c1e2b7a11" "reviews:9080" "10.0.0.7:9080"\n')


@pytest.mark.parametrize("flags,text", [
    (0, "-"), (R.FLAG_UF, "UF"), (R.FLAG_NR, "NR"), (R.FLAG_UF | R.FLAG_UT, "UT,UF"),
    (R.FLAG_DC | R.FLAG_UC, "UC,DC"), (R.FLAG_DPE, "DPE"), (R.FLAG_UPE, "UPE"),
])
def test_response_flags_in_envoy_order(flags, text):
    assert response_flags(flags) == text


def test_errors_filter_keeps_4xx_5xx_and_flagged():
    log = AccessLog("text", filter="errors")
    kept = log.select(CASES)
    assert [r[R.STATUS] for r in kept] == [404, 503, 504, 0, 400, 502, 0]


def test_sampling_is_a_percentage():
    records = [rec()] * 10000
    assert AccessLog(sampling=100).select(records) == records
    assert AccessLog(sampling=0).select(records) == []
    n = len(AccessLog(sampling=25, rng=random.Random(7)).select(records))
    assert 2200 < n < 2800, n


def test_names_accumulate_across_generations():
    n = names()
    t = _Table(generation=3)
    t.clusters = {"ratings": _Cluster("ratings", 96)}
    n.update(t)
    assert n.cluster(64) == "reviews" and n.cluster(96) == "ratings" and n.cluster(0) is None
    assert 32 in n.inbound and 16 not in n.inbound


class _Counters:
    def __init__(self):
        self.slots = {}

    def add(self, slot, n):
        self.slots[slot] = self.slots.get(slot, 0) + n


def test_sink_drops_whole_lines_past_the_cap_and_counts_them(tmp_path):
    r, w = os.pipe()
    os.set_blocking(r, False)
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        ctr = _Counters()
        log = AccessLog("text", names=names())
        sink = AccessLogSink(str(fifo), log, ctr, cap=8192)
        line_len = len(log.text_line(CASES[0]))
        total = 5000
        for _ in range(total // 10):
            sink.write([CASES[0]] * 10)    # nobody reads: the pipe (64 KiB) fills, then the buffer
        assert sink.dropped > 0 and ctr.slots[G_ACCESS_LOG_DROPPED] == sink.dropped
        assert len(sink.pending) <= 8192
        data = bytearray()
        while True:
            for _ in range(100):
                try:
                    chunk = os.read(reader, 1 << 20)
                except BlockingIOError:
                    break
                data += chunk
            sink.flush()
            if not sink.pending:
                try:
                    data += os.read(reader, 1 << 20)
                except BlockingIOError:
                    pass
                break
        lines = bytes(data).split(b"\n")
        assert lines[-1] == b""
        assert all(len(l) + 1 == line_len for l in lines[:-1]), "a torn line"
        assert len(lines) - 1 + sink.dropped == total
    finally:
        os.close(reader)
        os.close(r)
        os.close(w)


def test_sink_appends_to_a_regular_file(tmp_path):
    path = tmp_path / "access.log"
    sink = AccessLogSink(str(path), AccessLog("json", names=names()), _Counters(), cap=1 << 20)
    sink.write(CASES[:3])
    sink.tcp_closed(T0, 1000, 10, 20, 16, 80, "10.0.0.1:1234", "10.96.0.1:80", "10.96.0.1:80", 0)
    sink.close()
    docs = [orjson.loads(l) for l in path.read_bytes().splitlines()]
    assert [d["response_code"] for d in docs] == [200, 201, 404, 0]
    assert docs[3]["upstream_cluster"] == "PassthroughCluster" and docs[3]["method"] is None
    assert docs[3]["bytes_received"] == 10 and docs[3]["downstream_local_address"] == "10.96.0.1:80"


def test_fifo_without_reader_drops_until_one_comes(tmp_path):
    fifo = tmp_path / "late.fifo"
    os.mkfifo(fifo)
    now = [0.0]
    ctr = _Counters()
    sink = AccessLogSink(str(fifo), AccessLog("text", names=names()), ctr, cap=4096, clock=lambda: now[0])
    assert sink.fd < 0
    for _ in range(200):
        sink.write([CASES[0]])
    assert sink.dropped > 0
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        now[0] = 5.0
        sink.flush()
        got = os.read(reader, 1 << 20)
        assert got.count(b"\n") + sink.dropped == 200
    finally:
        sink.close()
        os.close(reader)
