"""Progress on stderr: a small dependency-free progress bar (count, rate and time left), and Keras's
download messages moved off stdout."""
from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import IO


class Progress:
    """``with Progress(total, "extract", unit="img") as bar: bar.update(n)``; silent when ``enabled`` is False."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", enabled: bool = True, stream=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.interactive = self.enabled and getattr(self.stream, "isatty", lambda: False)()
        self.count = 0
        self._drawn = False
        self._start = self._last = time.perf_counter()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.enabled and exc_type is None:
            self._draw(final=True)
        elif self.enabled and self.count:  # stopped by an error or an interrupt: where, not "done"
            self._draw(final=True, stopped=True)
        elif self.interactive and self._drawn:
            self.stream.write("\n")  # end the bar's line: the error goes on a line of its own

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

    def _draw(self, final: bool = False, stopped: bool = False) -> None:
        self._drawn = True
        rate = self.rate
        left = (self.total - self.count) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * min(self.count, self.total) / self.total)
        line = (f"{self.desc}: [{'#' * filled}{'.' * (width - filled)}] {self.count}/{self.total} "
                f"{rate:.1f} {self.unit}/s, "
                + (f"{'stopped after' if stopped else 'done in'} {_clock(time.perf_counter() - self._start)}"
                   if final else f"{_clock(left)} left"))
        end = "\n" if final or not self.interactive else ""
        self.stream.write(("\r" if self.interactive else "") + line + end)
        self.stream.flush()


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "--:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes:d}:{secs:02d}"


@contextmanager
def keras_downloads() -> Iterator[None]:
    """Send what Keras prints while it fetches a file ("Downloading data from URL", then a progress bar) to
    stderr: stdout is for results. The first line waits until the progress bar starts or the block ends
    well, so a download that fails at once (offline) leaves only gearfeat's one-line error."""
    held = _HeldFirstLine(sys.stderr)
    with redirect_stdout(held):
        yield
    held.release()


class _HeldFirstLine(io.TextIOBase):
    """A text stream that passes everything to ``target`` once more than one line was written (or on
    :meth:`release`), and until then holds it."""

    def __init__(self, target: IO[str]):
        self.target, self.held, self.passing = target, "", False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.passing:
            return self.target.write(text)
        self.held += text
        if self.held.partition("\n")[2]:  # something after the first line: the download is under way
            self.release()
        return len(text)

    def release(self) -> None:
        self.passing = True
        if self.held:
            self.target.write(self.held)
            self.held = ""
        self.target.flush()

    def flush(self) -> None:
        if self.passing:
            self.target.flush()
