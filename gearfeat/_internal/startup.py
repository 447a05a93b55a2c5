"""Importing TensorFlow without its C++ start-up chatter on the terminal.

TensorFlow 2.21 logs a few informational lines (oneDNN notice, CUDA probing on CPU hosts) to file
descriptor 2 before its logging is configured, whatever ``TF_CPP_MIN_LOG_LEVEL`` says. Every gearfeat command
would print them ahead of its own output, an error's one line included. They are held back here; anything
else written during the import (warnings, errors) is passed on unchanged, once the import returns. A fatal
error inside the import itself (say, a CPU without the instructions TensorFlow was built for) ends the
process before that: ``python -c "import tensorflow"`` shows its message.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

_CHATTER = re.compile(rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
                      rb"|I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ")
"""absl's preamble and its informational (``I``) lines; its ``W``, ``E`` and ``F`` lines are kept."""


@contextmanager
def held_startup_logs() -> Iterator[None]:
    """Hold what is written to file descriptor 2 meanwhile; then write it back without absl's informational
    lines. Does nothing where descriptor 2 cannot be redirected."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2, or no sys.stderr
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True) if not _CHATTER.match(line)]
            if kept:
                sys.stderr.flush()
                os.write(2, b"".join(kept))


def import_tensorflow() -> None:
    """Import TensorFlow (once per process) with its start-up chatter held back."""
    if "tensorflow" not in sys.modules:
        with held_startup_logs():
            importlib.import_module("tensorflow")
