"""One progress line on stderr: step n/N, elapsed time, what runs now.

On a terminal the line is rewritten in place; elsewhere (CI logs) each step
is printed once on its own line and ticks are silent. Messages go above it.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int = 0, stream=sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.label = "starting"
        self._stream = stream
        self._tty = stream.isatty()
        self._t0 = time.monotonic()
        self._shown = False

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def step(self, label: str) -> None:
        """A new step begins."""
        self.label = label
        self.done += 1
        self._draw(force_line=True)

    def tick(self) -> None:
        """Refresh the elapsed time (terminal only)."""
        if self._tty:
            self._draw()

    def say(self, message: str) -> None:
        """A message on its own line, above the progress line."""
        self._clear()
        print(f"bench: {message}", file=self._stream, flush=True)
        if self._tty and self._shown:
            self._draw()

    def close(self) -> None:
        self._clear()

    def _text(self) -> str:
        m, s = divmod(int(self.elapsed()), 60)
        width = len(str(self.total))
        return f"[{self.done:>{width}}/{self.total}] {m:02d}:{s:02d} {self.label}"

    def _draw(self, force_line: bool = False) -> None:
        if self._tty:
            self._stream.write("\r\x1b[K" + self._text())
            self._stream.flush()
            self._shown = True
        elif force_line:
            print(self._text(), file=self._stream, flush=True)

    def _clear(self) -> None:
        if self._tty and self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
