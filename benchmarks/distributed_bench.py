"""Issue 20 (b): extraction on a local dask.distributed cluster of 2 workers vs in one process, per image.

Side by side, alternating rounds, in one process:

* **one process**: ``FeatureExtractor.extract`` into a fresh cache (the model built and traced beforehand);
* **dask**: the same through ``extract(..., client=...)`` on a ``LocalCluster`` of 2 worker processes with
  1 thread each on 127.0.0.1, whose extractors were built and traced beforehand (a per-worker cost paid once).

On this 2-core machine the cluster cannot be faster (its workers share the cores the one process already fills);
the figure is the overhead per image. Also measured, for the 100M-image estimate: each stage alone per image
(read + hash + decode on one thread, the backbone at the extractor's batch size, the HDF5 append) and the
scheduler's cost per task (round trips of empty tasks).

Data: the gear images and MobileNetV2 0.35 weights of ../shared (generated JPEGs and random weights where absent).
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict
import time

import _common as C


def main() -> None:
    args = C.arguments(__doc__, **{
        "--images": dict(type=int, default=600, help="images extracted per round (default 600)"),
        "--rounds": dict(type=int, default=3, help="alternating rounds (median reported)"),
        "--shard-size": dict(type=int, default=None, help="images per dask task (default: the library's)"),
    })
    C.header("issue 20 (b): distributed vs one-process extraction (overhead per image)", args)
    import numpy as np
    from distributed import Client, LocalCluster

    from gearfeat.data.dataset import Dataset, scan_dataset
    from gearfeat.features import distributed as dist
    from gearfeat.features.cache import FeatureCache
    from gearfeat.features.extractor import ExtractorConfig, FeatureExtractor, load_checked_image

    data = C.real_gear() or C.generated_jpegs(64 if args.quick else 1000)
    weights = C.real_weights()
    n_images, rounds = (32, 1) if args.quick else (args.images, args.rounds)
    if args.shard_size:
        dist.DEFAULT_SHARD_SIZE = args.shard_size
    if args.quick:
        dist.DEFAULT_SHARD_SIZE = 8
    scanned = scan_dataset(data)
    dataset = Dataset(scanned.root, scanned.class_names, scanned.records[:n_images], [])
    n = len(set(dataset.hashes))
    config = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=weights, image_size=32 if args.quick else 128,
                             backbone_size=32 if args.quick else None)
    fx = FeatureExtractor(config, progress=False)
    print(f"data: {data} ({n} distinct images), MobileNetV2 0.35 {config.image_size} -> {config.backbone_size}, "
          f"batch {fx.batch_size}, shard {dist.DEFAULT_SHARD_SIZE} images, {rounds} round(s)", flush=True)

    started = time.perf_counter()
    fx._compiled_forward()
    build_local = time.perf_counter() - started
    started = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        cluster_start = time.perf_counter() - started
        started = time.perf_counter()
        client.run(_warm_worker, asdict(config), config.cache_attrs(), fx.batch_size)
        build_workers = time.perf_counter() - started

        def run(use_client) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                extraction = fx.extract(dataset, tmp, client=use_client)
                assert extraction.computed == n, extraction

        seconds = C.interleaved({"one process": lambda: run(None), "dask, 2 workers": lambda: run(client)},
                                rounds, quiet=not args.quick)
        task = _task_seconds(client, 20 if args.quick else 200)

    # each stage alone, per image, in this process
    records = dataset.records[: min(64, n)]
    started = time.perf_counter()
    images = np.stack([load_checked_image(str(r.path), r.sha256, config.image_size) for r in records])
    decode = (time.perf_counter() - started) / len(records)
    batch = images[: fx.batch_size]
    fx.features_of(batch)
    started = time.perf_counter()
    for _ in range(4):
        features = fx.features_of(batch)
    backbone = (time.perf_counter() - started) / (4 * len(batch))
    with tempfile.TemporaryDirectory() as tmp, FeatureCache.open(tmp, config.cache_attrs()) as cache:
        rows = np.repeat(features, max(1, 256 // len(features)), axis=0)
        started = time.perf_counter()
        cache.append([f"{i:064x}" for i in range(len(rows))], rows, ["p"] * len(rows), ["l"] * len(rows))
        hdf5 = (time.perf_counter() - started) / len(rows)

    local, remote = (C.median(seconds[k]) / n for k in ("one process", "dask, 2 workers"))
    print()
    C.table(["", "s/image", "img/s", "ms/image"],
            [["one process", local, 1 / local, 1e3 * local], ["dask, 2 workers (1 thread each)", remote, 1 / remote,
                                                              1e3 * remote],
             ["overhead of dask", remote - local, float("nan"), 1e3 * (remote - local)]])
    print()
    C.table(["stage (one thread / call)", "ms/image"],
            [["read + sha256 + decode + standardize", 1e3 * decode],
             [f"backbone at batch {fx.batch_size} (all cores)", 1e3 * backbone],
             ["HDF5 append (256 rows)", 1e3 * hdf5],
             [f"scheduler round trip per task ({dist.DEFAULT_SHARD_SIZE} images)", 1e3 * task]])
    print(f"one-time: local model build + trace {build_local:.1f} s; cluster start {cluster_start:.1f} s; "
          f"worker builds {build_workers:.1f} s")
    C.verdict(quick=args.quick)
    print(f"RESULT dask / one-process seconds per image: {remote / local:.3f} (no target: on 2 shared cores the "
          f"cluster only adds overhead){' smoke run' if args.quick else ''}")


def _warm_worker(settings, attrs, batch_size) -> None:
    """(On a worker.) Build and trace this worker's extractor, as its first shard would."""
    from gearfeat.features import distributed as dist
    dist._worker_extractor(settings, attrs, batch_size)._compiled_forward()


def _task_seconds(client, n: int) -> float:
    """Wall seconds per empty task, submitted and gathered in one batch (the scheduler's share of a shard)."""
    started = time.perf_counter()
    client.gather(client.map(_nothing, range(n), pure=False))
    return (time.perf_counter() - started) / n


def _nothing(i: int) -> int:
    return i


if __name__ == "__main__":
    main()
