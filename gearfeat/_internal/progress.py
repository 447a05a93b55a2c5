"""Progress on stderr: tqdm's bar (count, rate and time left) that says at its end whether the work was done or
stopped, and Keras's download messages moved off stdout."""
from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import IO

from tqdm import tqdm

_FINAL = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {rate_fmt}, "


class Progress:
    """``with Progress(total, "extract", unit="img") as bar: bar.update(n)``; silent when ``enabled`` is False.

    A tqdm bar on ``stream`` (stderr), redrawn at most 10 times a second on a terminal and written as a line of
    its own every 10 s in a log file. Its last line says "done in" when the block ended well and "stopped after"
    when an error or an interrupt ended it (nothing when it stopped before the first update).
    """

    def __init__(self, total: int, desc: str, *, unit: str = "it", enabled: bool = True, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self.count = 0  # updates so far, also when the bar is not shown
        interactive = getattr(self.stream, "isatty", lambda: False)()
        self._bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled or total <= 0, leave=False,
                         file=self.stream if interactive else _LogLines(self.stream),
                         mininterval=0.1 if interactive else 10.0, delay=0.0 if interactive else 10.0)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        bar = self._bar
        if bar.disable:
            return
        shown = exc_type is None or bar.n > 0
        final = {**bar.format_dict, "rate": None, "ncols": None}  # the overall rate; a bar never cut short
        bar.close()  # clears its line on a terminal
        if shown:
            ending = "done in {elapsed}" if exc_type is None else "stopped after {elapsed}"
            self.stream.write(tqdm.format_meter(**{**final, "bar_format": _FINAL + ending}) + "\n")
            self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.count += n
        self._bar.update(n)


class _LogLines(io.TextIOBase):
    """What tqdm redraws in place with ``\\r``, as one line per redraw (for a stream that is not a terminal)."""

    def __init__(self, target: IO[str]):
        self.target = target

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text.strip():
            self.target.write(text.strip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()


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
