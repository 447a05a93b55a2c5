"""Extraction on a running ``dask.distributed`` cluster: the images not yet cached go to the workers in shards,
the features come back into the one cache file of their fingerprint, written by this process only.

- Each worker builds the extractor once per fingerprint and keeps it (a module-level cache in the worker
  process), then decodes and runs its shards with the same threaded pipeline as a one-process run.
- Workers read the image files themselves: they need the same paths as this process (a shared filesystem, or the
  same mount of an object store), the same gearfeat and library versions (checked: a worker whose features would
  have another fingerprint refuses the shard), and a local ``--weights`` file at the same path. A file a worker
  cannot read or decode is skipped with its reason, like in a one-process run.
- Shards are committed in dataset order, whatever order they finish in, so the cache file has the rows of a
  one-process run in the same order. At most a few shards per worker thread are in flight, so memory stays
  bounded on a dataset of any size.
- A worker that dies mid-shard: the scheduler reruns the shard elsewhere (dask's ``allowed-failures``); this
  process receives each shard's result once, so no row is written twice. Ctrl-C commits every finished shard
  and cancels the rest.

No scheduler, queue or protocol of gearfeat's own: futures of ``dask.distributed`` only.
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from .._internal.errors import GearfeatError, first_line
from .._internal.progress import Progress
from ..data.dataset import Skipped
from .cache import FeatureCache, fingerprint

if TYPE_CHECKING:
    from .extractor import ExtractorConfig, FeatureExtractor

BACKENDS = ("local", "dask")
"""Where the backbone pass runs: ``local`` (this process) or ``dask`` (the workers of a cluster)."""
DEFAULT_SHARD_SIZE = 256  # images per task: seconds of backbone work, a few MB of features to send back
_CONNECT_SECONDS = 10.0  # how long to try the scheduler before giving up
_WORKERS_SECONDS = 30.0  # how long to wait for a first worker to join a scheduler that has none
_SHARDS_PER_THREAD = 2  # shards in flight per worker thread: one running, one queued behind it


def check_address(address: str) -> None:
    """Refuse a malformed dask scheduler address (no port, unknown scheme) before any work."""
    from distributed.comm import get_address_host_port
    if address.startswith("inproc://"):  # an in-process cluster of the caller's (Python API)
        return
    try:
        get_address_host_port(address)
    except ValueError as exc:
        raise GearfeatError(f"address {address!r} is not a dask scheduler address ({exc}); give one such as "
                            "tcp://10.0.0.5:8786", parameter="address") from None


def check_backend(backend: str, address: str | None) -> None:
    """``backend`` is known, ``address`` fits it, and dask is installed when asked for."""
    if backend not in BACKENDS:
        raise GearfeatError(f"unknown extraction backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "local":
        if address:
            raise GearfeatError("address is for backend dask (extraction on a cluster), not local",
                                parameter=("address", "backend"))
        return
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise GearfeatError("backend dask needs the 'distributed' package: pip install gearfeat[dask]",
                            parameter="backend") from None
    if not address:
        raise GearfeatError("backend dask needs address, the scheduler of a running dask.distributed cluster "
                            "(e.g. tcp://10.0.0.5:8786)", parameter=("backend", "address"))
    check_address(address)


@contextmanager
def cluster_client(backend: str, address: str | None) -> Iterator[Any]:
    """A connected ``distributed.Client`` with at least one worker for ``backend="dask"`` (None for local);
    a scheduler that does not answer, or has no worker, is one :class:`GearfeatError` line before any work."""
    check_backend(backend, address)
    if backend == "local":
        yield None
        return
    from distributed import Client
    try:
        client = Client(address, timeout=_CONNECT_SECONDS, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise GearfeatError(f"cannot connect to the dask scheduler at {address}: {first_line(exc)} (is "
                            "`dask scheduler` running there, and reachable from here?)") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=_WORKERS_SECONDS)
        except TimeoutError:
            raise GearfeatError(f"the dask scheduler at {address} has no worker (waited {_WORKERS_SECONDS:.0f} s); "
                                f"start some with `dask worker {address}`") from None
        yield client


# ------------------------------------------------------------------------------------------ worker side
_EXTRACTORS: dict[str, "FeatureExtractor"] = {}  # per worker process, by fingerprint: built once, kept
_EXTRACTORS_LOCK = threading.Lock()


class _Rows:
    """Collects what ``FeatureExtractor._stream`` commits, in place of a cache file."""

    def __init__(self) -> None:
        self.hashes: list[str] = []
        self.features: list[np.ndarray] = []

    def append(self, hashes: list[str], features: np.ndarray, paths: list[str], labels: list[str]) -> None:
        self.hashes += hashes
        self.features.append(features)


def _worker_extractor(settings: dict[str, Any], attrs: dict[str, object], batch_size: int) -> "FeatureExtractor":
    """The extractor of this worker process for ``settings``, built on its first shard and kept."""
    from .extractor import ExtractorConfig, FeatureExtractor
    key = fingerprint(attrs)
    with _EXTRACTORS_LOCK:
        if key not in _EXTRACTORS:
            config = ExtractorConfig(**settings)
            mine = config.cache_attrs()
            if fingerprint(mine) != key:
                differ = ", ".join(f"{k} {mine[k]} here, {attrs.get(k)} on the client"
                                   for k in mine if mine[k] != attrs.get(k))
                raise GearfeatError(f"a dask worker would compute other features than the client ({differ}); "
                                    "install the same gearfeat and library versions on every worker")
            _EXTRACTORS[key] = FeatureExtractor(config, batch_size=batch_size, progress=False)
        return _EXTRACTORS[key]


def run_shard(settings: dict[str, Any], attrs: dict[str, object], batch_size: int, hashes: list[str],
              paths: list[str]) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """(Runs on a worker.) Decode and extract one shard: the hashes computed, their features, and the files
    skipped with their reasons."""
    from .extractor import load_checked_image
    extractor = _worker_extractor(settings, attrs, batch_size)
    size = extractor.config.image_size
    rows = _Rows()
    failed = extractor._stream(rows, hashes, paths, [""] * len(hashes),
                               lambda i: load_checked_image(paths[i], hashes[i], size), desc="")
    features = np.concatenate(rows.features) if rows.features else np.zeros((0, 0), np.float32)
    return rows.hashes, features, [(item.path, item.reason) for item in failed]


# ------------------------------------------------------------------------------------------ client side
def stream_on_cluster(client: Any, extractor: "FeatureExtractor", cache: FeatureCache, hashes: list[str],
                      paths: list[str], labels: list[str], *, desc: str) -> list[Skipped]:
    """Extract ``hashes`` (files at ``paths``) on the cluster's workers into ``cache``, in shards of
    :data:`DEFAULT_SHARD_SIZE` images; the files skipped."""
    from distributed import KilledWorker, as_completed

    config: ExtractorConfig = extractor.config
    settings, attrs = asdict(config), config.cache_attrs()
    key = fingerprint(attrs)
    label_of = dict(zip(hashes, labels))
    path_of = dict(zip(hashes, paths))
    size = DEFAULT_SHARD_SIZE
    shards = [(start, min(start + size, len(hashes))) for start in range(0, len(hashes), size)]
    threads = max(1, sum(client.nthreads().values()))
    window = max(2, _SHARDS_PER_THREAD * threads)
    token = uuid.uuid4().hex[:12]  # this call's task names: never a result of another run's shard
    failed: list[Skipped] = []
    done: dict[int, tuple[list[str], np.ndarray]] = {}
    running: set = set()
    next_commit = 0

    def submit(i: int):
        start, stop = shards[i]
        future = client.submit(run_shard, settings, attrs, extractor.batch_size, hashes[start:stop],
                               paths[start:stop], key=f"gearfeat-shard-{key}-{token}-{i}", pure=False, retries=0)
        future.shard = i
        running.add(future)
        return future

    def commit(indexes: list[int]) -> None:
        keys = [h for i in indexes for h in done[i][0]]
        if keys:
            cache.append(keys, np.concatenate([done[i][1] for i in indexes if len(done[i][0])]),
                         [path_of[h] for h in keys], [label_of[h] for h in keys])
        for i in indexes:
            del done[i]

    submitted = min(window, len(shards))
    pending = as_completed([submit(i) for i in range(submitted)], loop=client.loop)  # the CLI's client is no default
    with Progress(len(hashes), desc, unit="img", enabled=extractor.progress) as bar:
        try:
            for future in pending:
                try:
                    shard_hashes, features, skipped = future.result()  # a worker's error is raised here
                except KilledWorker:
                    start, stop = shards[future.shard]
                    raise GearfeatError(f"dask workers died running images {start}-{stop - 1} again and again "
                                        f"(first: {paths[start]}); look at the workers' logs (memory?), then "
                                        "run again: finished shards are kept") from None
                running.discard(future)
                start, stop = shards[future.shard]
                done[future.shard] = (shard_hashes, features)
                failed += [Skipped(path, reason) for path, reason in skipped]
                bar.update(stop - start)
                ready = []
                while next_commit in done:
                    ready.append(next_commit)
                    next_commit += 1
                commit(ready)
                if submitted < len(shards):
                    pending.add(submit(submitted))
                    submitted += 1
        finally:  # interrupted or failed: keep every shard that finished, drop the rest
            for future in running:
                future.cancel()
            commit(sorted(done))
    order = {path: i for i, path in enumerate(paths)}
    return sorted(failed, key=lambda item: order.get(item.path, -1))
