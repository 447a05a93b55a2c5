"""Facts about the machine a run used, for run records and reports."""
from __future__ import annotations

import os
import platform

import keras
import tensorflow as tf


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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
