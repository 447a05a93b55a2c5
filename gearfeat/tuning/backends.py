"""Where trials run: this process (``local``) or joblib backends by name (loky processes, threads, a dask or Ray
cluster), checked before any work. The feature arrays are sent once: loky memory-maps them, dask scatters them, Ray puts them in its
object store, threads share them."""
from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import tensorflow as tf

from .._internal.errors import GearfeatError, is_int
from ..features.distributed import check_address


def limit_tf_threads(threads: int | None) -> None:
    """Size TensorFlow's pools before this process's first op (a worker that already ran one keeps its pools)."""
    if threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


class RayObject:
    """An array put into Ray's object store once; each trial gets it by reference (``ray.get``), where joblib's
    Ray backend would send the array itself with every trial."""

    def __init__(self, array: np.ndarray):
        import ray
        self.ref = ray.put(array)

    def get(self) -> np.ndarray:
        import ray
        return ray.get(self.ref)


@contextmanager
def _local(name: str, address: str | None) -> Iterator[dict[str, Any]]:
    yield {"backend": name}


_LOKY_IDLE_SECONDS = 1
"""Loky workers leave after this long without a trial (joblib's default: 300 s): each holds a TensorFlow
runtime (hundreds of MB), and one that exits while the run is written does not hold up the end of the
command."""


@contextmanager
def _loky(address: str | None) -> Iterator[dict[str, Any]]:
    yield {"backend": "loky", "idle_worker_timeout": _LOKY_IDLE_SECONDS}


@contextmanager
def _dask(address: str) -> Iterator[dict[str, Any]]:
    from distributed import Client
    try:
        client = Client(address, timeout=20, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: not an address (e.g. no port)
        raise GearfeatError(f"cannot connect to the dask scheduler at {address}: {exc}") from None
    with client:
        yield {"backend": "dask", "client": client}


@contextmanager
def _ray(address: str | None) -> Iterator[dict[str, Any]]:
    import ray
    from ray.util.joblib import register_ray
    register_ray()
    connected = not ray.is_initialized()
    if connected:
        try:
            ray.init(address=address or "auto", logging_level=logging.WARNING)  # not its INFO lines
        except ConnectionError as exc:
            raise GearfeatError(f"cannot connect to a Ray cluster at {address or 'auto'}: start one with "
                                f"`ray start --head` or pass address ({exc})", parameter="address") from None
    pool_log = logging.getLogger("ray.util.multiprocessing.pool")
    pool_log.addFilter(_ignored_context_warning)
    try:
        yield {"backend": "ray", "share": RayObject}
    finally:
        pool_log.removeFilter(_ignored_context_warning)
        if connected:
            ray.shutdown()


def _ignored_context_warning(record: logging.LogRecord) -> bool:
    """False for the warning Ray's pool logs at every joblib call (joblib passes a multiprocessing context,
    which Ray ignores): not the user's concern."""
    return "'context' argument is not supported" not in record.getMessage()


@dataclass(frozen=True)
class Backend:
    """Where trials run: ``connect(address)`` yields joblib's backend settings (and, under ``"share"``, how to
    hand an array to the workers once, where joblib would not); ``threads(workers)`` sizes TensorFlow's pools
    in each trial (None: leave them)."""

    connect: Callable[[str | None], Any]
    threads: Callable[[int], int | None]
    package: str | None = None  #: the optional package it needs, installed by the extra named like the backend
    address: str | None = None  #: what ``--address`` means for it (None: it takes none)
    address_required: bool = False
    streams: bool = True  #: joblib hands back each trial as it ends (Ray's backend: a call's trials all at the end)
    check_address: Callable[[str], None] | None = None  #: refuses a malformed ``--address`` before any work
    in_process: bool = False  #: stacks run in this thread, baselines beside them (joblib is not used)


BACKENDS: dict[str, Backend] = {
    "loky": Backend(_loky,
                    lambda workers: None if workers == 1 else max(1, joblib.cpu_count() // workers)),
    "threading": Backend(lambda address: _local("threading", address), lambda workers: None),
    "dask": Backend(_dask, lambda workers: 1, package="distributed",
                    address="the scheduler of a running dask.distributed cluster (e.g. tcp://10.0.0.5:8786)",
                    address_required=True, check_address=check_address),
    "ray": Backend(_ray, lambda workers: 1, package="ray", address="a Ray cluster (default: 'auto')",
                   streams=False),
    "local": Backend(lambda address: _local("local", address), lambda workers: None, in_process=True),
}
"""Backends by name: joblib's, and ``local`` (this process, no joblib). On a cluster each unit of work (a stack of
heads or a baseline trial) uses one TensorFlow thread: run one worker thread per core."""


DEFAULT_BACKEND = "local"


@dataclass(frozen=True)
class Workers:
    """Where trials run and how many at once, checked when made, before any work: ``backend`` a name in
    :data:`BACKENDS` (None: :data:`DEFAULT_BACKEND`) whose package is importable and which ``address`` fits;
    ``jobs`` any integer but 0 (-1: every core or worker)."""

    jobs: int = -1
    backend: str | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        name, address = self.backend or DEFAULT_BACKEND, self.address
        object.__setattr__(self, "backend", name)
        if name not in BACKENDS:
            raise GearfeatError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
        spec = BACKENDS[name]
        if spec.package:
            try:
                importlib.import_module(spec.package)
            except ImportError:
                raise GearfeatError(f"backend {name} needs the {spec.package!r} package: "
                                    f"pip install gearfeat[{name}]", parameter="backend") from None
        if address and not spec.address:
            raise GearfeatError(f"address is for the dask and ray backends, not {name}", parameter="address")
        if spec.address_required and not address:
            raise GearfeatError(f"backend {name} needs address, {spec.address}", parameter=("backend", "address"))
        if address and spec.check_address:
            spec.check_address(address)
        if not is_int(self.jobs, -math.inf) or self.jobs == 0:  # any integer but 0
            raise GearfeatError(f"jobs must be a positive number of workers or negative (-1: all cores), "
                                f"got {self.jobs!r}", parameter="jobs")

    @property
    def spec(self) -> Backend:
        return BACKENDS[self.backend]
