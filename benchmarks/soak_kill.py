"""Soak test: SIGKILL ``gearfeat extract`` at random moments, again and again; the cache must survive.

Each round starts ``gearfeat extract`` on a generated dataset, committing after every batch (the harshest
setting: the most HDF5 writes a kill can land in), and SIGKILLs it after a random delay: either 0.5-4 s
after it starts (often still starting up), or at a random moment after its first commit of the round.
After each kill the cache file is verified as the next run will (rows kept, or damaged). Once a round
finishes, the cache must equal a reference cache from a run never interrupted: same rows in the same order
(hashes, labels, paths), features within 1e-6; then the soak starts over with an empty cache until it has
killed enough. The summary says how many kills it survived, after how many the next run resumed (kept the
committed rows) and after how many it had to rebuild a damaged file.

    flock /tmp/gearfeat-heavy.lock .venv/bin/python benchmarks/soak_kill.py            # 60 rounds
    flock /tmp/gearfeat-heavy.lock .venv/bin/python benchmarks/soak_kill.py --quick    # 6 rounds (CI)

``tests/test_reliability.py`` runs a short version of the same loop (:func:`kill_loop`).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

# A tiny backbone whose random features are far from zero (random MobileNets give ~1e-11 at 32 px, which
# would make any comparison of features vacuous).
BACKBONE_ARGS = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--backbone-size", "32",
                 "--no-progress"]
# `gearfeat extract` through the real CLI entry point, with the commit interval (private, 5 s by default)
# taken from the first argument: 0 commits after every batch.
_CLI = ("import sys, gearfeat.features.extractor as x; x._COMMIT_SECONDS = float(sys.argv.pop(1)); "
        "from gearfeat.cli import main; sys.exit(main())")
_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def extract_command(data_dir: Path, cache_dir: Path, *, batch_size: int = 8, commit_seconds: float = 0.0) -> list[str]:
    """The ``gearfeat extract`` command line (as a subprocess of this Python)."""
    return [sys.executable, "-c", _CLI, str(commit_seconds), "extract", str(data_dir), *BACKBONE_ARGS,
            "--cache-dir", str(cache_dir), "--batch-size-extract", str(batch_size)]


def run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_ENV)


def cache_file(cache_dir: Path) -> Path | None:
    files = sorted(Path(cache_dir).glob("*.h5"))
    return files[0] if files else None


def cache_attrs() -> dict[str, object]:
    """The cache settings of :data:`BACKBONE_ARGS`."""
    from gearfeat.features.extractor import ExtractorConfig
    return ExtractorConfig("vgg16", weights=None, image_size=32, backbone_size=32).cache_attrs()


def verified_rows(cache_dir: Path) -> int | None:
    """Rows a next run would keep (0 without a file), or None if it would find the file damaged.

    Runs gearfeat's own verification on a copy, so that the next run still meets the file as the kill left it.
    """
    from gearfeat.features.cache import FeatureCache

    path = cache_file(cache_dir)
    if path is None:
        return 0
    attrs = cache_attrs()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, FeatureCache.path_for(tmp, attrs))
        with FeatureCache.open(tmp, attrs, write=False) as cache:  # a damaged file is moved aside as .corrupt
            return None if FeatureCache.path_for(tmp, attrs).with_suffix(".corrupt").exists() else len(cache)


def compare_caches(a: Path, b: Path, atol: float = 1e-6) -> list[str]:
    """Differences between two cache files (empty when identical: rows, order, hashes, labels, features)."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        n = int(fa.attrs["n_rows"])
        if int(fb.attrs["n_rows"]) != n:
            return [f"n_rows {n} != {int(fb.attrs['n_rows'])}"]
        problems = [f"{key} differs" for key in ("sha256", "label", "path")
                    if not np.array_equal(fa[key][:n], fb[key][:n])]
        delta = float(np.max(np.abs(fa["features"][:n] - fb["features"][:n]), initial=0.0))
        if delta > atol:
            problems.append(f"features differ by up to {delta:.3g}")
    return problems


@dataclass
class SoakStats:
    """What happened in a kill loop."""

    kills: int = 0                 #: rounds ended by SIGKILL
    kills_during_extraction: int = 0  #: ... of which after the round's first commit
    resumed: int = 0               #: kills after which the file verified: the next run keeps its rows
    rebuilt: int = 0               #: kills after which the file failed verification: the next run rebuilds
    rebuild_warnings: int = 0      #: "failed verification" warnings printed by the runs
    copied: int = 0                #: runs that met a file HDF5 could read but not write, and copied its rows
    rows_after_kill: list[int | None] = field(default_factory=list)  #: None: damaged
    seconds: float = 0.0

    def add(self, other: "SoakStats") -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


def _kill_round(command: list[str], cache_dir: Path, rng: random.Random, max_delay: float,
                startup_kill: bool) -> tuple[str, str]:
    """One run of ``command``, SIGKILLed after a random delay; returns (outcome, stderr)."""
    path = cache_file(cache_dir)
    before = path.stat().st_mtime_ns if path else None
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_ENV)
    deadline = time.monotonic() + (rng.uniform(0.5, 4.0) if startup_kill else 600)
    outcome = "killed"
    while time.monotonic() < deadline:  # wait for a commit of this round (the file changes), or the end
        if proc.poll() is not None:
            outcome = "finished"
            break
        path = cache_file(cache_dir)
        if not startup_kill and path is not None and path.stat().st_mtime_ns != before:
            time.sleep(rng.uniform(0.0, max_delay))
            outcome = "killed_during_extraction"
            break
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    else:
        outcome = "finished"
    _, err = proc.communicate(timeout=60)
    return outcome, err


def kill_loop(data_dir: Path, cache_dir: Path, *, rounds: int, seed: int = 0, max_delay: float = 0.5,
              startup_fraction: float = 0.2, batch_size: int = 8, log=print) -> SoakStats:
    """SIGKILL ``gearfeat extract`` up to ``rounds`` times, then finish it uninterrupted; return the counts."""
    rng = random.Random(seed)
    stats = SoakStats()
    command = extract_command(data_dir, cache_dir, batch_size=batch_size)
    start = time.perf_counter()
    for i in range(rounds):
        outcome, err = _kill_round(command, cache_dir, rng, max_delay, rng.random() < startup_fraction)
        _count_warnings(stats, err)
        if outcome == "finished":
            break
        stats.kills += 1
        stats.kills_during_extraction += outcome == "killed_during_extraction"
        rows = verified_rows(cache_dir)
        stats.rows_after_kill.append(rows)
        stats.resumed += rows is not None
        stats.rebuilt += rows is None
        log(f"round {i + 1}: {outcome}, rows a next run keeps: {'none (damaged)' if rows is None else rows}")
    final = run(command)
    if final.returncode not in (0, 3):
        raise RuntimeError(f"final extract failed ({final.returncode}): {final.stderr[-2000:]}")
    _count_warnings(stats, final.stderr)
    stats.seconds = time.perf_counter() - start
    return stats


def _count_warnings(stats: SoakStats, err: str) -> None:
    stats.rebuild_warnings += "failed verification" in err
    stats.copied += "committed rows to a fresh file" in err


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 kills, 300 images (the CI smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="kills (default 60, 6 with --quick)")
    parser.add_argument("--images", type=int, default=None, help="images per class (default 300, 100 quick)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rounds = args.rounds or (6 if args.quick else 60)
    per_class = args.images or (100 if args.quick else 300)

    from gearfeat.data.synthetic import make_shapes_dataset
    from gearfeat._internal.system import machine_summary

    with tempfile.TemporaryDirectory(prefix="gearfeat-soak-") as tmp:
        tmp = Path(tmp)
        data = make_shapes_dataset(tmp / "data", per_class=per_class, size=32, seed=args.seed)
        t0 = time.perf_counter()
        reference = run(extract_command(data, tmp / "reference"))
        print(f"reference: {3 * per_class} images, uninterrupted run {time.perf_counter() - t0:.1f} s "
              f"(exit {reference.returncode})")
        failed = (f"failed with exit status {reference.returncode}" if reference.returncode not in (0, 3)  # 3: skips
                  else "left no cache file" if cache_file(tmp / "reference") is None else None)
        if failed:
            last = (reference.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(f"error: the reference run (uninterrupted gearfeat extract) {failed}, so there is nothing to "
                  f"compare with: {last}", file=sys.stderr)
            return 1
        stats, problems, corrupt_left, cycles = SoakStats(), [], [], 0
        while stats.kills < rounds:  # cycles: kill until the cache is complete, compare, start over
            cache = tmp / f"cache{cycles}"
            cycle = kill_loop(data, cache, rounds=rounds - stats.kills, seed=args.seed + cycles)
            stats.add(cycle)
            problems += compare_caches(cache_file(tmp / "reference"), cache_file(cache))
            corrupt_left += sorted(p.name for p in cache.glob("*.corrupt"))
            shutil.rmtree(cache)
            cycles += 1
            if not cycle.kills:
                break  # every round finished before its kill: more --images
    print(f"machine: {machine_summary()}")
    print(f"survived {stats.kills} SIGKILLs ({stats.kills_during_extraction} after a commit of their round, "
          f"{stats.kills - stats.kills_during_extraction} at a random time from start) in {stats.seconds:.0f} s; "
          f"{cycles} cycle(s) of kills until complete, each compared with the reference")
    print(f"after a kill the next run resumed {stats.resumed} times and had to rebuild a damaged file "
          f"{stats.rebuilt} times ({stats.rebuild_warnings} rebuild warnings printed); {stats.copied} run(s) met a "
          "file HDF5 could read but not write and copied its committed rows to a fresh one")
    print(f"rows committed after each kill: {stats.rows_after_kill}")
    print(f"every final cache identical to the uninterrupted reference: {'yes' if not problems else problems}"
          + (f"; damaged files moved aside: {corrupt_left}" if corrupt_left else ""))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
