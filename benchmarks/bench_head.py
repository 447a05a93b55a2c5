"""Goal 4: heads in seconds. 30 epochs of the default dense head on the gear cache's train split in <= 2 s.

What trains: the train split of ``gearfeat train`` (``split_dataset``'s defaults: 70 % train, 15 % val,
15 % test) of the cached features. On the gear images that is 1,351 of the 1,928 rows, each 1,280
features (MobileNetV2 0.35's pooled output), validated every epoch on the 288 val rows; the test rows are
only used for the accuracy column, after the timing.

Side by side on those same arrays, alternating rounds; each competitor is timed from building its network
to the return of its training (seed, build, compile, 30 epochs with validation every epoch), nothing else:
no prediction, no test evaluation inside the timing.

* **DenseHead**: ``gearfeat.models.heads.DenseHead(epochs=30, patience=30).fit(train, validation_data=val)`` with
  every other setting at its default (batch 64; patience 30: all 30 epochs run);
* **plain Keras**: the same network (``DenseHead().build``), compiled by the same ``compile_model`` (with
  Keras's own Adam and one step per call, where DenseHead uses ``FusedAdam``, one call per epoch and its
  per-epoch batch permutation), then Keras's own ``fit`` on the numpy arrays for 30 epochs with ``validation_data=val`` at the head's default
  batch size (taken from ``DenseHead()``, not written here);
* **plain Keras at batch 32**, a reference row only (not in the verdict): the same at batch 32, the setting
  of the issue's "plain Keras fit at batch 32 took about 5 s".

Features: the gear images through MobileNetV2 0.35/224 with the real weights (../shared), extracted once
into a cache under /tmp; or generated JPEGs with random weights (the head's speed does not depend on them).
"""
from __future__ import annotations

import time

import _common as C

REFERENCE_BATCH = 32
"""The batch size of the issue's reference figure for plain Keras (a reference row, not a competitor)."""


def main() -> None:
    args = C.arguments(__doc__, **{"--rounds": dict(type=int, default=5, help="alternating rounds"),
                                   "--epochs": dict(type=int, default=30, help="epochs (default 30)")})
    C.header("goal 4: heads in seconds (DenseHead.fit seconds for 30 epochs)", args)
    import keras
    import numpy as np

    from gearfeat.data.dataset import split_dataset
    from gearfeat.features.extractor import ExtractorConfig
    from gearfeat.models.heads import DenseHead, compile_model
    from gearfeat.features.extractor import extract_dataset

    source = C.real_gear() or C.generated_jpegs(48 if args.quick else 1900)
    weights = C.real_weights()
    epochs = 3 if args.quick else args.epochs
    rounds = 1 if args.quick else args.rounds
    config = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=weights, image_size=128,
                             backbone_size=32 if args.quick else None)
    source = C.small_copy(source, 6) if args.quick else source
    extraction = extract_dataset(source, config, cache_dir=C.GENERATED / "cache", progress=False)
    X, y, n_classes = extraction.features, extraction.dataset.labels, len(extraction.dataset.class_names)
    parts = split_dataset(extraction.dataset)
    train, val, test = ((X[parts[k]], y[parts[k]]) for k in ("train", "val", "test"))
    template = DenseHead()  # the library's defaults: the plain-Keras competitor takes its settings from here
    batch = int(template.batch_size)
    print(f"features {X.shape} ({'real' if weights else 'random'} weights): trains on {train[0].shape[0]} x "
          f"{train[0].shape[1]} (train split), validates on {len(val[0])} rows every epoch, test {len(test[0])} "
          f"(accuracy only, untimed); {epochs} epochs, {rounds} round(s); DenseHead default batch {batch}")
    accuracy = {}

    def plain(name: str, batch_size: int):
        def timed() -> float:
            start = time.perf_counter()
            keras.utils.set_random_seed(template.seed)  # as DenseHead.fit does
            model = compile_model(template.build(X.shape[1], n_classes), template.learning_rate)
            model.fit(*train, validation_data=val, batch_size=batch_size, epochs=epochs, verbose=0)
            seconds = time.perf_counter() - start
            proba = keras.ops.convert_to_numpy(model(test[0], training=False))  # untimed
            accuracy[name] = float(np.mean(proba.argmax(1) == test[1]))
            return seconds
        return timed

    def dense_head(name: str):
        def timed() -> float:
            head = DenseHead(epochs=epochs, patience=epochs)
            start = time.perf_counter()
            head.fit(*train, validation_data=val, classes=range(n_classes))
            seconds = time.perf_counter() - start
            accuracy[name] = float(head.score(*test))  # untimed
            return seconds
        return timed

    same = f"plain Keras fit, batch {batch} (the head's)"
    mine_name = f"DenseHead.fit (defaults, batch {batch})"
    reference = f"reference: plain Keras fit, batch {REFERENCE_BATCH} (issue: about 5 s)"
    runs = {same: plain(same, batch), mine_name: dense_head(mine_name)}
    if batch != REFERENCE_BATCH:
        runs[reference] = plain(reference, REFERENCE_BATCH)
    for fn in runs.values():  # warm-up: imports and TensorFlow's first-use costs, outside the timing
        fn()
    seconds = C.interleaved(runs, rounds, quiet=not args.quick)
    mine = C.median(seconds[mine_name])
    print()
    C.table(["head (build + compile + fit with validation)", "median s", "rounds s", "/ DenseHead", "test accuracy"],
            [[k, C.median(v), ", ".join(f"{s:.2f}" for s in v), C.median(v) / mine, accuracy[k]]
             for k, v in seconds.items()])
    if reference in seconds:
        print(f"({reference.split(': ', 1)[1]} is a reference row, outside the verdict: the comparison is at "
              f"the head's batch {batch})")
    C.verdict(C.Goal(f"goal 4, plain Keras / DenseHead time at batch {batch}", C.median(seconds[same]) / mine, 1),
              C.Goal(f"goal 4, seconds for {epochs} epochs of the default DenseHead", mine, 2.0, False),
              quick=args.quick)


if __name__ == "__main__":
    main()
