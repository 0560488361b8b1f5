"""A hashing sink upstream, run as its own process (its own GIL, so it can
keep up with hundreds of MiB while the test process drives the client).

For every connection it, at the same time, (a) reads to EOF and hashes what
it received, and (b) sends `--send-bytes` deterministic bytes (payload.py,
`--seed`) and then shuts down its write side. When both are done it prints
one JSON line: {"received": n, "received_sha256": h, "sent": n, "sent_sha256": h}.
The first line it prints is {"port": N}.

HashingSink starts it and reads those lines.
"""
import argparse
import hashlib
import json
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # run by path: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.payload import stream_chunks  # noqa: E402


def _serve_one(conn: socket.socket, send_bytes: int, seed: int) -> None:
    sent = hashlib.sha256()
    tx_error: list[str] = []

    def sender():
        try:
            for chunk in stream_chunks(send_bytes, seed):
                sent.update(chunk)
                conn.sendall(chunk)
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            tx_error.append(repr(exc))

    t = threading.Thread(target=sender)
    t.start()
    got = hashlib.sha256()
    received = 0
    rx_error = None
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    try:
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            got.update(view[:n])
            received += n
    except OSError as exc:
        rx_error = repr(exc)
    t.join()
    conn.close()
    print(json.dumps({"received": received, "received_sha256": got.hexdigest(),
                      "sent": send_bytes, "sent_sha256": sent.hexdigest(),
                      "rx_error": rx_error, "tx_error": tx_error[0] if tx_error else None}),
          flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--send-bytes", type=int, required=True)
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args(argv)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    print(json.dumps({"port": ls.getsockname()[1]}), flush=True)
    while True:
        conn, _ = ls.accept()
        threading.Thread(target=_serve_one, args=(conn, args.send_bytes, args.seed), daemon=True).start()


class HashingSink:
    def __init__(self, send_bytes: int, seed: int):
        from .proxy_process import PYTHON, REPO_ROOT
        self.proc = subprocess.Popen(
            [PYTHON, str(Path(__file__).resolve()), "--send-bytes", str(send_bytes), "--seed", str(seed)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self._lines.get(timeout=15)
        self.port = json.loads(first)["port"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)

    def next_result(self, timeout: float) -> dict:
        return json.loads(self._lines.get(timeout=timeout))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> "HashingSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
