"""Bounded polling: wait for a condition instead of sleeping for time."""
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def poll_until(probe: Callable[[], T], timeout: float, interval: float = 0.02,
               message: str = "condition") -> T:
    """Calls probe() until it returns a truthy value and returns that value.

    Exceptions from probe() count as "not yet". After `timeout` seconds an
    AssertionError names the condition and the last value or exception seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported below if it persists
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; last: {last!r}")
        time.sleep(interval)
