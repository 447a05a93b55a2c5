"""File size and per-image CPU latency of model.h5 and each export (SavedModel, TFLite, TFLite dynamic, .keras),
side by side in one run. Full: MobileNetV2 0.35 at 128 px with the ../shared ImageNet weights when present
(a random head: latency and size do not depend on its training); --quick: a tiny random 32 px model.

    flock /tmp/gearfeat-heavy.lock python benchmarks/export_bench.py [--quick]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

import gearfeat  # noqa: F401  registers the Lambda functions
from gearfeat.features.extractor import ExtractorConfig, build_extractor
from gearfeat.models.export import export, metadata_path, open_model
from gearfeat.models.stitch import save_model

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / \
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5"


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size = 32 if args.quick or not WEIGHTS.is_file() else 128
    weights = None if size == 32 else str(WEIGHTS)
    config = ExtractorConfig(backbone="mobilenet_v2", alpha=0.35, weights=weights, image_size=size, backbone_size=size)
    extractor = build_extractor(config)
    model = keras.Model(extractor.input, keras.layers.Dense(4, activation="softmax")(extractor.output))
    images = np.random.default_rng(0).integers(0, 256, (8 if args.quick else 64, size, size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        h5 = save_model(model, tmp / "model.h5", ["a", "b", "c", "d"])
        files = {"model.h5": h5}
        for name, fmt, quantize, out in (("savedmodel", "savedmodel", None, tmp / "sm"),
                                         ("tflite", "tflite", None, tmp / "m.tflite"),
                                         ("tflite dynamic", "tflite", "dynamic", tmp / "q.tflite"),
                                         ("keras", "keras", None, tmp / "m.keras")):
            export(h5, out, format=fmt, quantize=quantize, log=lambda m: None)
            files[name] = out
        print(f"MobileNetV2 0.35 at {size} px, weights {'imagenet (shared)' if weights else 'random'}; "
              f"{len(images)} images, batch 1 and batch {len(images)}")
        print(f"{'format':16}{'size MB':>10}{'ms/image b1':>14}{'ms/image b' + str(len(images)):>14}")
        for name, path in files.items():
            runner = open_model(path)
            runner(images[:2])  # warm-up
            t0 = time.perf_counter()
            for image in images[:8]:
                runner(image[None], batch_size=1)
            single = (time.perf_counter() - t0) / 8 * 1000
            t0 = time.perf_counter()
            runner(images, batch_size=len(images))
            batched = (time.perf_counter() - t0) / len(images) * 1000
            extra = metadata_path(path).stat().st_size if name != "model.h5" else 0
            print(f"{name:16}{(size_of(path) + extra) / 1e6:10.2f}{single:14.2f}{batched:14.2f}")


if __name__ == "__main__":
    main()
