"""Issue 6, acceptance 4: `fastproxy status` against a running proxy, text and
JSON, against golden files (volatile values normalised: ports, paths, rates,
active connections), plus the rate arithmetic and the rules filter.

Regenerate the golden files with FASTPROXY_UPDATE_GOLDEN=1, then read every diff by eye.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fastproxy.status import build, interception_rules
from tests.support.http_upstreams import HttpUpstream, get, route_to, start_http_proxy
from tests.support.polling import poll_until

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FASTPROXY_UPDATE_GOLDEN") == "1"
ROOT = Path(__file__).resolve().parents[2]


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{name} missing; FASTPROXY_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), f"{name} differs; FASTPROXY_UPDATE_GOLDEN=1 regenerates"


def _status(admin_port: int, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "fastproxy", "status", "--admin", f"127.0.0.1:{admin_port}",
                        "--interval", "0.3", "--no-rules", *args],
                       capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _normalise(text: str, ports: dict[int, str], tmp: str) -> str:
    text = text.replace(tmp, "<TMP>")
    for port, name in ports.items():
        text = re.sub(rf"(?<=:){port}\b", f"<{name}>", text)
    text = re.sub(r"\d+\.\d\d rq/s", "<RATE> rq/s", text)
    text = re.sub(r'"requests_per_s": [0-9.]+', '"requests_per_s": "<RATE>"', text)
    text = re.sub(r"\d+ active connections", "<N> active connections", text)
    text = re.sub(r'"active_connections": \d+', '"active_connections": "<N>"', text)
    text = re.sub(r'"window_s": [0-9.]+', '"window_s": "<S>"', text)
    text = re.sub(r"over [0-9.]+s", "over <S>s", text)
    text = re.sub(r"fastproxy \d+\.\d+\.\d+\S*", "fastproxy <VERSION>", text)
    text = re.sub(r'"version": "[^"]+"', '"version": "<VERSION>"', text)
    return text


def _proxy(start_proxy):
    vs = [{"name": "reviews", "hosts": ["reviews.local"],
           "http": [{"name": "v2", "match": [{"uri": {"prefix": "/v2"}}, {"headers": {"x-canary": {"exact": "yes"}}}],
                     "route": route_to(("v2", 80), ("v1", 20))},
                    {"name": "moved", "match": [{"uri": {"exact": "/old"}}],
                     "redirect": {"uri": "/new", "redirectCode": 301}},
                    {"name": "default", "route": route_to("v1")}]},
          {"hosts": ["static.local"], "http": [{"directResponse": {"status": 418, "body": {"string": "teapot"}}}]}]
    return vs


def test_status_golden(start_proxy, tmp_path):
    with HttpUpstream("v1") as v1, HttpUpstream("v2") as v2:
        proxy, port, doc = start_http_proxy(start_proxy, {"v1": v1.address, "v2": [v2.address, v2.address]},
                                            virtual_services=_proxy(start_proxy), workers=2)
        for i in range(10):
            assert get(port, f"/x/{i}", "reviews.local").status == 200
        admin = doc["settings"]["admin_port"]
        poll_until(lambda: proxy.admin.metrics().value("fastproxy_cluster_upstream_rq_total",
                                                       cluster_name="v1") == 10, timeout=5, message="10 requests")
        ports = {port: "HTTP_PORT", v1.port: "V1_PORT", v2.port: "V2_PORT", admin: "ADMIN_PORT",
                 doc["settings"]["outbound_port"]: "OUT_PORT", doc["settings"]["inbound_port"]: "IN_PORT"}
        text = _status(admin)
        as_json = _status(admin, "-o", "json")
    parsed = json.loads(as_json)
    assert [c["requests_total"] for c in parsed["clusters"]] == [10, 0]
    assert parsed["interception"]["visible"] is False
    _golden("status.txt", _normalise(text, ports, str(tmp_path)))
    _golden("status.json", _normalise(as_json, ports, str(tmp_path)))


def test_status_reports_a_rejected_config(start_proxy, tmp_path):
    with HttpUpstream("v1") as v1:
        proxy, _, doc = start_http_proxy(start_proxy, {"v1": v1.address}, default_cluster="v1")
        status, _ = proxy.admin.post("/config", b"clusters: [{name: 1}]\n")
        assert status == 400
        out = _status(doc["settings"]["admin_port"])
    assert "last rejected config: admin POST /config:" in out


def test_status_fails_cleanly_without_a_proxy():
    from tests.support.ports import free_port
    p = subprocess.run([sys.executable, "-m", "fastproxy", "status", "--admin", f"127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
    assert p.returncode == 1 and "cannot read" in p.stderr


def test_rates_come_from_two_scrapes():
    before = 'fastproxy_cluster_upstream_rq_total{cluster_name="a"} 100\n'
    after = ('# TYPE x counter\nfastproxy_cluster_upstream_rq_total{cluster_name="a"} 150\n'
             'fastproxy_cluster_upstream_rq_total{cluster_name="b"} 7\n')
    config = {"listeners": [], "clusters": [{"name": "a", "endpoints": []}, {"name": "b", "endpoints": []}],
              "virtual_services": [{"hosts": ["h"], "http": [{"route": [{"destination": {"host": "a"}}]},
                                                             {"route": [{"destination": {"host": "a"}, "weight": 50},
                                                                        {"destination": {"host": "b"}, "weight": 50}]}]}]}
    doc = build({"config": config, "generation": 4}, [], before, after, 2.0,
                {"visible": False, "rules": [], "why": "x"})
    assert [c["requests_per_s"] for c in doc["clusters"]] == [25.0, 3.5]
    assert [(r["requests_per_s"], r["shared"]) for r in doc["routes"]] == [(25.0, True), (28.5, True)]


def test_only_fastproxy_rules_are_shown():
    save = ("*nat\n:PREROUTING ACCEPT [0:0]\n:FASTPROXY_OUTPUT - [0:0]\n"
            '-A OUTPUT -p tcp -m comment --comment "fastproxy: enter fastproxy outbound capture" -j FASTPROXY_OUTPUT\n'
            "-A OUTPUT -j DOCKER\nCOMMIT\n")
    assert interception_rules({"iptables-save": save, "nft": ""}) == [
        "iptables-save nat: :FASTPROXY_OUTPUT - [0:0]",
        'iptables-save nat: -A OUTPUT -p tcp -m comment --comment "fastproxy: enter fastproxy outbound capture" '
        "-j FASTPROXY_OUTPUT",
    ]
