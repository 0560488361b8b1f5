"""The proxy's admin HTTP API (127.0.0.1:admin_port).

AdminClient talks to it from this process; NetnsAdminClient does the same
from inside a network namespace through `ip netns exec NS curl`.
"""
import http.client
import json
import subprocess

from .metrics import Metrics


class AdminClient:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.host = host
        self.port = port

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/yaml", timeout: float = 5.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: bytes = b"", content_type: str = "application/yaml",
             timeout: float = 10.0) -> tuple[int, bytes]:
        return self.request("POST", path, body=body, content_type=content_type, timeout=timeout)

    def is_ready(self) -> bool:
        status, _ = self.get("/ready", timeout=2.0)
        return status == 200

    def get_json(self, path: str):
        status, body = self.get(path)
        assert status == 200, f"GET {path} -> {status}: {body[:500]!r}"
        return json.loads(body)

    def workers(self) -> list[dict]:
        return self.get_json("/workers")

    def config_dump(self) -> dict:
        return self.get_json("/config_dump")

    def generation(self) -> int:
        return int(self.config_dump()["generation"])

    def metrics(self) -> Metrics:
        status, body = self.get("/stats/prometheus")
        assert status == 200, f"GET /stats/prometheus -> {status}: {body[:500]!r}"
        return Metrics(body.decode())


class NetnsAdminClient(AdminClient):
    """Same API, reached with curl run inside network namespace `netns`."""

    def __init__(self, netns: str, port: int, host: str = "127.0.0.1"):
        super().__init__(port, host)
        self.netns = netns

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/yaml", timeout: float = 5.0) -> tuple[int, bytes]:
        marker = b"\n--fastproxy-test-status:"
        cmd = ["ip", "netns", "exec", self.netns, "curl", "-sS", "-X", method,
               "--max-time", str(timeout), "-w", marker.decode() + "%{http_code}",
               f"http://{self.host}:{self.port}{path}"]
        if body is not None:
            cmd += ["-H", f"Content-Type: {content_type}", "--data-binary", "@-"]
        out = subprocess.run(cmd, input=body or b"", capture_output=True, timeout=timeout + 5)
        if out.returncode != 0:
            raise ConnectionError(f"curl {path} in {self.netns}: rc={out.returncode} {out.stderr.decode()[:300]}")
        payload, _, status = out.stdout.rpartition(marker)
        return int(status), payload
