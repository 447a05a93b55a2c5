"""Issue 2's figures: `gearfeat train` on the real gear images, cold and warm, over several split seeds.

Runs the README's command as a subprocess: first with an empty cache (cold: every image goes through the
backbone), then again on the same cache (warm), then with other split seeds on the warm cache, and prints
test accuracy of the dense head and of the scikit-learn baseline for each, plus wall times. Fails (exit 1,
one line) if a run fails, if the cold run does not compute every distinct image (byte-identical copies
share one cache row) or if a warm run computes any.

    python benchmarks/gear_train.py            # seeds 0-4 on the gear images (needs ../shared)
    python benchmarks/gear_train.py --quick    # seeds 0-1 (CI smoke run)

With ``--quick`` and without ``../shared`` (or with ``--generated N``) it runs on generated JPEGs
(``_common.generated_jpegs``) with a random-weight MobileNetV2 0.35 at 64 px and 10-epoch heads: a smoke
run whose accuracies mean nothing, but which proves the command, the cache reuse and this script work.
Without ``../shared`` the full run prints why and exits 0.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

DATA = C.GEAR
WEIGHTS = C.WEIGHTS_035_224
GEAR_ARGS = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", str(WEIGHTS)]
"""The README's command on the gear images."""
GENERATED_ARGS = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "64",
                  "--backbone-size", "64", "--epochs", "10"]
"""The smoke run on generated images: random weights, small images, short heads."""
GENERATED_IMAGES = 80  # 4 classes of 20: enough for a stratified 70/15/15 split


def run_train(data: Path, options: list[str], out: Path, cache: Path, seed: int) -> tuple[float, dict, dict]:
    command = [sys.executable, "-m", "gearfeat", "train", str(data), *options, "--cache-dir", str(cache),
               "--seed", str(seed), "--out", str(out), "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 3):  # 3: success, some input files skipped
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: gearfeat train --seed {seed} failed with exit status {done.returncode}: {last}")
    return seconds, json.loads((out / "metrics.json").read_text()), json.loads((out / "run.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="two seeds only; on generated images where ../shared is absent (CI smoke run)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--generated", type=int, default=None, metavar="N",
                        help="use N generated JPEGs with random weights instead of the gear images")
    args = parser.parse_args()
    have_gear = DATA.is_dir() and WEIGHTS.is_file()
    if args.generated or (args.quick and not have_gear):
        if not args.generated:
            print(f"note: {DATA} or {WEIGHTS} is absent; --quick runs on generated JPEGs with random weights")
        data, options = C.generated_jpegs(args.generated or GENERATED_IMAGES), GENERATED_ARGS
    elif have_gear:
        data, options = DATA, GEAR_ARGS
    else:
        print(f"skipped: needs {DATA} and {WEIGHTS} (the shared gear data and weights are absent); "
              "--quick runs on generated images instead")
        return 0
    from gearfeat.data.dataset import scan_dataset

    scanned = scan_dataset(data)
    distinct = len(set(scanned.hashes))  # the cache holds one row per distinct content
    seeds = range(2 if args.quick else args.seeds)
    print(f"data: {data} ({len(scanned.records)} images, {distinct} distinct contents); "
          f"gearfeat train {' '.join(options)}")
    print(f"{'run':10} {'seed':>4} {'wall s':>7} {'extract s':>9} {'computed':>8} {'head acc':>8} {'baseline':>8}")
    accuracies = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for label, seed in [("cold", 0), *[("warm", s) for s in seeds]]:
            out = Path(tmp) / f"{label}-{seed}"
            seconds, metrics, run = run_train(data, options, out, cache, seed)
            computed = run["images_computed"]
            print(f"{label:10} {seed:4d} {seconds:7.1f} {run['seconds']['extract']:9.2f} {computed:8d} "
                  f"{metrics['test_accuracy']:8.4f} {metrics['baseline_test_accuracy']:8.4f}", flush=True)
            # cold: every distinct image but those of files that failed to decode (each takes at most one)
            least, most = (distinct - run["n_skipped"], distinct) if label == "cold" else (0, 0)
            if not least <= computed <= most:
                print(f"error: the {label} run (seed {seed}) computed {computed} images, expected "
                      f"{'every distinct readable image' if label == 'cold' else 'none: the cache is warm'} "
                      f"({least}..{most})")
                return 1
            if label == "warm":
                accuracies.append((metrics["test_accuracy"], metrics["baseline_test_accuracy"]))
    head = [a for a, _ in accuracies]
    base = [b for _, b in accuracies]
    print(f"dense head test accuracy over {len(head)} seeds: mean {sum(head) / len(head):.4f}, min {min(head):.4f}")
    print(f"baseline   test accuracy over {len(base)} seeds: mean {sum(base) / len(base):.4f}, min {min(base):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
