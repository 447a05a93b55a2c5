"""A small dependency-free progress bar: count, rate and time left, on stderr."""
from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "extract", unit="img") as bar: bar.update(n)``; silent when ``enabled`` is False."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", enabled: bool = True, stream=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.interactive = self.enabled and getattr(self.stream, "isatty", lambda: False)()
        self.count = 0
        self._start = self._last = time.perf_counter()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._draw(final=True)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._start
        return self.count / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        # redraw at most 10 times a second on a terminal, every 10 s in a log file
        if self.enabled and now - self._last >= (0.1 if self.interactive else 10.0):
            self._last = now
            self._draw()

    def _draw(self, final: bool = False) -> None:
        rate = self.rate
        left = (self.total - self.count) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * min(self.count, self.total) / self.total)
        line = (f"{self.desc}: [{'#' * filled}{'.' * (width - filled)}] {self.count}/{self.total} "
                f"{rate:.1f} {self.unit}/s, "
                + (f"done in {_clock(time.perf_counter() - self._start)}" if final else f"{_clock(left)} left"))
        end = "\n" if final or not self.interactive else ""
        self.stream.write(("\r" if self.interactive else "") + line + end)
        self.stream.flush()


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "--:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes:d}:{secs:02d}"
