"""Every export format of one trained run side by side: file size, per-image CPU latency, the largest deviation
of its probabilities from model.h5's and its accuracy on the run's test split.

Full: ``gearfeat train`` on the gear images (``$GEARFEAT_SHARED/data/gear``) with MobileNetV2 0.35 at 128 px and
the shared ImageNet 0.35/128 weights, then each export of that run (``gearfeat export RUN --format ...``, which
checks it on every test image of the run). Latency calls each file the way docs/deploying.md shows, without
gearfeat's runners: the SavedModel's ``serve`` signature, the TFLite interpreter's ``serve`` signature runner,
Keras ``predict_on_batch`` for ``.h5``/``.keras``; batch 1 (one image per call) and batch 32, the formats
alternating in every round. --quick: a tiny random-weight 32 px backbone on 24 generated images (a smoke run).

    flock /tmp/gearfeat-heavy.lock .venv/bin/python benchmarks/export_bench.py [--quick]
"""
from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

import _common as C

import gearfeat  # noqa: E402  registers the Lambda functions the .h5 and .keras files refer to
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from gearfeat.data.synthetic import make_shapes_dataset  # noqa: E402
from gearfeat.features.backbones import register_backbone  # noqa: E402

tf.get_logger().setLevel("ERROR")  # Keras's retracing notes: predict_on_batch traces once per batch shape

WEIGHTS_035_128 = C.SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5"
BATCH = 32
EXPORTS = (("savedmodel", "savedmodel", None, "savedmodel"), ("tflite", "tflite", None, "model.tflite"),
           ("tflite float16", "tflite", "float16", "model-f16.tflite"),
           ("tflite dynamic", "tflite", "dynamic", "model-dyn.tflite"), ("keras", "keras", None, "model.keras"))


def tiny_backbone(include_top=False, weights=None, input_shape=None, pooling=None) -> keras.Model:
    """--quick's backbone: two small convolutions (tracing and converting it takes a second, not half a minute)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="tiny")


def trained_run(quick: bool, work: Path) -> Path:
    """A `gearfeat train` run folder to export."""
    if quick:
        register_backbone("bench_tiny", tiny_backbone, native_size=32, features=16, preprocess="tf")
        data = make_shapes_dataset(work / "data", per_class=8, size=32, seed=0)
        config = gearfeat.ExtractorConfig(backbone="bench_tiny", weights=None, image_size=32)
        head = gearfeat.DenseHead(hidden=(8,), epochs=3)
    else:
        data = C.real_gear() or make_shapes_dataset(C.GENERATED / "export-shapes", per_class=100, size=128, seed=0)
        weights = str(WEIGHTS_035_128) if WEIGHTS_035_128.is_file() else None
        if weights is None:
            print(f"note: {WEIGHTS_035_128} is absent; random weights (sizes and latencies do not depend on them)")
        config = gearfeat.ExtractorConfig(backbone="mobilenet_v2", alpha=0.35, weights=weights, image_size=128,
                                          backbone_size=128)
        head = gearfeat.DenseHead()
    print(f"training on {data}: {config.backbone} at {config.image_size} px, weights {config.weights or 'random'}",
          flush=True)
    result = gearfeat.train(data, work / "run", config=config, head=head, cache_dir=C.GENERATED / "export-cache",
                            progress=False)
    return result.run_dir


def plain_caller(name: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities of uint8 images from ``path``, called as docs/deploying.md shows (no gearfeat runner)."""
    if name == "savedmodel":
        serve = tf.saved_model.load(str(path)).signatures["serve"]
        return lambda x: serve(images=tf.constant(x))["output_0"].numpy()
    if name.startswith("tflite"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's notice that LiteRT will replace it
            runner = tf.lite.Interpreter(model_path=str(path)).get_signature_runner("serve")
        return lambda x: runner(images=x)["output_0"]
    model = gearfeat.load_model(path, compile=False) if name == "model.h5" else \
        keras.models.load_model(path, compile=False)
    return lambda x: model.predict_on_batch(x.astype(np.float32))


def per_image(call: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int) -> Callable[[], float]:
    """A round: ``images`` through ``call`` ``batch`` at a time; returns the seconds per image."""
    def run() -> float:
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            call(images[i:i + batch])
        return (time.perf_counter() - start) / len(images)
    return run


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    args = C.arguments(__doc__, **{"--rounds": dict(type=int, default=5, help="timed rounds per format")})
    C.header("export formats: size, per-image latency, deviation from model.h5, test accuracy", args)
    rounds = 1 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        run = trained_run(args.quick, Path(tmp))
        files, records = {"model.h5": run / "model.h5"}, {}
        for name, fmt, quantize, file in EXPORTS:
            files[name] = Path(tmp) / file
            records[name] = gearfeat.export(run, files[name], format=fmt, quantize=quantize)
        h5 = next(iter(records.values()))
        records["model.h5"] = {"max_deviation": 0.0, "test_accuracy": h5["h5_test_accuracy"],
                               "check_images": h5["check_images"]}
        size = h5["image_size"]
        images = np.random.default_rng(0).integers(0, 256, ((8 if args.quick else 2) * BATCH, size, size, 3),
                                                   np.uint8)
        singles = images[:8 if args.quick else 24]
        callers = {name: plain_caller(name, path) for name, path in files.items()}
        for call in callers.values():  # warm-up: the first call of each traces or allocates
            call(images[:1]), call(images[:BATCH])
        runs = {**{(name, 1): per_image(call, singles, 1) for name, call in callers.items()},
                **{(name, BATCH): per_image(call, images, BATCH) for name, call in callers.items()}}
        times: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
        for _ in range(rounds):  # one wait for idle CPUs per round, then every format back to back
            if not args.quick:
                C.wait_until_quiet(timeout=60)
            for key, seconds in C.interleaved(runs, 1, quiet=False).items():
                times[key] += seconds
        sizes = {name: size_of(path) for name, path in files.items()}
    print(f"checked on {h5['check_images']}; latency: median of {rounds} round(s), batch 1 over {len(singles)} "
          f"images, batch {BATCH} over {len(images)}")
    C.table(["format", "size MB", "ms/image b1", f"ms/image b{BATCH}", "max deviation", "test accuracy"],
          [[name, sizes[name] / 1e6, C.median(times[name, 1]) * 1e3, C.median(times[name, BATCH]) * 1e3,
            f"{records[name]['max_deviation']:.1e}", f"{records[name]['test_accuracy']:.4f}"] for name in files])
    C.verdict(quick=args.quick)


if __name__ == "__main__":
    main()
