"""The echo upstream (echo_server.py) as a child process, optionally under a
command prefix such as `ip netns exec NS`. It reports every accepted
connection's peer and local address, which tests read from `peers()`.
HttpUpstreamProcess does the same for the HTTP upstream of
http_upstreams.py: one JSON record per request served.
"""
import json
import queue
import subprocess
import threading

from .proxy_process import PYTHON, REPO_ROOT


class EchoProcess:
    module = "tests.support.echo_server"

    def __init__(self, listen: list[str], tag: str = "", prefix: list[str] | None = None):
        argv = [*(prefix or []), PYTHON, "-m", self.module]
        for address in listen:
            argv += ["--listen", address]
        argv += self._tag_args(tag)
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self._lines: queue.Queue = queue.Queue()
        self._accepted: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()
        try:
            first = json.loads(self._lines.get(timeout=15))
        except queue.Empty:
            self.stop()
            raise AssertionError(f"echo upstream did not start: {self.proc.stderr.read()}")
        self.listening = first["listening"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)

    @staticmethod
    def _tag_args(tag: str) -> list[str]:
        return ["--tag", tag] if tag else []

    def peers(self) -> list[dict]:
        """Every connection accepted so far: {"peer": [host, port], "local": [...]}."""
        while True:
            try:
                self._accepted.append(json.loads(self._lines.get_nowait()))
            except queue.Empty:
                return list(self._accepted)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class HttpUpstreamProcess(EchoProcess):
    """http_upstreams.HttpUpstream named `tag`, in a child process; records()
    are the requests it served (as peers() for the echo server)."""
    module = "tests.support.http_upstreams"

    @staticmethod
    def _tag_args(tag: str) -> list[str]:
        return ["--name", tag] if tag else []

    def records(self) -> list[dict]:
        return self.peers()
