"""The proxy's POSIX shared-memory segments in /dev/shm.

Every segment of a proxy is named `fastproxy-<managerpid>-...` and must be
gone once that manager exited.
"""
from pathlib import Path

SHM_DIR = Path("/dev/shm")


def segments_of(manager_pid: int) -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob(f"fastproxy-{manager_pid}-*"))
