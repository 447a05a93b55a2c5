"""Facts about the machine a run used, for run records and reports."""
from __future__ import annotations

import os
import platform
import re

import keras
import tensorflow as tf

from .errors import GearfeatError


def machine_summary() -> dict[str, str | int]:
    """CPU, core count and library versions."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


DEFAULT_MEMORY_FRACTION = 0.25
"""The share of the machine's RAM that a run's feature arrays may take by default (``--memory-budget``): the
arrays are copied once more into TensorFlow, and the backbone, the head and the rest of the process need room."""

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def physical_memory() -> int | None:
    """The machine's RAM in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget(value: str | int | float | None = None) -> int:
    """A memory budget in bytes from ``value``: a size such as ``"2GB"``, ``"500MB"``, ``"1.5GiB"`` or a number of
    bytes; None: :data:`DEFAULT_MEMORY_FRACTION` of the RAM (2 GB where it is unknown). A bad value is a
    one-line GearfeatError naming it."""
    if value is None:
        ram = physical_memory()
        return int(ram * DEFAULT_MEMORY_FRACTION) if ram else 2 * 10**9
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value)) \
        if not isinstance(value, bool) else None
    if match is None or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise GearfeatError(f"memory_budget must be a size above 0 such as 2GB, 500MB or 1.5GiB, got {value!r}",
                            parameter="memory_budget")
    return max(1, int(float(match.group(1)) * _UNITS[match.group(2).lower()]))


def size_text(n: float) -> str:
    """``n`` bytes in words: 512 B, 3.4 MB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
