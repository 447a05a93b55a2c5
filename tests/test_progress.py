"""The progress bar says "done" only when the work finished."""
import io
import time
from contextlib import nullcontext

import pytest

from gearfeat._internal.progress import Progress, _LogLines


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(updates: int, error: bool, stream: io.StringIO | None = None) -> str:
    stream = stream or io.StringIO()  # not a terminal: one line at the end (and every 10 s)
    with pytest.raises(RuntimeError) if error else nullcontext():
        with Progress(10, "extract", unit="img", stream=stream) as bar:
            bar.update(updates)
            if error:
                raise RuntimeError("cannot build")
    return stream.getvalue()


def test_done_only_when_finished():
    done = _run(10, error=False)
    assert done.startswith("extract: 100%|##########| 10/10 ") and done.count("\n") == 1
    assert "img/s, done in 00:00" in done
    stopped = _run(4, error=True)
    assert "4/10" in stopped and "stopped after 00:00" in stopped and "done" not in stopped
    assert _run(0, error=True) == ""  # failed before any image: the error line says it all


def test_terminal_shows_rate_and_time_left_then_one_last_line():
    stream = _Terminal()
    with Progress(4, "decode", unit="img", stream=stream) as bar:
        for _ in range(4):
            time.sleep(0.11)  # past the 0.1 s between redraws
            bar.update()
    redraws, last = stream.getvalue().rsplit("\r", 1)
    assert "2/4 [00:00<00:00, " in redraws and "img/s]" in redraws  # count, elapsed < left, rate
    assert last.startswith("decode: 100%") and last.endswith("done in 00:00\n")
    *_, cleared, after = _run(0, error=True, stream=_Terminal()).split("\r")
    assert cleared.strip() == after == ""  # the bar's line blanked: the error line stands alone


def test_disabled_bar_writes_nothing():
    stream = io.StringIO()
    with Progress(10, "extract", enabled=False, stream=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


def test_log_file_gets_each_redraw_as_a_line():
    stream = io.StringIO()
    lines = _LogLines(stream)
    for text in ("\rextract:  10%| 1/10   ", "\r       \r", "\rextract:  20%| 2/10"):
        lines.write(text)
    assert stream.getvalue() == "extract:  10%| 1/10\nextract:  20%| 2/10\n"
