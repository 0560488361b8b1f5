"""The admin API (15000, loopback) and the metrics/health ports (15090, 15020, 15021).

Envoy's admin paths where they exist: /ready, /stats/prometheus, /config_dump,
/clusters, /listeners, /drain_listeners, /quitquitquit; plus /workers,
/healthz, and POST /config to reload.
"""
from __future__ import annotations

import orjson

from ..stats import prometheus
from .http import Response

JSON = "application/json"


def _json(status: int, doc) -> Response:
    return Response(status, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n", JSON)


class AdminApi:
    """Routes admin requests to the manager. Each handler is small; the work is in the manager."""

    def __init__(self, manager):
        self.m = manager

    async def admin(self, method: str, path: str, query: dict, body: bytes, headers: dict) -> Response:
        m = self.m
        if path == "/ready":
            ready, why = m.readiness()
            return Response(200 if ready else 503, "LIVE\n" if ready else f"{why}\n")
        if path == "/healthz":
            return Response(200, "OK\n")
        if path == "/stats/prometheus" or path == "/stats":
            return self._metrics(headers)
        if path == "/config_dump":
            return _json(200, m.config_dump())
        if path == "/workers":
            return _json(200, m.supervisor.describe())
        if path == "/listeners":
            return _json(200, m.listeners_dump())
        if path == "/clusters":
            # Envoy's: text lines (cluster::host::health_flags::...), or JSON with ?format=json
            if query.get("format", [""])[-1] == "json":
                return _json(200, m.clusters_dump())
            return Response(200, m.clusters_text())
        if path in ("/config", "/quitquitquit", "/drain_listeners") and method != "POST":
            return Response(405, f"{path} needs POST\n", headers={"Allow": "POST"})
        if path == "/config":
            ok, result = m.reload_text(body, source="admin POST /config")
            return _json(200, {"generation": result}) if ok else _json(400, {"error": result})
        if path == "/quitquitquit":
            m.request_shutdown("admin /quitquitquit")
            return Response(200, "OK\n")
        if path == "/drain_listeners":
            m.drain_listeners()
            return Response(200, "OK\n")
        return Response(404, f"no such admin path: {path}\n")

    async def stats_port(self, method: str, path: str, query: dict, body: bytes, headers: dict) -> Response:
        if path == "/stats/prometheus":
            return self._metrics(headers)
        return Response(404, "try /stats/prometheus\n")

    async def merged_port(self, method: str, path: str, query: dict, body: bytes, headers: dict) -> Response:
        """15020: our metrics followed by the app's, when the app declares a scrape port."""
        if path == "/stats/prometheus":
            text, content_type = await self.m.render_merged_metrics(headers.get("accept"), headers)
            return Response(200, text, content_type)
        return Response(404, "try /stats/prometheus\n")

    async def health_port(self, method: str, path: str, query: dict, body: bytes, headers: dict) -> Response:
        if path == "/healthz/ready":
            ready, why = self.m.readiness()
            return Response(200 if ready else 503, "" if ready else f"{why}\n")
        return Response(404, "try /healthz/ready\n")

    def _metrics(self, headers: dict) -> Response:
        content_type = prometheus.negotiate(headers.get("accept"))
        return Response(200, self.m.render_metrics(content_type), content_type)
