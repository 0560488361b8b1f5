"""Issue 3, acceptance 4: protocol detection on the outbound capture listener
(15001), behind the rules of the real `fastproxy init` in a network
namespace, the proxy running as gid 1337 (tests/privileged/lab.py).

- A server-first protocol (the upstream sends a banner before the client
  says anything, as SMTP does) works through 15001 with < 100 ms added to
  the time from connect to banner (the client-silence detection timeout,
  50 ms by default); a port in opaque_ports skips detection (no delay).
- The HTTP/2 preface and a TLS ClientHello pass through as TCP: the
  upstream receives the exact bytes (an echo upstream sends them back).
- An HTTP/1 request goes through the HTTP path (the upstream sees the
  headers the proxy adds), except on an opaque port, where it is relayed
  byte for byte.
- Each outcome is counted in fastproxy_listener_protocol_detected_total.

Needs root, `ip`, `iptables`, `ip6tables`, `setpriv` and `curl`."""
import json
import statistics
import subprocess

import pytest

from tests.privileged.lab import PROXY_GID, lab_settings
from tests.support.http_upstreams import HttpUpstreamProcess
from tests.support.netns import B_V4, B_V6
from tests.support.polling import poll_until
from tests.support.proxy_config import proxy_config
from tests.support.proxy_process import PYTHON, REPO_ROOT, hermetic_env

pytestmark = pytest.mark.privileged

BANNER = "220 mail.example ESMTP ready\r\n"
BANNER_PORT = 2525          # not opaque by default: detection runs and times out
OPAQUE_BANNER_PORT = 2526   # declared opaque in the config below
HTTP_PORT = 8080
OPAQUE_HTTP_PORT = 6379     # in the default opaque set (Redis)
ECHO_PORT = 9443
OPAQUE_PORTS = "6379,2526"
ADDED_DELAY_LIMIT = 0.100
ROUNDS = 7
DETECTED = "fastproxy_listener_protocol_detected_total"

# A client that times connect -> first `len(expect)` bytes (a banner), or sends
# `send` and times until as many bytes came back; prints one JSON line.
_CLIENT = r"""
import json, socket, sys, time
host, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
send, expect = bytes.fromhex(sys.argv[4]), bytes.fromhex(sys.argv[5])
out = {"times": [], "got": [], "error": None}
try:
    for _ in range(rounds):
        t0 = time.perf_counter()
        s = socket.create_connection((host, port), timeout=5)
        if send:
            s.sendall(send)
        got = b""
        while len(got) < len(expect):
            d = s.recv(65536)
            if not d:
                break
            got += d
        out["times"].append(time.perf_counter() - t0)
        if not send:   # a banner: then check the relay works the other way too
            s.sendall(b"EHLO client\r\n")
            back = b""
            while len(back) < 13:
                d = s.recv(65536)
                if not d:
                    break
                back += d
            got += back
        out["got"].append(got.hex())
        s.close()
except OSError as exc:
    out["error"] = repr(exc)
print(json.dumps(out))
"""


def _init(lab) -> None:
    argv = lab.pair.exec_argv(lab.pair.a, PYTHON, "-m", "fastproxy", "init", "-g", str(PROXY_GID),
                              "-m", "REDIRECT", "--dual-stack")
    out = subprocess.run(argv, cwd=REPO_ROOT, env=hermetic_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"fastproxy init -> {out.returncode}:\n{out.stderr}"


def _client(lab, host: str, port: int, send: bytes = b"", expect: bytes = b"", rounds: int = 1,
            as_proxy_gid: bool = False) -> dict:
    argv = lab.pair.exec_argv(lab.pair.a)
    if as_proxy_gid:      # not captured: the direct baseline
        argv += ["setpriv", f"--regid={PROXY_GID}", "--clear-groups"]
    argv += [PYTHON, "-c", _CLIENT, host, str(port), str(rounds), send.hex(), expect.hex()]
    out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip(), f"client printed nothing: {out.stderr}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] is None, result
    return result


def _curl(lab, url: str) -> dict:
    out = lab.pair.run_in(lab.pair.a, "curl", "-sS", "--max-time", "5", url, check=False)
    assert out.returncode == 0, f"curl {url}: {out.stderr}"
    return json.loads(out.stdout)


def _start(lab, **settings):
    # No `listeners`: the default capture listeners (virtualOutbound on 15001, virtualInbound on 15006).
    proxy = lab.start_proxy(proxy_config(lab_settings(opaque_ports=OPAQUE_PORTS, **settings), None, []))
    _init(lab)
    return proxy


def _detected(proxy, protocol: str) -> float:
    return proxy.admin.metrics().value_or_zero(DETECTED, listener_name="virtualOutbound", protocol=protocol)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_server_first_protocol_adds_under_100ms(lab, family):
    host = B_V4 if family == 4 else B_V6
    lab.start_upstream(BANNER_PORT, tag=BANNER)
    lab.start_upstream(OPAQUE_BANNER_PORT, tag=BANNER)
    proxy = _start(lab)
    expect = BANNER.encode()

    direct = _client(lab, host, BANNER_PORT, expect=expect, rounds=ROUNDS, as_proxy_gid=True)
    captured = _client(lab, host, BANNER_PORT, expect=expect, rounds=ROUNDS)
    opaque = _client(lab, host, OPAQUE_BANNER_PORT, expect=expect, rounds=ROUNDS)

    for result in (direct, captured, opaque):
        assert all(bytes.fromhex(g) == expect + b"EHLO client\r\n" for g in result["got"]), result
    # medians, without each client's first round (neighbour discovery, first connect)
    base = statistics.median(direct["times"][1:])
    added = statistics.median(captured["times"][1:]) - base
    added_opaque = statistics.median(opaque["times"][1:]) - base
    assert added < ADDED_DELAY_LIMIT, f"banner {added * 1000:.1f} ms later through 15001 ({captured['times']})"
    # the banner waited for the detection timeout (so it really went through detection) ...
    assert added >= 0.030, f"banner only {added * 1000:.1f} ms later: was detection skipped?"
    # ... while an opaque port skips it
    assert added_opaque < 0.025, f"opaque port added {added_opaque * 1000:.1f} ms"
    poll_until(lambda: _detected(proxy, "timeout") == ROUNDS, timeout=5,
               message=f"{DETECTED}{{protocol=timeout}} == {ROUNDS}")
    assert _detected(proxy, "opaque") == ROUNDS


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = bytes.fromhex("000000040000000000")


def _client_hello(sni: bytes = b"svc.example") -> bytes:
    sni_ext = (b"\x00\x00" + (len(sni) + 5).to_bytes(2, "big") + (len(sni) + 3).to_bytes(2, "big")
               + b"\x00" + len(sni).to_bytes(2, "big") + sni)
    body = (b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x00\x04\x13\x01\x13\x02" + b"\x01\x00"
            + len(sni_ext).to_bytes(2, "big") + sni_ext)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


@pytest.mark.parametrize("name,payload", [
    ("http2", H2_PREFACE + H2_SETTINGS + b"\x00\x00\x00\x01\x05\x00\x00\x00\x01"),
    ("tls", _client_hello() + b"\x17\x03\x03\x00\x05hello"),
], ids=["http2-preface", "tls-clienthello"])
def test_http2_and_tls_pass_through_as_tcp_byte_exact(lab, name, payload):
    echo = lab.start_upstream(ECHO_PORT)
    proxy = _start(lab)
    result = _client(lab, B_V4, ECHO_PORT, send=payload, expect=payload, rounds=3)
    assert all(bytes.fromhex(g) == payload for g in result["got"]), (payload, result)
    assert len(echo.peers()) == 3
    poll_until(lambda: _detected(proxy, name) == 3, timeout=5, message=f"{DETECTED}{{protocol={name}}} == 3")
    assert _detected(proxy, "http1") == 0


def test_http1_goes_through_the_http_path_and_opaque_ports_do_not(lab):
    prefix = lab.pair.exec_argv(lab.pair.b)
    up = HttpUpstreamProcess([f"0.0.0.0:{HTTP_PORT}", f"[::]:{HTTP_PORT}",
                              f"0.0.0.0:{OPAQUE_HTTP_PORT}"], name="remote", prefix=prefix)
    try:
        proxy = _start(lab)
        via_http = _curl(lab, f"http://{B_V4}:{HTTP_PORT}/detected?x=1")
        via_http6 = _curl(lab, f"http://[{B_V6}]:{HTTP_PORT}/detected6")
        via_opaque = _curl(lab, f"http://{B_V4}:{OPAQUE_HTTP_PORT}/opaque")
    finally:
        up.stop()

    for rec in (via_http, via_http6):
        names = {k.lower() for k, _ in rec["headers"]}
        assert "x-request-id" in names, f"not through the HTTP path: {rec['raw_head']}"
        assert rec["peer"][0] in ("192.0.2.1", "2001:db8::1"), rec["peer"]
    assert via_http["target"] == "/detected?x=1" and via_http6["target"] == "/detected6"
    # Relayed as TCP: exactly curl's request head, nothing added.
    opaque_names = [k.lower() for k, _ in via_opaque["headers"]]
    assert opaque_names == ["host", "user-agent", "accept"], via_opaque["raw_head"]
    poll_until(lambda: _detected(proxy, "http1") == 2, timeout=5, message=f"{DETECTED}{{protocol=http1}} == 2")
    m = proxy.admin.metrics()
    assert m.value_or_zero("fastproxy_listener_downstream_rq_total", listener_name="virtualOutbound",
                           response_code_class="2xx") == 2
    # the connection to the opaque port counts as opaque (stats/names.py: "or an opaque port")
    assert _detected(proxy, "opaque") == 1
