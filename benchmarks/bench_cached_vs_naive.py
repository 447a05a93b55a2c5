"""Goal 2: cached beats naive. A head trained for 10 epochs from the cache, one-time extraction included, is
>= 8x faster than the naive way; a second head on the warm cache is >= 100x faster.

All three start from the image files on disk and end with the test accuracy, in one process:

* **naive** (the sample notebook's way): load the images, build image -> upscale -> preprocess -> frozen
  backbone -> dense head as one model and ``fit`` it for 10 epochs (validation on the val split every
  epoch), so every epoch runs every image through the backbone again; then evaluate on the test split.
  It runs twice in every round: at the head's batch size (the default ``DenseHead``'s, 64) and at
  Keras's default 32 (the backbone runs faster per image at 32 on this CPU); the ratios
  use the faster of the two, the harder competitor. Images are decoded once up front, on the same
  thread pool as ``gearfeat cnn`` decodes them, which favours naive (a generator would decode them every
  epoch too);
* **cached, cold**: ``extract_dataset`` into an empty cache (scan, build the extractor, extract) and a
  ``DenseHead`` fitted for 10 epochs on the cached features, then its test accuracy;
* **cached, warm**: the same again on the now warm cache (a second head).

Both ways train the same network otherwise (the naive one with Keras's own Adam and batching, the
cached head with ``DenseHead``'s): the same split (``split_dataset``'s defaults), the same
head network and seed, the same number of epochs (the cached head's patience equals its epochs, so it never
stops early), validation on the same val images every epoch, and one evaluation on the test split. The
four runs (cold, warm, naive at each batch size) alternate over ``--rounds`` rounds (a new empty cache for each cold run); the ratios are those of the
medians. The naive model is prepared for training as the heads are (one trace).

Data: the gear images with the real MobileNetV2 0.35/224 weights (../shared), or generated JPEGs with
random weights (the timings do not depend on the weight values).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import _common as C

KERAS_DEFAULT_BATCH = 32


def main() -> None:
    args = C.arguments(__doc__, **{"--epochs": dict(type=int, default=10, help="epochs of each head (default 10)"),
                                   "--rounds": dict(type=int, default=2, help="alternating rounds (default 2)")})
    C.header("goal 2: cached beats naive (naive / cached time)", args)
    import numpy as np

    import keras

    from gearfeat.data.dataset import scan_dataset, split_dataset
    from gearfeat.features.extractor import ExtractorConfig, build_extractor
    from gearfeat.workflows.fitting import decode_images
    from gearfeat.models.heads import DenseHead, compile_model
    from gearfeat.models.stitch import stitch
    from gearfeat.features.extractor import extract_dataset

    source = C.real_gear() or C.generated_jpegs(48 if args.quick else 1000)
    weights = C.real_weights()
    epochs = 2 if args.quick else args.epochs
    config = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=weights, image_size=128,
                             backbone_size=64 if args.quick else None)
    cache = Path(tempfile.mkdtemp(prefix="gearfeat-bench-naive-"))
    data = C.small_copy(source, 6) if args.quick else source
    print(f"data: {data}, backbone {config.backbone} {config.alpha} at {config.backbone_size}, "
          f"weights {'real' if weights else 'random'}, {epochs} epochs; the cached head at batch "
          f"{DenseHead().batch_size} (its default), naive at that batch and at {KERAS_DEFAULT_BATCH}")

    def head() -> DenseHead:
        return DenseHead(epochs=epochs, patience=epochs)

    cold_caches: list[Path] = []

    def cached(cache_dir: Path) -> float:
        extraction = extract_dataset(data, config, cache_dir=cache_dir, progress=False)
        parts = split_dataset(extraction.dataset)
        X, y = extraction.features, extraction.dataset.labels
        fitted = head().fit(X[parts["train"]], y[parts["train"]], classes=range(len(extraction.dataset.class_names)),
                            validation_data=(X[parts["val"]], y[parts["val"]]))
        return float(fitted.score(X[parts["test"]], y[parts["test"]]))

    def naive(batch_size: int) -> float:
        images, dataset = decode_images(scan_dataset(data), config.image_size, progress=False)
        images = images.astype(np.float32)
        parts = split_dataset(dataset)
        y = dataset.labels
        template = head()
        extractor = build_extractor(config)
        keras.utils.set_random_seed(template.seed)  # as DenseHead.fit does
        model = compile_model(stitch(extractor, template.build(int(extractor.output.shape[-1]),
                                                               len(dataset.class_names))), template.learning_rate)
        model.fit(images[parts["train"]], y[parts["train"]], batch_size=batch_size, epochs=epochs, verbose=0,
                  validation_data=(images[parts["val"]], y[parts["val"]]))
        return float(model.evaluate(images[parts["test"]], y[parts["test"]], batch_size=batch_size, verbose=0)[1])

    accuracy = {}

    def run(name, fn):
        def timed():
            accuracy[name] = fn()
        return timed

    def cold() -> float:
        cold_caches.append(cache / f"cache-{len(cold_caches)}")  # an empty cache each round
        return cached(cold_caches[-1])

    head_batch = int(head().batch_size)
    naive_batches = sorted({head_batch, KERAS_DEFAULT_BATCH})
    names = {"cold": "cached, cold (extraction + head)", "warm": "cached, warm (second head)",
             **{f"naive {b}": f"naive (backbone in the model), batch {b}" for b in naive_batches}}
    try:
        times = C.interleaved({"cold": run("cold", cold), "warm": run("warm", lambda: cached(cold_caches[-1])),
                               **{f"naive {b}": run(f"naive {b}", lambda b=b: naive(b)) for b in naive_batches}},
                              1 if args.quick else args.rounds)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    for i in range(len(times["cold"])):
        fastest = min(times[f"naive {b}"][i] for b in naive_batches)
        print(f"  round {i + 1}: " + ", ".join(f"{k} {v[i]:.2f} s" for k, v in times.items())
              + f"; faster naive / cold {fastest / times['cold'][i]:.2f}x, / warm {fastest / times['warm'][i]:.1f}x")
    print("  test accuracy (last round): " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    median = {k: C.median(v) for k, v in times.items()}
    naive_key = min((f"naive {b}" for b in naive_batches), key=median.get)
    print()
    C.table(["approach", "median seconds", f"{naive_key} / this"],
            [[names[k], v, median[naive_key] / v] for k, v in median.items()])
    cold, warm = median[naive_key] / median["cold"], median[naive_key] / median["warm"]
    C.verdict(C.Goal("goal 2, naive / cached cold speed-up", cold, 8),
              C.Goal("goal 2, naive / cached warm speed-up", warm, 100), quick=args.quick)


if __name__ == "__main__":
    main()
