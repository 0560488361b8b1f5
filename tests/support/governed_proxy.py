"""A real proxy for the traffic-governance tests (issue 5), and its config.

Config documents use the contract's shape (/work/stash/gov-spec.md):
clusters carry Envoy's snake_case policies (circuit_breakers,
outlier_detection, health_checks, lb_policy, ...), VirtualService routes
carry Istio's camelCase ones (retries, timeout, fault, localRateLimit, ...).
start_governed() runs the proxy with one explicit HTTP listener, 2 workers
and a JSON access log (its response_flags are how a test sees UO, UH, UT,
RL and FI), and returns a GovernedProxy to observe and reconfigure it.

Metric names are never written here: metric(CONST) reads the name from
fastproxy/stats/names.py, where the manager declares every series.
"""
from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

from .http_upstreams import http_listener
from .metrics import Metrics
from .polling import poll_until
from .ports import free_port
from .proxy_config import dump, hermetic_settings, proxy_config, write_config

HOST = "svc.local"


def _address(upstream) -> str:
    return upstream if isinstance(upstream, str) else upstream.address


def gov_cluster(name: str, *upstreams, weights: list[int] | None = None, **policy) -> dict:
    """A cluster of HttpUpstreams (or "host:port" strings), with policy fields as given."""
    eps = []
    for i, up in enumerate(upstreams):
        ep = {"address": _address(up)}
        if weights is not None:
            ep["weight"] = weights[i]
        eps.append(ep)
    return {"name": name, "endpoints": eps, **policy}


def gov_route(cluster: str, *, match: list[dict] | None = None, name: str | None = None, **policy) -> dict:
    """One http[] rule to `cluster`, with Istio policy fields (retries, timeout, ...)."""
    rule: dict = {}
    if name:
        rule["name"] = name
    if match:
        rule["match"] = match
    rule["route"] = [{"destination": {"host": cluster}}]
    rule.update(policy)
    return rule


def gov_vs(hosts: str | list[str], *rules: dict, **top) -> dict:
    """A VirtualService spec; `top` holds fields next to hosts (localRateLimit)."""
    return {"hosts": [hosts] if isinstance(hosts, str) else list(hosts), "http": list(rules), **top}


@dataclass
class GovernedProxy:
    proxy: object          # tests.support.proxy_process.ProxyProcess
    port: int
    doc: dict
    log: Path

    @property
    def admin(self):
        return self.proxy.admin

    # -- observing ------------------------------------------------------------------------

    def metrics(self) -> Metrics:
        return self.admin.metrics()

    def metric(self, const: str, **labels) -> float:
        """The value of the series fastproxy.stats.names.<const> declares
        (KeyError when the scrape has no such series)."""
        return self.metrics().value(metric_name(const), **labels)

    def metric_or_zero(self, const: str, **labels) -> float:
        return self.metrics().value_or_zero(metric_name(const), **labels)

    def log_lines(self) -> list[dict]:
        """Every complete JSON access log line written so far."""
        try:
            text = self.log.read_text()
        except FileNotFoundError:
            return []
        complete = text[:text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def wait_log_lines(self, count: int, timeout: float = 10.0, where=None) -> list[dict]:
        """At least `count` lines (those `where(line)` accepts, when given)."""
        def enough():
            lines = [l for l in self.log_lines() if where is None or where(l)]
            return lines if len(lines) >= count else None
        return poll_until(enough, timeout=timeout, message=f"{count} access log lines")

    # -- reconfiguring --------------------------------------------------------------------

    def apply(self, doc: dict, via: str = "post", timeout: float = 10.0) -> int:
        """Reconfigures live (POST /config, or the rewritten file + SIGHUP) and
        waits until every worker applied the new table; its generation."""
        admin = self.admin
        before = admin.generation()
        if via == "post":
            status, body = admin.post("/config", dump(doc))
            assert status == 200, f"POST /config -> {status}: {body[:500]!r}"
        elif via == "sighup":
            write_config(self.proxy.config_path, doc)
            self.proxy.send_signal(signal.SIGHUP)
        else:
            raise ValueError(via)
        gen = poll_until(lambda: (g := admin.generation()) > before and g, timeout=timeout,
                         message=f"{via} reload to bump the generation past {before}")
        poll_until(lambda: all(w["applied_generation"] >= gen for w in admin.workers()), timeout=timeout,
                   message=f"every worker applied generation {gen}")
        self.doc = doc
        return gen


def metric_name(const: str) -> str:
    from fastproxy.stats import names
    metric = getattr(names, const, None)
    if metric is None:
        raise KeyError(f"fastproxy.stats.names has no {const} (the governance metrics are declared there)")
    return metric.name


def flags_of(line: dict) -> set[str]:
    """The access log line's response flags as a set of Envoy letters."""
    flags = line.get("response_flags") or "-"
    return set() if flags == "-" else set(flags.split(","))


def governed_doc(port: int, clusters: list[dict], virtual_services: list[dict] | None, log: Path,
                 default_cluster: str | None = None, listener: dict | None = None, workers: int = 2,
                 **settings) -> dict:
    """The whole config document (see start_governed)."""
    lst = http_listener("web", port, default_cluster)
    lst.update(listener or {})
    settings = hermetic_settings(workers=workers, access_log=str(log), access_log_format="json",
                                 config_poll_ms=0, **settings)
    doc = proxy_config(settings, [lst], clusters)
    if virtual_services is not None:
        doc["virtual_services"] = virtual_services
    return doc


def start_governed(start_proxy, tmp_path: Path, clusters: list[dict], virtual_services: list[dict] | None,
                   *, default_cluster: str | None = None, listener: dict | None = None, workers: int = 2,
                   name: str = "gov", **settings) -> GovernedProxy:
    """A 2-worker proxy: one HTTP listener "web" on a free port (extra
    listener fields in `listener`), the clusters and virtual services given,
    a JSON access log at tmp_path/<name>.access.log, the file poller off
    (reloads are explicit). The config file is tmp_path/<name>.yaml."""
    port = free_port()
    log = tmp_path / f"{name}.access.log"
    doc = governed_doc(port, clusters, virtual_services, log, default_cluster, listener, workers, **settings)
    proxy = start_proxy(doc, config_path=tmp_path / f"{name}.yaml")
    return GovernedProxy(proxy, port, doc, log)
