"""The manager process: config in, routing tables out, workers supervised, admin served.

Never on the data path. It loads and validates the config (file, env, admin
POST, later xDS), publishes the compiled table into shared memory, keeps N
workers alive, and answers the admin and metrics ports. A rejected reload
leaves the running table in place and is reported in /config_dump and the log.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Mapping

import psutil
import uvloop

from .. import __version__
from ..config.load import default_document, load, parse_text
from ..config.schema import Config, ConfigError
from ..stats import govern, istio, prometheus
from ..stats.names import (
    G_LOOP_LAG_US,
    SERIES_WIDTH,
    Metric,
    series_area,
)
from . import http
from .admin import AdminApi
from .governance import Governance
from .health import HealthChecker
from .lifecycle import watch_app_exit
from .publisher import Publisher, remove_stale_segments
from .supervisor import Supervisor

log = logging.getLogger("fastproxy.manager")

# Settings a live reload cannot change: they size segments, processes or admin sockets.
RESTART_ONLY = ("workers", "admin_address", "admin_port", "stats_port", "merged_metrics_port",
                "health_port", "table_bytes", "counter_slots", "buffer_bytes",
                # they size the governance segment
                "max_endpoints", "max_rate_limits",
                # the counter segment's series area is sized by it
                "max_series_per_worker",
                # the governance segment's endpoint and rate-limit slots
                "max_endpoints", "max_rate_limits",
                # the HTTP engine is built once per worker with these
                "http_max_head_bytes", "http_max_headers", "http_max_request_line_bytes",
                "upstream_pool_max_idle", "upstream_idle_timeout_ms", "http_idle_timeout_s",
                # the worker opens its access log and span exporter once
                "access_log", "access_log_format", "access_log_fields", "access_log_filter",
                "access_log_sampling", "access_log_buffer_bytes", "tracing", "trace_sampling",
                "trace_collector", "trace_format", "workload_name", "workload_namespace", "service_name")

M_RESTARTS = Metric("fastproxy_worker_restarts_total", "counter", "Workers restarted after an unplanned exit.")
M_WORKERS = Metric("fastproxy_workers", "gauge", "Worker processes alive.")
M_GENERATION = Metric("fastproxy_config_generation", "gauge", "Generation of the published routing table.")
M_RELOADS = Metric("fastproxy_config_reloads_total", "counter", "Config reloads, by result.")
M_BUILD = Metric("fastproxy_build_info", "gauge", "Build information.")
M_LOOP_LAG = Metric("fastproxy_worker_event_loop_lag_seconds", "gauge",
                    "How late the worker's last periodic tick ran: its event loop's lag.")
M_RSS = Metric("fastproxy_worker_resident_memory_bytes", "gauge", "Resident memory of the worker process.")
M_CPU = Metric("fastproxy_worker_cpu_seconds_total", "counter",
               "CPU time (user + system) of the worker process (restarts from 0 with the process).")
M_APP_SCRAPE_FAILURES = Metric("fastproxy_app_metrics_scrape_failures_total", "counter",
                               "Scrapes of the app's metrics (merged on the merged metrics port) that failed.")

# The app's own metrics, merged into the merged metrics port's output when
# app_metrics_port is set (Istio: the pod's prometheus.io/port and /path).
APP_METRICS_PORT = "app_metrics_port"
APP_METRICS_PATH = "app_metrics_path"
APP_METRICS_TIMEOUT_S = 5.0
APP_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"

MIGRATE_SYSCTL = "/proc/sys/net/ipv4/tcp_migrate_req"


class Manager:
    def __init__(self, config: Config, config_path: str | None, environ: Mapping[str, str],
                 document: dict | None = None):
        self.config = config
        self.document = document               # what config was loaded from (before env overrides)
        self.config_path = config_path
        self.environ = dict(environ)
        self.settings = config.settings
        self.publisher: Publisher | None = None
        self.supervisor: Supervisor | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.last_rejected: dict | None = None
        self.reloads = {"ok": 0, "rejected": 0}
        self.draining = False
        self.shutdown = asyncio.Event()
        self.fatal: str | None = None
        self.file_mtime = self._mtime()
        self.reporters: dict[int, str] = {}    # listener block -> Istio reporter, kept past removals
        self.series_cap = istio.SeriesCap(self.settings["max_series_per_worker"] * self.settings["workers"])
        self.views: list = []                  # CounterView per worker region, for reading series
        self.procs: dict[int, psutil.Process] = {}
        self.app_scrape_failures = 0
        self.health: HealthChecker | None = None
        self.governance: Governance | None = None
        self.governance_task: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        removed = remove_stale_segments()
        if removed:
            log.info("removed stale shared memory segments: %s", ", ".join(removed))
        self.publisher = Publisher(self.settings)
        try:
            return await self._run(loop)
        finally:
            await self._stop_governance()
            self.publisher.close()

    async def _run(self, loop) -> int:
        self.publisher.publish(self.publisher.compile(self.config))
        self._start_governance()
        self._note_listeners(self.config)
        self._report_reuseport_migration()
        api = AdminApi(self)
        s = self.settings
        try:
            self.servers.append(await http.serve(s["admin_address"], s["admin_port"], api.admin))
            for port, handler in ((s["stats_port"], api.stats_port), (s["merged_metrics_port"], api.merged_port),
                                  (s["health_port"], api.health_port)):
                if port:
                    self.servers.append(await http.serve("0.0.0.0", port, handler))
        except OSError as e:
            log.error("cannot serve the admin or metrics ports: %s", e)
            self._close_servers()
            return 1
        self.supervisor = Supervisor(self.publisher, s["workers"], s["log_level"], self._on_fatal)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown, signal.Signals(sig).name)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await self.supervisor.start()
        self.app_watch = asyncio.ensure_future(watch_app_exit(self))  # ends by itself on shutdown
        watcher = asyncio.ensure_future(self._watch_file()) if self.config_path and s["config_poll_ms"] else None
        log.info("fastproxy %s: %d workers, admin on %s:%d, generation %d", __version__, s["workers"],
                 s["admin_address"], s["admin_port"], self.publisher.generation)
        await self.shutdown.wait()
        if watcher:
            watcher.cancel()
        self.draining = True
        await self.supervisor.stop(float(self.settings["drain_seconds"]) + 2.0)
        self._close_servers()
        if self.fatal:
            log.error("%s", self.fatal)
            return 1
        log.info("drained; exiting")
        return 0

    def _close_servers(self) -> None:
        for srv in self.servers:
            srv.close()

    def request_shutdown(self, why: str) -> None:
        if not self.shutdown.is_set():
            log.info("shutting down (%s): readiness off, draining for up to %ss", why, self.settings["drain_seconds"])
            self.draining = True
            self.shutdown.set()

    def _on_fatal(self, message: str) -> None:
        self.fatal = message
        self.shutdown.set()

    def drain_listeners(self) -> None:
        self.draining = True
        self.supervisor.signal_all(signal.SIGUSR1)

    def _report_reuseport_migration(self) -> None:
        """With net.ipv4.tcp_migrate_req (Linux >= 5.14) a closing SO_REUSEPORT
        socket hands its queued connections to a sibling instead of resetting
        them. It is a per-netns sysctl for the pod's init step to set; the
        proxy only reports it."""
        try:
            with open(MIGRATE_SYSCTL) as f:
                on = f.read().strip() == "1"
        except OSError:
            on = False
        if not on:
            log.info("net.ipv4.tcp_migrate_req is off: a worker that exits resets the connections "
                     "still queued on its listeners")

    # -- governance: health checks and outlier reviews ----------------------------------

    def _start_governance(self) -> None:
        seg = self.publisher.govern
        self.health = HealthChecker(seg)
        self.governance = Governance(seg, self.health.counts_of)
        self._apply_governance()
        self.governance_task = asyncio.ensure_future(self.governance.run())

    def _apply_governance(self) -> None:
        """After each publish: the checks and reviews follow the new table."""
        doc = self.publisher.doc
        self.governance.apply(doc, self.publisher.govern.now_ms())
        self.health.apply(doc)

    async def _stop_governance(self) -> None:
        if self.governance_task is not None:
            self.governance_task.cancel()
            await asyncio.gather(self.governance_task, return_exceptions=True)
        if self.health is not None:
            await self.health.close()

    # -- readiness ----------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "DRAINING"
        if self.supervisor is None:
            return False, "STARTING"
        gen = self.publisher.generation
        for w in self.supervisor.describe():
            if not w["alive"] or w["applied_generation"] != gen:
                return False, f"worker {w['id']} has not applied generation {gen}"
        return True, "LIVE"

    # -- reload ---------------------------------------------------------------------------

    def reload_text(self, text: bytes | str, source: str) -> tuple[bool, int | str]:
        """Validates, compiles and publishes; on any error the old table stays live."""
        try:
            document = parse_text(text, source)
            config = load(document, self.environ)
            for name in RESTART_ONLY:
                if config.settings[name] != self.settings[name]:
                    raise ConfigError(f"settings.{name}", f"changing it needs a restart "
                                      f"(running with {self.settings[name]!r}, got {config.settings[name]!r})")
            payload = self.publisher.compile(config)
        except (ConfigError, ValueError) as e:
            self.reloads["rejected"] += 1
            self.last_rejected = {"error": str(e), "source": source, "time": time.time()}
            log.error("config rejected (%s): %s; keeping generation %d", source, e, self.publisher.generation)
            return False, str(e)
        self.config = config
        self.document = document
        self.settings = config.settings
        self._note_listeners(config)
        gen = self.publisher.publish(payload)
        self._apply_governance()
        self.reloads["ok"] += 1
        log.info("config reloaded from %s: generation %d", source, gen)
        return True, gen

    def reload_file(self, why: str) -> None:
        if not self.config_path:
            log.warning("%s: no config file to reload (running on the embedded default)", why)
            return
        try:
            with open(self.config_path, "rb") as f:
                text = f.read()
        except OSError as e:
            self.reloads["rejected"] += 1
            self.last_rejected = {"error": f"cannot read {self.config_path}: {e.strerror}", "source": why,
                                  "time": time.time()}
            log.error("config rejected (%s): cannot read %s: %s", why, self.config_path, e.strerror)
            return
        self.reload_text(text, source=f"{self.config_path} ({why})")

    def _on_sighup(self) -> None:
        self.file_mtime = self._mtime()
        self.reporters: dict[int, str] = {}    # listener block -> Istio reporter, kept past removals
        self.series_cap = istio.SeriesCap(self.settings["max_series_per_worker"] * self.settings["workers"])
        self.views: list = []                  # CounterView per worker region, for reading series
        self.procs: dict[int, psutil.Process] = {}
        self.app_scrape_failures = 0
        self.reload_file("SIGHUP")

    def _mtime(self) -> int | None:
        try:
            st = os.stat(self.config_path) if self.config_path else None
        except OSError:
            return None
        return st.st_mtime_ns if st else None

    async def _watch_file(self) -> None:
        period = self.settings["config_poll_ms"] / 1000.0
        while True:
            await asyncio.sleep(period)
            m = self._mtime()
            if m is not None and m != self.file_mtime:
                self.file_mtime = m
                self.reload_file("file changed")

    # -- introspection ---------------------------------------------------------------------

    def config_dump(self) -> dict:
        return {"version": __version__, "generation": self.publisher.generation,
                "source": self.config_path or "embedded default",
                "config": _plain(self.config), "last_rejected": self.last_rejected,
                "document": self.document}

    def listeners_dump(self) -> list[dict]:
        return [_plain(l) for l in self.config.listeners]

    def clusters_dump(self) -> list[dict]:
        """/clusters?format=json: each configured cluster, with its hosts' state."""
        hosts = {c.name: govern.host_statuses(c) for c in self.governance.snapshot()}
        return [{**_plain(c), "host_statuses": hosts.get(c.name, [])} for c in self.config.clusters]

    def clusters_text(self) -> str:
        """/clusters: Envoy's text lines, every cluster of the published table."""
        return govern.clusters_text(self.governance.snapshot())

    # -- metrics ------------------------------------------------------------------------------

    def _note_listeners(self, config: Config) -> None:
        """Remembers each listener block's reporter; a removed listener keeps
        its entry, as its series (and block) outlive it."""
        blocks = self.publisher.slots.blocks
        for l in config.listeners:
            base = blocks.get(("listener", l.name))
            if base is not None:
                self.reporters[base] = istio.reporter_of(l)

    def _views(self) -> list:
        if not self.views:
            counters = self.publisher.counters
            self.views = [counters.view(i) for i in range(counters.nworkers)]
        return self.views

    def _worker_samples(self) -> list:
        """Per worker: event-loop lag (from its region), RSS and CPU (psutil, by pid)."""
        out = []
        views = self._views()
        alive = set()
        for w in self.supervisor.describe() if self.supervisor else ():
            label = {"worker": str(w["id"])}
            out.append((M_LOOP_LAG, label, views[w["id"]].get(G_LOOP_LAG_US) / 1e6))
            pid = w["pid"]
            if not w["alive"] or not pid:
                continue
            alive.add(pid)
            try:
                proc = self.procs.get(pid) or self.procs.setdefault(pid, psutil.Process(pid))
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    cpu = proc.cpu_times()
            except psutil.Error:
                continue
            out.append((M_RSS, label, rss))
            out.append((M_CPU, label, cpu.user + cpu.system))
        for pid in list(self.procs):
            if pid not in alive:
                del self.procs[pid]
        return out

    def render_metrics(self, content_type: str = prometheus.TEXT) -> str:
        base, nmax = series_area(self.settings)
        blocks = self.publisher.slots.blocks
        samples = prometheus.samples(self.publisher.counters.sum(base), blocks)
        samples += govern.samples(self.governance.snapshot(), self.governance.buckets())
        series = istio.sum_series(v.series(base, nmax, SERIES_WIDTH) for v in self._views())
        clusters = {b: name for (kind, name), b in blocks.items() if kind == "cluster"}
        samples += istio.samples(series, self.reporters, clusters, istio.Identity.from_settings(self.settings),
                                 self.series_cap)
        samples += self._worker_samples()
        samples += [
            (M_RESTARTS, {}, self.supervisor.restarts_total if self.supervisor else 0),
            (M_WORKERS, {}, len(self.supervisor.alive()) if self.supervisor else 0),
            (M_GENERATION, {}, self.publisher.generation),
            (M_RELOADS, {"result": "ok"}, self.reloads["ok"]),
            (M_RELOADS, {"result": "rejected"}, self.reloads["rejected"]),
            (M_APP_SCRAPE_FAILURES, {}, self.app_scrape_failures),
            (M_BUILD, {"version": __version__}, 1),
        ]
        return prometheus.render(samples, content_type)

    async def render_merged_metrics(self, accept: str | None, headers: dict) -> tuple[str, str]:
        """(body, content type) of the merged metrics port: ours, then the
        app's when settings.app_metrics_port is set and the app answers."""
        wanted = prometheus.negotiate(accept)
        port = self.settings.get(APP_METRICS_PORT, 0)
        app_text = app_type = None
        if port:
            path = self.settings.get(APP_METRICS_PATH) or "/metrics"
            timeout = APP_METRICS_TIMEOUT_S
            try:   # Prometheus says how long it waits; answer with ours before that
                timeout = min(timeout, 0.9 * float(headers.get("x-prometheus-scrape-timeout-seconds", timeout)))
            except ValueError:
                pass
            try:
                status, got, body = await http.fetch("127.0.0.1", port, path, {"Accept": accept or APP_ACCEPT},
                                                     timeout)
                if status != 200:
                    raise ValueError(f"status {status}")
                app_text, app_type = body.decode("utf-8", "replace"), got.get("content-type", prometheus.TEXT)
            except (OSError, ValueError) as e:
                self.app_scrape_failures += 1
                log.warning("cannot scrape the app's metrics on 127.0.0.1:%s%s: %s", port, path, e)
        content_type = prometheus.merged_type(wanted, app_type)
        ours = self.render_metrics(content_type)
        return (ours if app_text is None else prometheus.merge(ours, app_text, content_type)), content_type


def _plain(obj):
    """Dataclasses (with SocketAddress as text) to JSON-ready values."""
    if dataclasses.is_dataclass(obj):
        if type(obj).__name__ == "SocketAddress":
            return str(obj)
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, bytes):   # e.g. a health check's path and host (ASCII, checked by the parser)
        return obj.decode("latin-1")
    return obj


def run(config_path: str | None, environ: Mapping[str, str]) -> int:
    """`fastproxy run`: exits 1 with the field path when the config is invalid."""
    try:
        if config_path:
            with open(config_path, "rb") as f:
                document = parse_text(f.read(), config_path)
            config = load(document, environ)
        else:
            config = load({}, environ)
            document = default_document(config.settings)
    except OSError as e:
        log.error("cannot read config %s: %s", config_path, e.strerror)
        return 1
    except ConfigError as e:
        log.error("config error: %s", e)
        return 1
    logging.getLogger().setLevel(config.settings["log_level"].upper())
    return uvloop.run(Manager(config, config_path, environ, document).run())
