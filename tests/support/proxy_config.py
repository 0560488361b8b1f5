"""Builds proxy config documents (the contract's YAML shape) and writes them.

Every port a test proxy binds is free (picked by binding port 0); the Istio
defaults (15000, 15001, ...) are never used on the host.
"""
import os
import tempfile
from pathlib import Path

import yaml

from .ports import free_ports


def hermetic_settings(**overrides) -> dict:
    """Settings for a hermetic test proxy: free admin/capture ports, the
    optional metrics/health ports disabled, a short drain and a fast poll."""
    admin, outbound, inbound = free_ports(3)
    settings = {
        "workers": 2,
        "admin_port": admin,
        "stats_port": 0,
        "merged_metrics_port": 0,
        "health_port": 0,
        "outbound_port": outbound,
        "inbound_port": inbound,
        "drain_seconds": 3,
        "connect_timeout_ms": 2000,
        "config_poll_ms": 200,
    }
    settings.update(overrides)
    return settings


def endpoint(address: str, weight: int = 1) -> dict:
    return {"address": address, "weight": weight}


def cluster(name: str, *addresses: str, **extra) -> dict:
    return {"name": name, "endpoints": [endpoint(a) for a in addresses], **extra}


def tcp_listener(name: str, port: int, cluster_name: str, host: str = "127.0.0.1") -> dict:
    """An explicit listener that relays to `cluster_name`."""
    return {"name": name, "address": f"{host}:{port}", "tcp_proxy": {"cluster": cluster_name}}


def capture_listener(name: str, address: str, direction: str = "OUTBOUND",
                     additional: list[str] | None = None) -> dict:
    listener = {"name": name, "address": address, "use_original_dst": True,
                "traffic_direction": direction}
    if additional:
        listener["additional_addresses"] = list(additional)
    return listener


def virtual_listener(name: str, address: str, cluster_name: str) -> dict:
    return {"name": name, "address": address, "bind_to_port": False,
            "tcp_proxy": {"cluster": cluster_name}}


def proxy_config(settings: dict, listeners: list[dict] | None, clusters: list[dict]) -> dict:
    doc = {"settings": dict(settings), "clusters": list(clusters)}
    if listeners is not None:
        doc["listeners"] = list(listeners)
    return doc


def dump(doc: dict) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False).encode()


def write_atomically(path: Path, data: bytes) -> None:
    """Replaces `path` in one rename (as a Kubernetes ConfigMap update does),
    so the proxy's file poller never reads a half-written file, and moves the
    mtime forward so even a same-second rewrite is seen as a change."""
    path = Path(path)
    before = path.stat().st_mtime_ns if path.exists() else 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    mtime = max(before + 10_000_000, os.stat(tmp).st_mtime_ns)
    os.utime(tmp, ns=(mtime, mtime))
    os.replace(tmp, path)


def write_config(path: Path, doc: dict) -> Path:
    write_atomically(path, dump(doc))
    return Path(path)
