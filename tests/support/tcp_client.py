"""Client-side socket operations the tests share: connect, exact reads,
echo round trips, and the "is this port relaying?" probe.

Run as a script (`python -m tests.support.tcp_client --connect HOST:PORT`)
to make one echo-verified transfer from inside a network namespace; it
prints one JSON line: local/peer address, bytes, hashes and whether the
echo matched.
"""
import argparse
import hashlib
import json
import socket
import sys
import threading

from .payload import stream_chunks


def connect(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 262144))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock: socket.socket, limit: int = 64 << 20) -> bytes:
    buf = bytearray()
    while True:
        chunk = sock.recv(262144)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise AssertionError(f"more than {limit} bytes without EOF")


def echo_once(sock: socket.socket, payload: bytes) -> bytes:
    """Sends payload and returns the same number of bytes read back."""
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def short_echo(host: str, port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """One whole connection: connect, send, half-close, read to EOF."""
    with connect(host, port, timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_until_eof(s)


def relays(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a new connection to host:port gets its bytes echoed back.

    Refused, reset, closed, or left unanswered for `timeout` all mean no."""
    try:
        s = connect(host, port, timeout)
    except OSError:
        return False
    with s:
        try:
            s.sendall(b"are-you-relaying")
            return recv_exactly(s, 16) == b"are-you-relaying"
        except (OSError, EOFError):
            return False


def bytes_before_close(host: str, port: int, payload: bytes = b"hello?", timeout: float = 5.0) -> bytes:
    """Connects, sends `payload`, and returns what arrives before the peer
    closes. A reset at any point - even one that beats connect() back to us
    on loopback - ends the connection too. A connection left open past
    `timeout` raises TimeoutError."""
    try:
        s = connect(host, port, timeout)
    except ConnectionResetError:
        return b""
    got = bytearray()
    with s:
        try:
            s.sendall(payload)
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return bytes(got)


def stream_through(sock: socket.socket, total: int, seed: int) -> dict:
    """Sends `total` deterministic bytes while reading the echo concurrently,
    then half-closes and reads to EOF. Returns sizes and hashes of both."""
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = 0
    errors: list[BaseException] = []

    def sender():
        try:
            for chunk in stream_chunks(total, seed):
                sent.update(chunk)
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            errors.append(exc)

    t = threading.Thread(target=sender)
    t.start()
    buf = bytearray(262144)
    view = memoryview(buf)
    try:
        while True:
            n = sock.recv_into(buf)
            if n == 0:
                break
            got.update(view[:n])
            received += n
    finally:
        t.join()
    if errors:
        raise errors[0]
    return {"sent": total, "sent_sha256": sent.hexdigest(),
            "received": received, "received_sha256": got.hexdigest()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connect", required=True, help="HOST:PORT ([v6]:port for IPv6)")
    ap.add_argument("--bytes", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--expect-prefix", default="", help="bytes the upstream sends first (a tag)")
    args = ap.parse_args(argv)
    host, _, port = args.connect.rpartition(":")
    host = host.strip("[]")
    out: dict = {"target": [host, int(port)]}
    try:
        with connect(host, int(port), args.timeout) as s:
            out["local"] = list(s.getsockname()[:2])
            prefix = args.expect_prefix.encode()
            out["prefix"] = recv_exactly(s, len(prefix)).decode(errors="replace") if prefix else ""
            out.update(stream_through(s, args.bytes, args.seed))
        out["echo_ok"] = (out["prefix"] == args.expect_prefix
                          and out["received"] == out["sent"]
                          and out["received_sha256"] == out["sent_sha256"])
    except (OSError, EOFError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["echo_ok"] = False
    print(json.dumps(out), flush=True)
    return 0 if out["echo_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
