"""The relay check's client, run inside the container with `exec`: waits for
the proxy's readiness, sends a payload through the explicit listener, and
checks that the echo comes back byte for byte and that the proxy counted it.

usage: relay_client.py LISTEN_PORT ECHO_PORT LISTENER_NAME
Prints one line per check, "ok - ..." or "FAIL - ..."; exits 1 on a failure.
"""
import hashlib
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

LISTEN_PORT, ECHO_PORT, LISTENER = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ADMIN, HEALTH = 15000, 15021
PAYLOAD = os.urandom(1 << 20)  # 1 MiB: more than any socket buffer, so it really streams
failures = 0


def report(ok: bool, what: str) -> None:
    global failures
    failures += not ok
    print(f"{'ok' if ok else 'FAIL'} - {what}", flush=True)


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def echo_upstream_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", ECHO_PORT), timeout=1).close()
        return True
    except OSError:
        return False


def relay() -> bytes:
    received = bytearray()
    with socket.create_connection(("127.0.0.1", LISTEN_PORT), timeout=10) as s:
        def send():
            s.sendall(PAYLOAD)
            s.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send)
        sender.start()
        while chunk := s.recv(65536):
            received += chunk
        sender.join()
    return bytes(received)


report(wait_for(echo_upstream_up, 20), f"echo upstream listening on 127.0.0.1:{ECHO_PORT}")
report(wait_for(lambda: get(ADMIN, "/ready")[0] == 200, 30), "admin /ready is 200")
status, _ = get(HEALTH, "/healthz/ready")
report(status == 200, f"health :{HEALTH}/healthz/ready is 200 (got {status})")
try:
    back = relay()
    report(hashlib.sha256(back).digest() == hashlib.sha256(PAYLOAD).digest(),
           f"relay 127.0.0.1:{LISTEN_PORT} -> echo: {len(PAYLOAD)} bytes sent, {len(back)} echoed, identical")
except OSError as e:
    report(False, f"relay 127.0.0.1:{LISTEN_PORT} -> echo: {e}")


def counted() -> bool:
    status, body = get(ADMIN, "/stats/prometheus")
    want = f'fastproxy_listener_downstream_cx_total{{listener_name="{LISTENER}"}}'
    return status == 200 and any(line.startswith(want) and float(line.split()[-1]) >= 1
                                 for line in body.decode().splitlines())


# The counters reach the admin through the workers' shared memory: allow a moment.
report(wait_for(counted, 10), f"the proxy counted the connection on listener {LISTENER!r}")
sys.exit(1 if failures else 0)
