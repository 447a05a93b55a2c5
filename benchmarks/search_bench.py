"""Benchmark of ``gearfeat search`` on the gear cache: 24 trials with --jobs 2 and --jobs 1, and the naive way.

Measured side by side in one run, each search as the whole ``gearfeat search`` command in a fresh process
(start-up, cache read, trials, retraining the winner, stitching and writing the run folder):

* the 24 trials of the default space with ``--jobs 2`` and with ``--jobs 1`` (loky, the default backend),
  and with ``--jobs 2 --backend threading``;
* the naive way: each configuration trained as one model, image -> frozen backbone -> head, so the backbone
  runs on every training and validation image in every epoch. It is MEASURED on a few epochs of a few of
  the same configurations and EXTRAPOLATED to the 24 trials: each dense trial costs its own number of epochs
  (as run in the search) times the measured seconds per steady epoch, plus the measured one-time cost of a
  naive configuration (building the model with its backbone and loading the weights, and the extra time of
  the first epoch, which traces) -- the search's own trial times include the same kind of cost; each
  baseline trial costs one backbone pass over the train and validation images (measured) plus its own fit.
  The naive images are decoded once and held in memory, which favours the naive way. One naive
  configuration is timed after each search, so that both sides share the machine's drifting pace.

    flock /tmp/gearfeat-heavy.lock .venv/bin/python benchmarks/search_bench.py
    .venv/bin/python benchmarks/search_bench.py --quick    # smoke run on generated images (CI)

Without ``../shared`` (the gear images and weights) the full benchmark prints why and exits 0; ``--quick``
runs on generated images with a random-weight backbone at 32 px and needs nothing from ``../shared``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

ROOT, SHARED, GEAR, WEIGHTS = C.ROOT, C.SHARED, C.GEAR, C.WEIGHTS_035_224
QUICK_PARAMS = ["hidden=[16],[]", "epochs=2", "baseline=logreg"]
"""The --param values of the --quick search: its whole grid runs (--trials all)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on generated images (no ../shared)")
    parser.add_argument("--trials", type=int, default=None,
                        help=f"trials per search (default 24; quick: the whole grid of "
                             f"--param {' --param '.join(QUICK_PARAMS)})")
    parser.add_argument("--naive-configs", type=int, default=3, help="configurations timed the naive way")
    parser.add_argument("--naive-epochs", type=int, default=4, help="epochs of each naive configuration")
    parser.add_argument("--cache-dir", default=str(ROOT / "cache"), help="feature cache (default ./cache)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from gearfeat.data.dataset import split_dataset
    from gearfeat.features.extractor import ExtractorConfig
    from gearfeat.tuning.space import parse_space
    from gearfeat.data.synthetic import make_shapes_dataset
    from gearfeat._internal.system import machine_summary
    from gearfeat.features.extractor import extract_dataset

    work = Path(tempfile.mkdtemp(prefix="search-bench-"))
    quick_grid = len(parse_space(None, QUICK_PARAMS)) if args.quick and args.trials is None else None
    if args.quick:
        data = make_shapes_dataset(work / "shapes", per_class=20, size=32, seed=0)
        config = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=None, image_size=32, backbone_size=32)
        cli = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
               "--backbone-size", "32", *(a for p in QUICK_PARAMS for a in ("--param", p)),
               "--trials", str(args.trials or "all")]
        args.naive_configs, args.naive_epochs = 1, 2
        cache_dir = work / "cache"
    else:
        if not GEAR.is_dir() or not WEIGHTS.is_file():
            print(f"skip: the gear images and weights are not here ({SHARED} is absent or incomplete); "
                  "run with --quick for a smoke run on generated images")
            return 0
        data = GEAR
        config = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=str(WEIGHTS))
        cli = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", str(WEIGHTS),
               "--trials", str(args.trials or 24)]
        cache_dir = Path(args.cache_dir)
    cli = [*cli, "--cache-dir", str(cache_dir), "--seed", str(args.seed), "--no-progress"]

    print(f"machine: {machine_summary()}; load average at start {os.getloadavg()}")
    extraction = extract_dataset(data, config, cache_dir=cache_dir, progress=False, log=lambda m: None)
    print(f"cache: {extraction.cache_path} ({extraction.computed} images computed now, {extraction.reused} "
          f"reused); every search below reads it")

    parts = split_dataset(extraction.dataset, seed=args.seed)
    naive = NaiveTimer(extraction, parts, config)
    searches = {}
    for jobs, backend in ((2, "loky"), (1, "loky"), (2, "threading")):
        out = work / f"search-{backend}-jobs{jobs}"
        command = [sys.executable, "-m", "gearfeat", "search", str(data), *cli, "--jobs", str(jobs),
                   "--backend", backend, "--out", str(out)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr[-3000:])
            raise SystemExit(f"gearfeat search --jobs {jobs} --backend {backend} failed with exit status "
                             f"{done.returncode}")
        run = json.loads((out / "run.json").read_text())
        trials = json.loads((out / "trials.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        if quick_grid is not None and len(trials) != quick_grid:
            raise SystemExit(f"error: the --quick search ran {len(trials)} trials, not its whole grid of {quick_grid}")
        searches[jobs, backend] = {"wall": wall, "trials_seconds": run["search"]["seconds"], "trials": trials,
                          "order": [t["trial"] for t in sorted(trials, key=lambda t: t["rank"])],
                          "metrics": metrics}
        print(f"search --jobs {jobs} --backend {backend}: {len(trials)} trials, whole command {wall:.1f} s "
              f"(trials phase {run['search']['seconds']:.1f} s); winner trial {metrics['winner']['trial']} "
              f"({metrics['winner']['model']}), test accuracy {metrics['winner']['test_accuracy']:.4f}")
        # a naive configuration after each search: the machine's pace drifts, so both sides share its hours
        if naive.configs < min(args.naive_configs, len(dense_trials(searches))):
            naive.time_next(dense_trials(searches), args.naive_epochs)
    fast = searches[2, "loky"]
    same = all(run["order"] == fast["order"] for run in searches.values())
    print(f"leaderboard order identical in the three searches: {same}")

    trials = fast["trials"]
    while naive.configs < min(args.naive_configs, len(dense_trials(searches))):
        naive.time_next(dense_trials(searches), args.naive_epochs)
    naive = naive.summary()
    dense_epochs = sum(t["epochs_run"] for t in trials if t["model"] == "dense")
    baselines = [t for t in trials if t["model"] != "dense"]
    n_dense = len(trials) - len(baselines)
    naive_total = (dense_epochs * naive["epoch_seconds"] + n_dense * naive["setup_seconds"]
                   + sum(naive["pass_seconds"] + t["seconds"] for t in baselines))
    print(f"naive extrapolation: {dense_epochs} epochs over the {n_dense} dense trials x "
          f"{naive['epoch_seconds']:.2f} s + {n_dense} x {naive['setup_seconds']:.2f} s one-time cost + "
          f"{len(baselines)} baseline trials x ({naive['pass_seconds']:.2f} s backbone pass + their fit) "
          f"= {naive_total:.0f} s (with the median steady epoch, {naive['epoch_median']:.2f} s, instead: "
          f"{naive_total - dense_epochs * (naive['epoch_seconds'] - naive['epoch_median']):.0f} s)")

    rows = [(f"search --jobs {jobs} --backend {backend} (whole command; trials phase "
             f"{run['trials_seconds']:.1f} s)", run["wall"]) for (jobs, backend), run in searches.items()]
    rows.append((f"naive, the same {len(trials)} configurations (extrapolated, see above)", naive_total))
    print(f"\n| {'run':72} | seconds | vs --jobs 2 |\n|{'-' * 74}|--------:|------------:|")
    for name, seconds in rows:
        print(f"| {name:72} | {seconds:7.1f} | {seconds / fast['wall']:10.2f}x |")
    print(f"\n--jobs 1 / --jobs 2: {searches[1, 'loky']['wall'] / fast['wall']:.2f}x; naive / --jobs 2: "
          f"{naive_total / fast['wall']:.0f}x (trials phase alone: {naive_total / fast['trials_seconds']:.0f}x); "
          f"load average at end {os.getloadavg()}; run folders in {work}")
    return 0


def dense_trials(searches: dict) -> list[dict]:
    """The dense-head trials of the --jobs 2 search (the first one run): the configurations timed the naive way."""
    return [t for t in searches[2, "loky"]["trials"] if t["model"] == "dense"]


class NaiveTimer:
    """Times dense configurations the naive way: image -> frozen backbone -> head models trained on the images,
    each with a freshly built backbone (weights loaded), as a naive search would."""

    def __init__(self, extraction, parts, config):
        import numpy as np

        from gearfeat.data.images import load_image

        self.extraction, self.parts, self.config = extraction, parts, config
        records = extraction.dataset.records
        self.images = {name: np.stack([load_image(records[i].path, config.image_size) for i in parts[name]])
                       for name in ("train", "val")}
        extractor = extraction.extractor.model
        both = np.concatenate([self.images["train"], self.images["val"]])
        extractor.predict(both, batch_size=64, verbose=0)  # a first pass builds and traces (every batch shape)
        start = time.perf_counter()
        extractor.predict(both, batch_size=64, verbose=0)
        self.pass_seconds = time.perf_counter() - start
        self.steady, self.setup = [], []
        self.configs = 0

    def time_next(self, dense_trials, n_epochs: int) -> None:
        """Build and train the next of ``dense_trials`` for ``n_epochs``; keep its steady epochs and one-time cost."""
        import keras
        import numpy as np

        from gearfeat.features.extractor import build_extractor
        from gearfeat.models.heads import DenseHead, compile_model
        from gearfeat.models.stitch import stitch

        trial = dense_trials[self.configs]
        self.configs += 1
        y, parts = self.extraction.dataset.labels, self.parts

        class EpochTimer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.start)

        start = time.perf_counter()
        head = DenseHead(**trial["params"], seed=0)
        n_classes = len(self.extraction.dataset.class_names)
        model = stitch(build_extractor(self.config), head.build(self.extraction.features.shape[1], n_classes))
        compile_model(model, head.learning_rate)  # variables created before fit (one trace), as for the heads
        built = time.perf_counter() - start
        timer = EpochTimer()
        timer.seconds = []
        model.fit(self.images["train"], y[parts["train"]], validation_data=(self.images["val"], y[parts["val"]]),
                  batch_size=int(head.batch_size), epochs=n_epochs, callbacks=[timer], verbose=0)
        later = timer.seconds[1:] or timer.seconds
        self.steady.extend(later)
        self.setup.append(built + max(0.0, timer.seconds[0] - float(np.mean(later))))
        print(f"naive: trial {trial['trial']} {trial['params']}: built in {built:.2f} s; {n_epochs} epochs on "
              f"{len(self.images['train'])} + {len(self.images['val'])} images, seconds per epoch "
              f"{[round(s, 2) for s in timer.seconds]} (the first traces: its extra time counts as one-time cost)")

    def summary(self) -> dict:
        import numpy as np

        print(f"naive: one backbone pass over the train and validation images: {self.pass_seconds:.2f} s")
        return {"epoch_seconds": float(np.mean(self.steady)), "epoch_median": float(np.median(self.steady)),
                "setup_seconds": float(np.mean(self.setup)), "pass_seconds": self.pass_seconds}


if __name__ == "__main__":
    sys.exit(main())
