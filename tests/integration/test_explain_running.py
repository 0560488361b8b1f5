"""Issue 6, acceptance 4: `fastproxy explain DST --admin HOST:PORT --host ...` against a
running proxy, text and JSON, against golden files (volatile values normalised:
ports, paths, version), and after POST /config explain sees the new route.

explain --admin reads the config document the proxy loaded from /config_dump
(the "document" field) with the settings it runs with, so what it explains is
the proxy's routing table, not a file on this side.

Regenerate the golden files with FASTPROXY_UPDATE_GOLDEN=1, then read every diff by eye.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.http_upstreams import HttpUpstream, get, route_to, start_http_proxy

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FASTPROXY_UPDATE_GOLDEN") == "1"
ROOT = Path(__file__).resolve().parents[2]


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{name} missing; FASTPROXY_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), f"{name} differs; FASTPROXY_UPDATE_GOLDEN=1 regenerates"


def _explain(admin_port: int, dst: str, *args: str) -> str:
    # This shell's FASTPROXY_* settings must not matter: the proxy's own are used.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTPROXY_")}
    p = subprocess.run([sys.executable, "-m", "fastproxy", "explain", dst, "--admin", f"127.0.0.1:{admin_port}",
                        *args], capture_output=True, text=True, timeout=30, cwd=ROOT, env=env, check=False)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _normalise(text: str, ports: dict[int, str], tmp: str) -> str:
    text = text.replace(tmp, "<TMP>")
    for port, name in ports.items():
        text = re.sub(rf"(?<=:){port}\b", f"<{name}>", text)        # host:port
        text = re.sub(rf'(?<=": ){port}\b', f'"<{name}>"', text)   # "port": N (JSON)
    return text


def _virtual_services() -> list:
    return [{"name": "reviews", "hosts": ["reviews.local"],
             "http": [{"name": "v2", "match": [{"uri": {"prefix": "/v2"}},
                                               {"headers": {"x-canary": {"exact": "yes"}}}],
                       "route": route_to(("v2", 80), ("v1", 20))},
                      {"name": "moved", "match": [{"uri": {"exact": "/old"}}],
                       "redirect": {"uri": "/new", "redirectCode": 301}},
                      {"name": "default", "match": [{"method": {"exact": "GET"}}], "route": route_to("v1")}]},
            {"hosts": ["*.static.local"], "http": [{"directResponse": {"status": 418, "body": {"string": "teapot"}}}]}]


# name -> explain arguments after DST (the proxy's HTTP listener)
CASES = {
    "split": ("--host", "reviews.local", "--path", "/v2/items"),
    "header": ("--host", "reviews.local:8080", "--header", "X-Canary: yes"),
    "redirect": ("--host", "reviews.local", "--path", "/old?page=1"),
    "direct": ("--host", "img.static.local"),
    "no-match": ("--host", "reviews.local", "--method", "DELETE"),
}


def test_explain_running_golden(start_proxy, tmp_path):
    with HttpUpstream("v1") as v1, HttpUpstream("v2") as v2:
        proxy, port, doc = start_http_proxy(start_proxy, {"v1": v1.address, "v2": [v2.address, v2.address]},
                                            virtual_services=_virtual_services())
        admin = doc["settings"]["admin_port"]
        ports = {port: "HTTP_PORT", v1.port: "V1_PORT", v2.port: "V2_PORT", admin: "ADMIN_PORT",
                 doc["settings"]["outbound_port"]: "OUT_PORT", doc["settings"]["inbound_port"]: "IN_PORT"}
        texts, docs = {}, {}
        for name, args in CASES.items():
            texts[name] = _explain(admin, f"127.0.0.1:{port}", *args)
            docs[name] = _explain(admin, f"127.0.0.1:{port}", *args, "-o", "json")
        # What explain says is what the proxy does.
        assert get(port, "/old?page=1", "reviews.local").status == 301
        assert get(port, "/", "img.static.local").status == 418
        assert get(port, "/", "reviews.local", method="DELETE").status == 404
    parsed = {name: json.loads(d) for name, d in docs.items()}
    assert [(d["cluster"], d["weight"]) for d in parsed["split"]["http_route"]["destinations"]] == [
        ("v2", 80), ("v1", 20)]
    assert parsed["header"]["http_route"]["route"] == "v2"
    assert parsed["direct"]["http_route"]["matched_host"] == "*.static.local"
    assert parsed["no-match"]["http_route"]["fallback"]["kind"] == "not_found"
    generation = proxy.admin.config_dump()["generation"]
    assert parsed["split"]["inputs"]["config"].startswith(f"admin 127.0.0.1:{admin} generation {generation} ")
    out = "".join(f"$ fastproxy explain <DST> --admin <ADMIN> {shlex.join(args)}\n{texts[name]}\n"
                  for name, args in CASES.items())
    _golden("explain-running.txt", _normalise(out, ports, str(tmp_path)))
    as_json = json.dumps({name: parsed[name] for name in CASES}, indent=2) + "\n"
    _golden("explain-running.json", _normalise(as_json, ports, str(tmp_path)))


def test_explain_sees_a_posted_route(start_proxy):
    with HttpUpstream("v1") as v1, HttpUpstream("v2") as v2:
        proxy, port, doc = start_http_proxy(start_proxy, {"v1": v1.address, "v2": v2.address},
                                            virtual_services=_virtual_services())
        admin = doc["settings"]["admin_port"]
        before = json.loads(_explain(admin, f"127.0.0.1:{port}", "--host", "ratings.local", "-o", "json"))
        assert before["http_route"]["kind"] == "no_match"

        doc["virtual_services"] = [*_virtual_services(), {"name": "ratings", "hosts": ["ratings.local"],
                                                          "http": [{"name": "all", "route": route_to("v2")}]}]
        status, body = proxy.admin.post("/config", yaml.safe_dump(doc).encode())
        assert status == 200, body
        generation = json.loads(body)["generation"]

        after = json.loads(_explain(admin, f"127.0.0.1:{port}", "--host", "ratings.local", "-o", "json"))
        text = _explain(admin, f"127.0.0.1:{port}", "--host", "ratings.local")
        assert get(port, "/", "ratings.local").status == 200
        assert v2.requests == 1
    h = after["http_route"]
    assert (h["kind"], h["virtual_service"], h["route"]) == ("route", "ratings", "all")
    assert [d["cluster"] for d in h["destinations"]] == ["v2"]
    assert f"generation {generation} " in after["inputs"]["config"]
    assert before["inputs"]["config"] != after["inputs"]["config"]
    assert text.rstrip().endswith("reaches listener web -> HTTP route ratings/all -> cluster v2")
