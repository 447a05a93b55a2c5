"""Goal 4: heads in seconds. 30 epochs of the default dense head on the gear cache (~1,900 x 1,280) in <= 2 s.

Side by side on the same cached features, alternating rounds, both with the train/validation split of
``gearfeat train`` and validation every epoch:

* **plain Keras**: the same head network, compiled the same way, ``fit`` on numpy arrays at batch 32;
* **DenseHead**: ``gearfeat.heads.DenseHead(epochs=30, patience=30)`` with every other setting at its
  default (patience 30: all 30 epochs run), timed from ``fit`` to its return (build, compile, train).

Features: the gear images through MobileNetV2 0.35/224 with the real weights (../shared), extracted once
into a cache under /tmp; or generated JPEGs with random weights (the head's speed does not depend on them).
"""
from __future__ import annotations

import _common as C


def main() -> None:
    args = C.arguments(__doc__, **{"--rounds": dict(type=int, default=5, help="alternating rounds"),
                                   "--epochs": dict(type=int, default=30, help="epochs (default 30)")})
    C.header("goal 4: heads in seconds (DenseHead.fit seconds for 30 epochs)", args)
    import numpy as np

    from gearfeat.dataset import split_dataset
    from gearfeat.extractor import ExtractorConfig
    from gearfeat.heads import DenseHead, compile_model
    from gearfeat.train import extract_dataset

    source = C.real_gear() or C.generated_jpegs(48 if args.quick else 1900)
    weights = C.real_weights()
    epochs = 3 if args.quick else args.epochs
    rounds = 1 if args.quick else args.rounds
    config = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=weights, image_size=128,
                             backbone_size=32 if args.quick else None)
    source = C.small_copy(source, 6) if args.quick else source
    extraction = extract_dataset(source, config, cache_dir=C.GENERATED / "cache", progress=False, log=lambda m: None)
    X, y, n_classes = extraction.features, extraction.dataset.labels, len(extraction.dataset.class_names)
    parts = split_dataset(extraction.dataset)
    train, val, test = ((X[parts[k]], y[parts[k]]) for k in ("train", "val", "test"))
    print(f"features {X.shape} ({'real' if weights else 'random'} weights): train {len(train[0])}, "
          f"val {len(val[0])}, test {len(test[0])}; {epochs} epochs, {rounds} round(s)")
    accuracy = {}

    def plain() -> None:
        template = DenseHead()
        model = compile_model(template.build(X.shape[1], n_classes), template.learning_rate)
        model.fit(*train, validation_data=val, batch_size=32, epochs=epochs, verbose=0)
        accuracy["plain Keras fit, batch 32"] = float(np.mean(model.predict(test[0], verbose=0).argmax(1) == test[1]))

    def dense_head() -> None:
        head = DenseHead(epochs=epochs, patience=epochs).fit(*train, validation_data=val, n_classes=n_classes)
        accuracy["DenseHead.fit (defaults)"] = float(head.score(*test))

    plain(), dense_head()  # warm-up: imports and TensorFlow's first-use costs, outside the timing
    seconds = C.interleaved({"plain Keras fit, batch 32": plain, "DenseHead.fit (defaults)": dense_head}, rounds,
                            quiet=not args.quick)
    mine = C.median(seconds["DenseHead.fit (defaults)"])
    print()
    C.table(["head", "median s", "rounds s", "test accuracy"],
            [[k, C.median(v), ", ".join(f"{s:.2f}" for s in v), accuracy[k]] for k, v in seconds.items()])
    C.verdict(C.Goal("goal 4, plain Keras / DenseHead time", C.median(seconds["plain Keras fit, batch 32"]) / mine, 1),
              C.Goal(f"goal 4, seconds for {epochs} epochs of the default DenseHead", mine, 2.0, False),
              quick=args.quick)


if __name__ == "__main__":
    main()
