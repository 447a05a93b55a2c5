"""Goal 1: end-to-end extraction from image files runs at >= 0.90 of the bare backbone's throughput.

Side by side, alternating rounds, in one process:

* **bare**: a ``tf.function`` of the frozen backbone alone on already-decoded, already-resized and
  preprocessed tensors in memory (the floor): one call at a time at the extractor's batch size and at 32
  and 128 images per batch, and with the extractor's concurrency (``streams`` calls of its batch size in
  flight at once, as the pipeline runs them), each in every round; the ratio uses the fastest of these
  (by its median);
* **pipeline**: ``scan_dataset`` + ``FeatureExtractor.extract`` into a fresh cache: read and hash each
  file, decode and standardize it (gearfeat.data.images), upscale, preprocess, backbone, HDF5 write.

Both sides count the distinct images, the ones that go through the backbone (the pipeline decodes a file
with the same bytes as another only once).

Data: the gear images (../shared) or generated JPEGs. MobileNetV2 0.35 uses the real weights where present;
MobileNetV2 1.0 and EfficientNetB0 run with random weights (throughput does not depend on weight values).
"""
from __future__ import annotations

import tempfile
import time

import _common as C

BACKBONES = {"mobilenet_v2_0.35": ("mobilenet_v2", 0.35), "mobilenet_v2_1.0": ("mobilenet_v2", 1.0),
             "efficientnet_b0": ("efficientnet_b0", None)}


def main() -> None:
    args = C.arguments(__doc__, **{
        "--backbones": dict(default=",".join(BACKBONES), help=f"comma-separated, of {', '.join(BACKBONES)}"),
        "--rounds": dict(type=int, default=3, help="alternating rounds per backbone (median reported)"),
        "--batch-size": dict(type=int, default=None, help="extractor batch size (default: the library's)"),
        "--images": dict(type=int, default=None, help="use only the first N images"),
        "--profile": dict(action="store_true", help="also time each stage alone (decode, forward, HDF5, hash)"),
    })
    C.header("goal 1: extraction at the floor (pipeline / bare backbone throughput)", args)
    from gearfeat.data.dataset import scan_dataset
    from gearfeat.features.extractor import DEFAULT_BATCH_SIZE, ExtractorConfig, FeatureExtractor

    data = C.real_gear() or C.generated_jpegs(64 if args.quick else 1000)
    weights = C.real_weights()
    n_images = 48 if args.quick else args.images
    rounds = 1 if args.quick else args.rounds
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    dataset = _subset(scan_dataset(data), n_images)
    n = len(set(dataset.hashes))
    print(f"data: {data} ({len(dataset.records)} files, {n} distinct images), image size 128 -> backbone 224, "
          f"batch size {batch_size}, {rounds} round(s)")

    rows, ratios = [], []
    for label in args.backbones.split(","):
        name, alpha = BACKBONES[label]
        config = ExtractorConfig(name, alpha=alpha, weights=weights if label == "mobilenet_v2_0.35" else None,
                                 image_size=128)
        fx = FeatureExtractor(config, batch_size=batch_size, progress=False)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            fx.extract(dataset, tmp)  # builds and traces the model: the one-time cost, reported apart
        first = time.perf_counter() - start
        bare = _bare_forward(fx, dataset)

        def pipeline() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                fx.extract(scan_dataset(data) if n_images is None else _subset(scan_dataset(data), n_images), tmp)

        shapes = [(1, batch_size)] + ([] if args.quick else [(1, bs) for bs in (32, 128) if bs != batch_size])
        shapes.append((fx.streams, batch_size))
        for streams, bs in shapes:
            bare(bs, bs)  # warm-up at this batch shape, untimed
        runs = {_name(s, bs): (lambda s=s, bs=bs: bare(n, bs, s)) for s, bs in shapes}
        seconds = C.interleaved({**runs, "pipeline": pipeline}, rounds, quiet=not args.quick)
        rates = {name: n / C.median(seconds[name]) for name in runs}
        bare_rate = rates[_name(1, batch_size)]
        best_name, best_rate = max(rates.items(), key=lambda kv: kv[1])
        pipe_rate = n / C.median(seconds["pipeline"])
        ratios.append(pipe_rate / best_rate)
        rows.append([label, "real" if config.weights else "random", f"{bare_rate:.0f}",
                     f"{best_rate:.0f} ({best_name.removeprefix('bare ')})", f"{pipe_rate:.0f}", f"{first:.1f}",
                     pipe_rate / bare_rate, pipe_rate / best_rate])
        if args.profile:
            _profile(fx, dataset, batch_size)
    print()
    C.table(["backbone", "weights", "bare img/s", "best bare img/s", "pipeline img/s", "first run s",
             "ratio (same bs)", "ratio (best bare)"], rows)
    C.verdict(C.Goal("goal 1, lowest pipeline / best-bare ratio", min(ratios), 0.90), quick=args.quick)


def _subset(dataset, n: int | None):
    if n is None or n >= len(dataset.records):
        return dataset
    from gearfeat.data.dataset import Dataset
    return Dataset(dataset.root, dataset.class_names, dataset.records[:n], dataset.skipped)


def _name(streams: int, batch_size: int) -> str:
    return f"bare {batch_size}" if streams == 1 else f"bare {streams}x{batch_size}"


def _bare_forward(fx, dataset):
    """``run(n, batch_size, streams=1)``: n images through a tf.function of the frozen backbone, tensors in
    memory, with up to ``streams`` calls in flight at once (on as many threads, as the extractor does)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import tensorflow as tf

    from gearfeat.data.images import load_image

    size = fx.config.backbone_size
    backbone = fx.model.get_layer("backbone")
    before_backbone = tf.function(lambda x: fx.model.get_layer("preprocess")(fx.model.get_layer("upscale")(x)))
    images = np.stack([load_image(r.path, fx.config.image_size) for r in dataset.records[:128]])
    pool = before_backbone(tf.constant(images, tf.float32))  # decoded, resized, preprocessed: in memory
    forward = tf.function(lambda x: backbone(x, training=False), reduce_retracing=True,
                          input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    batches: dict[int, tf.Tensor] = {}

    def call(x: tf.Tensor):
        return forward(x).numpy()

    def run(n: int, batch_size: int, streams: int = 1) -> None:
        if batch_size not in batches:
            reps = -(-batch_size // len(pool))
            batches[batch_size] = tf.identity(tf.concat([pool] * reps, 0)[:batch_size])
            call(batches[batch_size])  # warm-up at this shape
        x = batches[batch_size]
        inputs = (x if n - start >= batch_size else x[: n - start] for start in range(0, n, batch_size))
        if streams == 1:
            for batch in inputs:
                call(batch)
            return
        with ThreadPoolExecutor(streams) as threads:
            in_flight: deque = deque()
            for batch in inputs:
                in_flight.append(threads.submit(call, batch))
                if len(in_flight) >= streams:
                    in_flight.popleft().result()
            for future in in_flight:
                future.result()

    run(len(pool), fx.batch_size)
    return run


def _profile(fx, dataset, batch_size: int) -> None:
    """Each stage alone, in images per second: where the pipeline's time goes."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import numpy as np

    from gearfeat.features.cache import FeatureCache
    from gearfeat.data.images import decode_image

    paths = [r.path for r in dataset.records]
    blobs = [Path(p).read_bytes() for p in paths]
    size = fx.config.image_size
    n = len(blobs)
    stages = {}
    stages["read + sha256"] = n / C.seconds(lambda: [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths])
    stages["decode 1 thread"] = n / C.seconds(lambda: [decode_image(b, size) for b in blobs])
    with ThreadPoolExecutor(fx.workers) as pool:
        stages[f"decode {fx.workers} threads"] = n / C.seconds(lambda: list(pool.map(lambda b: decode_image(b, size),
                                                                                    blobs)))
    images = np.stack([decode_image(b, size) for b in blobs[:batch_size]])
    fx.features_of(images)
    stages["forward (upscale+preprocess+backbone)"] = (
        4 * len(images) / C.seconds(lambda: [fx.features_of(images) for _ in range(4)]))
    features = fx.features_of(images)
    rows = np.concatenate([features] * (-(-n // len(features))))[:n]
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp, FeatureCache.open(tmp, fx.config.cache_attrs()) as cache:
        stages["HDF5 append"] = n / C.seconds(lambda: cache.append(hashes, rows, [str(p) for p in paths], ["x"] * n))
    C.table(["stage alone", "img/s"], [[k, f"{v:.0f}"] for k, v in stages.items()])


if __name__ == "__main__":
    main()
