"""The progress bar says "done" only when the work finished."""
import io
from contextlib import nullcontext

import pytest

from gearfeat._internal.progress import Progress


def _run(updates: int, error: bool) -> str:
    stream = io.StringIO()  # not a terminal: one line at the end (and every 10 s)
    with pytest.raises(RuntimeError) if error else nullcontext():
        with Progress(10, "extract", unit="img", stream=stream) as bar:
            bar.update(updates)
            if error:
                raise RuntimeError("cannot build")
    return stream.getvalue()


def test_done_only_when_finished():
    assert _run(10, error=False).startswith("extract: [########################] 10/10 ")
    assert "done in 0:00" in _run(10, error=False)
    stopped = _run(4, error=True)
    assert "4/10" in stopped and "stopped after 0:00" in stopped and "done" not in stopped
    assert _run(0, error=True) == ""  # failed before any image: the error line says it all
