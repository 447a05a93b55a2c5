"""Issue 2's figures: `gearfeat train` on the real gear images, cold and warm, over several split seeds.

Runs the README's command as a subprocess: first with an empty cache (cold: every image goes through the
backbone), then again on the same cache (warm), then with other split seeds on the warm cache, and prints
test accuracy of the dense head and of the scikit-learn baseline for each, plus wall times.

    python benchmarks/gear_train.py            # seeds 0-4
    python benchmarks/gear_train.py --quick    # seeds 0-1 (CI smoke run)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "gear"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def run_train(out: Path, cache: Path, seed: int) -> tuple[float, dict, dict]:
    command = [sys.executable, "-m", "gearfeat", "train", str(DATA), "--backbone", "mobilenet_v2", "--alpha", "0.35",
               "--weights", str(WEIGHTS), "--cache-dir", str(cache), "--seed", str(seed), "--out", str(out),
               "--no-progress"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "metrics.json").read_text()), json.loads((out / "run.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two seeds only")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        print(f"skipped: needs {DATA} and {WEIGHTS} (the shared gear data and weights are absent)")
        return 0
    seeds = range(2 if args.quick else args.seeds)
    print(f"{'run':10} {'seed':>4} {'wall s':>7} {'extract s':>9} {'computed':>8} {'head acc':>8} {'baseline':>8}")
    accuracies = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for label, seed in [("cold", 0), *[("warm", s) for s in seeds]]:
            out = Path(tmp) / f"{label}-{seed}"
            seconds, metrics, run = run_train(out, cache, seed)
            print(f"{label:10} {seed:4d} {seconds:7.1f} {run['seconds']['extract']:9.2f} {run['images_computed']:8d} "
                  f"{metrics['test_accuracy']:8.4f} {metrics['baseline_test_accuracy']:8.4f}")
            if label == "warm":
                accuracies.append((metrics["test_accuracy"], metrics["baseline_test_accuracy"]))
    head = [a for a, _ in accuracies]
    base = [b for _, b in accuracies]
    print(f"dense head test accuracy over {len(head)} seeds: mean {sum(head) / len(head):.4f}, min {min(head):.4f}")
    print(f"baseline   test accuracy over {len(base)} seeds: mean {sum(base) / len(base):.4f}, min {min(base):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
