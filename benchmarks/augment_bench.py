"""Cached augmented views (``--augment-views K``): test accuracy with and without them on low-data subsets of the
gear images, and what they cost, cold and warm.

The gear images (../shared) go once through MobileNetV2 alpha 0.35 with its ImageNet 128 px weights, at 128 px
(the plain cache). A fixed test set (the 15 % test part of the seed-0 split of the whole folder) scores every run;
from the rest, each subset seed draws N training images per class and max(2, N / 4) validation images per class
(early stopping). For each subset the views of its training images are extracted with the library's own call
(``FeatureExtractor.extract_views``, as ``train --augment-views K`` does), first K = the smaller count of
``--views`` (cold: an empty views cache for the first subset), then the larger (only the new view indexes are
computed), then the larger again (warm: nothing computed). The dense head (the defaults of ``gearfeat train``)
and the logistic-regression baseline train on the plain rows alone, then on the plain and view rows
(``gearfeat.workflows.transfer.training_rows``, what ``train`` uses); each is tested on the plain test images.

    python benchmarks/augment_bench.py            # N = 8 and 32, seeds 0-2, K = 4 and 8 (needs ../shared)
    python benchmarks/augment_bench.py --quick    # generated images, random weights, 32 px: a smoke run
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import _common as C

WEIGHTS_035_128 = C.SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5"


def subset(dataset, pool: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training and max(2, n // 4) validation records per class, drawn from ``pool`` with ``seed``."""
    rng = np.random.default_rng(seed)
    labels = dataset.labels
    train, val = [], []
    for label in range(len(dataset.class_names)):
        mine = rng.permutation(pool[labels[pool] == label])
        n_val = max(2, n // 4)
        train += mine[:n].tolist()
        val += mine[n:n + n_val].tolist()
    return np.sort(train), np.sort(val)


def main() -> None:
    args = C.arguments(__doc__, **{
        "--per-class": dict(default="8,32", help="training images per class, comma-separated (default 8,32)"),
        "--seeds": dict(type=int, default=3, help="subset seeds 0..N-1 (default 3)"),
        "--views": dict(default="4,8", help="two view counts K, the smaller first (default 4,8)"),
    })
    C.header("cached augmented views: accuracy with and without, and their cost", args)
    from gearfeat.data.dataset import scan_dataset, split_dataset
    from gearfeat.features.augment import AugmentConfig
    from gearfeat.features.extractor import ExtractorConfig, FeatureExtractor
    from gearfeat.models.baseline import make_baseline
    from gearfeat.models.heads import DenseHead
    from gearfeat.workflows.transfer import BASELINE_USES_VIEWS, training_rows

    per_class, views = [int(v) for v in args.per_class.split(",")], [int(v) for v in args.views.split(",")]
    seeds = range(args.seeds)
    if args.quick:
        source, weights, size = C.generated_jpegs(40), None, 32
        per_class, seeds, views = [4], range(1), [1, 2]
    elif C.GEAR.is_dir() and WEIGHTS_035_128.is_file():
        source, weights, size = C.GEAR, str(WEIGHTS_035_128), 128
    else:
        print(f"skipped: needs {C.GEAR} and {WEIGHTS_035_128} (../shared is absent); --quick runs on generated "
              "images instead")
        return
    config = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=weights, image_size=size, backbone_size=size)
    extractor = FeatureExtractor(config, progress=False)
    dataset = scan_dataset(source)
    print(f"data: {source} ({len(dataset.records)} images, {len(dataset.class_names)} classes); MobileNetV2 0.35, "
          f"{'ImageNet ' + Path(weights).name if weights else 'random weights'}, {size} px; "
          f"per class {per_class}, seeds {list(seeds)}, views K = {views}; baseline uses views: {BASELINE_USES_VIEWS}")
    with tempfile.TemporaryDirectory() as tmp:
        plain = extractor.extract(dataset, Path(tmp) / "cache")
        dataset, X, y = plain.dataset, plain.features, plain.dataset.labels
        print(f"plain cache, cold: {plain.computed} images in {plain.seconds:.1f} s "
              f"({1000 * plain.seconds / max(plain.computed, 1):.1f} ms per image)", flush=True)
        parts = split_dataset(dataset, seed=0)
        test, pool = parts["test"], np.concatenate([parts["train"], parts["val"]])
        rows, costs = [], []
        for n in per_class:
            for seed in seeds:
                train_idx, val_idx = subset(dataset, pool, n, seed)
                for k, stage in ((views[0], "cold"), (views[1], "more"), (views[1], "warm")):
                    extraction = extractor.extract_views(dataset, train_idx, AugmentConfig(k, seed=seed),
                                                         Path(tmp) / "cache")
                    costs.append((n, seed, k, stage, extraction.computed, extraction.reused, extraction.seconds))
                    if stage == "warm":
                        continue
                    for use_views in ((False, True) if k == views[0] else (True,)):
                        plain.views = extraction if use_views else None
                        X_fit, y_fit = training_rows(plain, train_idx, X[train_idx])
                        t0 = time.perf_counter()
                        head = DenseHead(seed=seed, **({"epochs": 5} if args.quick else {}))
                        head.fit(X_fit, y_fit, validation_data=(X[val_idx], y[val_idx]),
                                 classes=range(len(dataset.class_names)))
                        head_acc = float(np.mean(head.predict(X[test]) == y[test]))
                        base = make_baseline("logreg", 1.0, seed=seed).fit(X_fit, y_fit)
                        base_acc = float(np.mean(base.predict(X[test]) == y[test]))
                        rows.append((n, seed, k if use_views else 0, len(X_fit), head_acc, base_acc,
                                     time.perf_counter() - t0))
                        print(f"  N {n:3d} seed {seed} K {rows[-1][2]}: {len(X_fit):5d} rows, head {head_acc:.4f}, "
                              f"baseline {base_acc:.4f}", flush=True)
    print(f"\ntest set: {len(test)} plain images (fixed); accuracy per subset")
    C.table(["N/class", "seed", "K", "train rows", "head acc", "baseline acc", "fit s"], rows)
    print("\nmean test accuracy over the seeds")
    summary = []
    for n in per_class:
        for k in (0, *views):
            mine = [r for r in rows if r[0] == n and r[2] == k]
            summary.append((n, k, float(np.mean([r[4] for r in mine])), float(np.min([r[4] for r in mine])),
                            float(np.mean([r[5] for r in mine])), float(np.min([r[5] for r in mine]))))
    C.table(["N/class", "K", "head mean", "head min", "baseline mean", "baseline min"], summary)
    print("\nviews cost (extract_views; cold: the first subset ran on an empty views cache)")
    C.table(["N/class", "seed", "K", "stage", "computed", "reused", "seconds", "ms per computed row"],
            [(*c, 1000 * c[6] / c[4] if c[4] else float("nan")) for c in costs])
    computed = [c for c in costs if c[3] in ("cold", "more") and c[4]]
    per_row = sum(c[6] for c in computed) / max(sum(c[4] for c in computed), 1)
    warm = [c[6] for c in costs if c[3] == "warm"]
    print(f"views, computed: {1000 * per_row:.1f} ms per view row ({sum(c[4] for c in computed)} rows), "
          f"{per_row * plain.computed / max(plain.seconds, 1e-9):.2f}x a plain image's "
          f"{1000 * plain.seconds / max(plain.computed, 1):.1f} ms")
    print(f"views, warm (nothing computed): {min(warm):.2f}-{max(warm):.2f} s per subset "
          f"({max(c[5] for c in costs if c[3] == 'warm')} rows at most)")
    C.verdict(quick=args.quick)


if __name__ == "__main__":
    main()
