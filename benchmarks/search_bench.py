"""Benchmark of ``gearfeat search`` on the gear cache: the whole grid and 24 trials against a warm train, the naive way,
and stacked heads against the same configurations trained alone.

Measured side by side in one run, each command as a whole ``gearfeat`` process (start-up, cache read, trials,
stitching and writing the run folder), in the default backend (stacks of heads in the main process):

* one warm ``gearfeat train`` (run once before, untimed, to warm the caches);
* ``gearfeat search --trials 24`` and ``--trials all`` (the 198 configurations of the default space);
* the naive way: each configuration trained as one model, image -> frozen backbone -> head, so the backbone
  runs on every training and validation image in every epoch. It is MEASURED on a few epochs of a few of
  the same configurations and EXTRAPOLATED to the 24 trials: each dense trial costs its own number of epochs
  (as run in the search) times the measured seconds per steady epoch, plus the measured one-time cost of a
  naive configuration (building the model with its backbone and loading the weights, and the extra time of
  the first epoch, which traces) -- the search's own trial times include the same kind of cost; each
  baseline trial costs one backbone pass over the train and validation images (measured) plus its own fit.
  The naive images are decoded once and held in memory, which favours the naive way. One naive
  configuration is timed after each search, so that both sides share the machine's drifting pace;
* each dense configuration of the 24-trial search trained alone (one Keras ``DenseHead.fit``, the way trials
  ran before stacks), with the search's seed and with the next seed: the median absolute difference of
  validation accuracy, and the leaderboard's top 3 (trial and validation accuracy) stacked, alone and alone
  with the next seed. A stacked head draws its dropout masks as its Keras ``Dropout`` layers do, so stacked
  and alone follow the same arithmetic up to float rounding; the top 3 alone at the next seed shows how much
  seed noise alone moves it, and the accuracy the stacked top 3 reach alone tells whether picking by the
  stacked scores costs anything;
* one stack of the default space's largest shape (24 heads of [512], batch 64) with the dropout masks Keras
  draws and with masks from a NumPy stream, as stacks drew them before: what training as alone costs;
* the 6 baseline trials in 2 joblib threads against 2 loky processes (their start-up included), which the
  ``local`` backend's choice of threads rests on.

The ratios are printed last.

    flock /tmp/gearfeat-heavy.lock .venv/bin/python benchmarks/search_bench.py
    .venv/bin/python benchmarks/search_bench.py --quick    # smoke run on generated images (CI)

Without ``../shared`` (the gear images and weights) the full benchmark prints why and exits 0; ``--quick``
runs on generated images with a random-weight backbone at 32 px and needs nothing from ``../shared``; it runs
the commands in its own process (no warm-up train, no start-up per command) and skips the threads-vs-processes
timing, so that it stays a short smoke run.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np

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
        common = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
                  "--backbone-size", "32"]
        space = [a for p in QUICK_PARAMS for a in ("--param", p)]
        sizes = {"24": str(args.trials or 2), "all": "all"}
        args.naive_configs, args.naive_epochs = 1, 2
        cache_dir = work / "cache"
    else:
        if not GEAR.is_dir() or not WEIGHTS.is_file():
            print(f"skip: the gear images and weights are not here ({SHARED} is absent or incomplete); "
                  "run with --quick for a smoke run on generated images")
            return 0
        data = GEAR
        config = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=str(WEIGHTS))
        common = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", str(WEIGHTS)]
        space = []
        sizes = {"24": str(args.trials or 24), "all": "all"}
        cache_dir = Path(args.cache_dir)
    common = [*common, "--cache-dir", str(cache_dir), "--seed", str(args.seed), "--no-progress"]

    print(f"machine: {machine_summary()}; load average at start {os.getloadavg()}")
    extraction = extract_dataset(data, config, cache_dir=cache_dir, progress=False)
    print(f"cache: {extraction.cache_path} ({extraction.computed} images computed now, {extraction.reused} "
          f"reused); every command below reads it")

    parts = split_dataset(extraction.dataset, seed=args.seed)
    naive = NaiveTimer(extraction, parts, config)
    walls, searches = {}, {}
    warm_up = [] if args.quick else [("train (warm-up)", ["train"])]
    for name, command in [*warm_up, ("train", ["train"]),
                          *((f"search --trials {n}", ["search", *space, "--trials", n]) for n in sizes.values())]:
        out = work / name.replace(" ", "_").replace("(", "").replace(")", "")
        start = time.perf_counter()
        code, errors = gearfeat_command([command[0], str(data), *common, *command[1:], "--out", str(out)],
                                        in_process=args.quick)
        walls[name] = time.perf_counter() - start
        if code != 0:
            print(errors[-3000:])
            raise SystemExit(f"gearfeat {name} failed with exit status {code}")
        print(f"{name}: whole command {walls[name]:.1f} s")
        if command[0] != "search":
            continue
        run = json.loads((out / "run.json").read_text())
        trials = json.loads((out / "trials.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        searches[name] = {"wall": walls[name], "trials_seconds": run["search"]["seconds"], "trials": trials,
                          "order": [t["trial"] for t in sorted(trials, key=lambda t: t["rank"])]}
        print(f"  {len(trials)} trials (trials phase {run['search']['seconds']:.1f} s); winner trial "
              f"{metrics['winner']['trial']} ({metrics['winner']['model']}), test accuracy "
              f"{metrics['winner']['test_accuracy']:.4f}")
        # a naive configuration after each search: the machine's pace drifts, so both sides share its hours
        if naive.configs < min(args.naive_configs, len(dense_of(trials))):
            naive.time_next(dense_of(trials), args.naive_epochs)
    small, whole = searches[f"search --trials {sizes['24']}"], searches["search --trials all"]
    if quick_grid is not None and len(whole["trials"]) != quick_grid:
        raise SystemExit(f"error: the --quick search ran {len(whole['trials'])} trials, not its grid of {quick_grid}")

    trials = small["trials"]
    while naive.configs < min(args.naive_configs, len(dense_of(trials))):
        naive.time_next(dense_of(trials), args.naive_epochs)
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

    agreement = alone_agreement(extraction, parts, small["trials"], args.seed)
    pools = None if args.quick else baseline_pools(
        extraction, parts, [t["params"] for t in whole["trials"] if t["model"] != "dense"], args.seed)
    masks = None if args.quick else mask_cost(extraction, parts, args.seed)
    train = walls["train"]
    diffs, noise, tops = agreement["diffs"], agreement["seed_diffs"], agreement["tops"]
    if pools:
        print(f"baseline trials ({len(pools['threads'][1])}): 2 threads {pools['threads'][0]:.2f} s, 2 loky "
              f"processes {pools['processes'][0]:.2f} s: "
              f"{'threads' if pools['threads'][0] <= pools['processes'][0] else 'processes'} faster")
    if masks:
        for name, label in (("keras", "the masks Keras draws"), ("numpy", "a NumPy stream per head")):
            seconds, epochs, drawing, per_epoch = masks[name]
            print(f"one stack of 24 heads [512], batch 64, one thread, {label}: {seconds:.1f} s for {epochs:.0f} "
                  f"head-epochs ({1000 * per_epoch:.0f} ms each), {drawing:.2f} s of it drawing masks")
        print(f"  seconds per head-epoch, Keras's masks / NumPy's: {masks['keras'][3] / masks['numpy'][3]:.2f}x "
              "(what training as alone costs)")
    for name, top in tops.items():
        print(f"top 3 {name}: " + ", ".join(f"trial {i} {a:.4f}" for i, a in top))
    print(f"the stacked top 3 trained alone: mean validation accuracy {agreement['picked']:.4f}, the alone top 3 "
          f"{agreement['best']:.4f}")
    print(f"\nload average at end {os.getloadavg()}; run folders in {work}")
    print(f"whole search --trials all ({len(whole['trials'])} trials) / one whole warm train: "
          f"{whole['wall'] / train:.2f}x (goal <= 6x)")
    print(f"whole search --trials {sizes['24']} / one whole warm train: {small['wall'] / train:.2f}x (goal <= 2x)")
    print(f"naive / whole search --trials {sizes['24']}: {naive_total / small['wall']:.0f}x (goal >= 100x; trials "
          f"phase alone: {naive_total / small['trials_seconds']:.0f}x)")
    print(f"stacked vs alone validation accuracy, |difference| over {len(diffs)} dense configurations: median "
          f"{float(np.median(diffs)):.4f}, max {max(diffs):.4f} (goal median <= 0.005); alone vs alone with the next "
          f"seed: median {float(np.median(noise)):.4f}, max {max(noise):.4f}")
    same = [i for i, _ in tops["stacked"]] == [i for i, _ in tops["alone"]]
    seeds_same = [i for i, _ in tops["alone"]] == [i for i, _ in tops["alone, next seed"]]
    print(f"leaderboard top 3 the same as trained alone: {same}; alone the same at the next seed: {seeds_same}"
          + ("" if same or seeds_same else " (the top 3 is within seed noise: another seed reorders it alone too)"))
    return 0


def gearfeat_command(argv: list[str], *, in_process: bool) -> tuple[int, str]:
    """Run ``gearfeat ARGV``: a fresh process (the whole command's cost), or, for --quick, in this one (no
    start-up; the smoke run stays short). Returns the exit status and the command's error output."""
    if not in_process:
        done = subprocess.run([sys.executable, "-m", "gearfeat", *argv], capture_output=True, text=True)
        return done.returncode, done.stderr
    from gearfeat.cli import main as gearfeat_main

    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = gearfeat_main(argv)
    return code, output.getvalue()


def dense_of(trials: list[dict]) -> list[dict]:
    """The dense-head trials of a search: the configurations timed the naive way."""
    return [t for t in trials if t["model"] == "dense"]


def alone_agreement(extraction, parts, trials: list[dict], seed: int) -> dict:
    """Each dense trial of a search trained alone (one Keras ``DenseHead.fit``, as before stacks) with ``seed``
    and with ``seed + 1``: ``diffs`` (|validation accuracy stacked - alone|), ``seed_diffs`` (alone at the two
    seeds), ``tops`` (the leaderboard's top 3 as (trial, validation accuracy), baselines as they were, for
    each), and the mean validation accuracy alone of the stacked top 3 (``picked``) and of the alone top 3
    (``best``)."""
    from gearfeat.tuning.trials import rank_trials, run_trial

    X, y = extraction.features, extraction.dataset.labels
    arrays = (X[parts["train"]], y[parts["train"]], X[parts["val"]], y[parts["val"]])
    n_classes = len(extraction.dataset.class_names)
    boards = {"stacked": [{k: v for k, v in t.items() if k != "rank"} for t in trials]}
    for name, head_seed in (("alone", seed), ("alone, next seed", seed + 1)):
        boards[name] = [{**t, **run_trial(t["params"], *arrays, n_classes, seed=head_seed)} if t["model"] == "dense"
                        else t for t in boards["stacked"]]
    accuracy = {name: [t["val_accuracy"] for t in board if t["model"] == "dense"] for name, board in boards.items()}
    tops = {name: [(t["trial"], t["val_accuracy"]) for t in rank_trials(board)[:3]] for name, board in boards.items()}
    alone = {t["trial"]: t["val_accuracy"] for t in boards["alone"]}
    return {"diffs": [abs(a - b) for a, b in zip(accuracy["stacked"], accuracy["alone"])],
            "seed_diffs": [abs(a - b) for a, b in zip(accuracy["alone"], accuracy["alone, next seed"])],
            "tops": tops, "picked": float(np.mean([alone[i] for i, _ in tops["stacked"]])),
            "best": float(np.mean([a for _, a in tops["alone"]]))}


def baseline_pools(extraction, parts, configurations: list[dict], seed: int) -> dict:
    """The baseline ``configurations`` run in 2 joblib threads and in 2 fresh loky processes (start-up and
    imports included): each backend's (seconds, rows)."""
    import joblib
    from joblib.externals.loky import get_reusable_executor

    from gearfeat.tuning.trials import run_trial

    X, y = extraction.features, extraction.dataset.labels
    arrays = (X[parts["train"]], y[parts["train"]], X[parts["val"]], y[parts["val"]])
    n_classes = len(extraction.dataset.class_names)
    result = {}
    for name, backend in (("threads", "threading"), ("processes", "loky")):
        start = time.perf_counter()
        with joblib.parallel_config(backend=backend, n_jobs=2):
            rows = joblib.Parallel()(joblib.delayed(run_trial)(c, *arrays, n_classes, seed) for c in configurations)
        result[name] = (time.perf_counter() - start, rows)
        if backend == "loky":  # its workers leave now, not while the rest of the benchmark runs
            get_reusable_executor().shutdown(wait=True)
    return result


def mask_cost(extraction, parts, seed: int, rounds: int = 2) -> dict:
    """What drawing the dropout masks as Keras does costs: one stack of the default space's 24 heads of
    ``hidden`` [512] and batch 64 (its largest shape) trained on one BLAS thread, with the library's masks and
    with masks from a NumPy stream per head and layer (how stacks drew them before), alternating. Other masks
    stop the heads at other epochs, so the whole fits do different work: each side's median ``fit`` seconds,
    head-epochs (summed over the heads) and seconds spent drawing masks, and seconds per head-epoch."""
    import itertools

    from threadpoolctl import threadpool_limits

    from gearfeat.models import stacked
    from gearfeat.models.heads import DenseHead

    X, y = extraction.features, extraction.dataset.labels
    heads = [DenseHead(hidden=[512], dropout=d, l2=l2, batch_norm=bn, learning_rate=lr, batch_size=64, epochs=60,
                       patience=5, seed=seed)
             for d, l2, bn, lr in itertools.product([0.2, 0.5], [0.0, 1e-4], [False, True], [3e-4, 1e-3, 3e-3])]
    keras_masks = stacked._Training._dropout_mask

    def numpy_masks(self, active, layer, rates, b, units):
        if not rates.any():
            return None
        streams = self.__dict__.setdefault("streams", {})
        mask = np.ones((b, len(active), units), np.float32)
        for j, i in enumerate(active):
            if rates[j]:
                rng = streams.setdefault((i, layer), np.random.default_rng([int(self.stack.heads[i].seed), layer]))
                np.multiply(rng.random((b, units), dtype=np.float32) >= rates[j], np.float32(1 / (1 - rates[j])),
                            out=mask[:, j])
        return mask

    def timed(masks, spent: list):
        def draw(*args):
            start = time.perf_counter()
            try:
                return masks(*args)
            finally:
                spent[0] += time.perf_counter() - start
        return draw

    runs: dict[str, list] = {"keras": [], "numpy": []}
    try:
        with threadpool_limits(1):
            for _ in range(rounds):
                for name, masks in (("keras", keras_masks), ("numpy", numpy_masks)):
                    spent = [0.0]
                    stacked._Training._dropout_mask = timed(masks, spent)
                    start = time.perf_counter()
                    fitted = stacked.StackedHeads(heads).fit(
                        X[parts["train"]], y[parts["train"]], classes=range(len(extraction.dataset.class_names)),
                        validation_data=(X[parts["val"]], y[parts["val"]]))
                    seconds = time.perf_counter() - start
                    epochs = sum(len(h["loss"]) for h in fitted.histories_)
                    runs[name].append((seconds, epochs, spent[0], seconds / epochs))
    finally:
        stacked._Training._dropout_mask = keras_masks
    return {name: [float(np.median(column)) for column in zip(*rows)] for name, rows in runs.items()}


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
