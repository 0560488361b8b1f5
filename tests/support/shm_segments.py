"""The proxy's POSIX shared-memory segments in /dev/shm.

Every segment of a proxy is named `fastproxy-<managerpid>-...` and must be
gone once that manager exited.
"""
import gc
import itertools
import os
from pathlib import Path

SHM_DIR = Path("/dev/shm")

# Segments the unit tests create themselves: named after the test process.
TEST_PREFIX = f"fastproxy-test-{os.getpid()}-"
_seq = itertools.count()


def segments_of(manager_pid: int) -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob(f"fastproxy-{manager_pid}-*"))


def fresh_name(tag: str = "seg") -> str:
    """A segment name no other test uses: "/fastproxy-test-<pid>-<n>-<tag>"."""
    return f"/{TEST_PREFIX}{next(_seq)}-{tag}"


def remove_test_leftovers() -> list[str]:
    """Unlinks the test segments still in /dev/shm (after collecting what
    only garbage held) and returns their names: a test must leave none."""
    gc.collect()
    left = sorted(p.name for p in SHM_DIR.glob(f"{TEST_PREFIX}*"))
    for n in left:
        os.unlink(SHM_DIR / n)
    return left
