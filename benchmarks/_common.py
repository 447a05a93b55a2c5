"""What the benchmark scripts share: the real data in ../shared, generated JPEGs, timing, tables, verdicts.

Every benchmark measures its competitors side by side in one process and prints its ratio on the last
line. Timings are only meaningful on a quiet machine: run real measurements under the shared lock
(``flock /tmp/gearfeat-heavy.lock ...``); the header prints the load average to show the conditions.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEARFEAT_SHARED", ROOT.parent / "shared"))
"""The real data and weights (a clone's sibling folder ``shared``; GEARFEAT_SHARED for a checkout elsewhere)."""
GEAR = SHARED / "data" / "gear"
WEIGHTS_035_224 = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
GENERATED = Path(os.environ.get("GEARFEAT_BENCH_DATA", "/tmp/gearfeat-bench"))
"""Where generated JPEG datasets are written once and reused (never inside the repository)."""

_KINDS = ("ellipse", "box", "triangle", "ring")


def arguments(description: str, **options: dict) -> argparse.Namespace:
    """Parse ``--quick`` (a short smoke run with tiny settings) plus the script's own ``options``."""
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run with tiny settings (CI)")
    for flag, kwargs in options.items():
        parser.add_argument(flag, **kwargs)
    return parser.parse_args()


def header(title: str, args: argparse.Namespace) -> None:
    """Print what runs where: the goal, the machine, the load, and whether the numbers are a smoke run."""
    from gearfeat._internal.system import machine_summary

    m = machine_summary()
    print(f"== {title}")
    print(f"machine: {m['cpu']}, {m['cores']} cores, TF {m['tensorflow']}, Keras {m['keras']}; "
          f"load average {load():.2f} at start")
    if args.quick:
        print("--quick: tiny settings, a smoke run: the figures below say nothing about the goal")
    sys.stdout.flush()


def load() -> float:
    return os.getloadavg()[0]


def real_gear() -> Path | None:
    """The gear images, or None (with a message) where ../shared is absent."""
    if GEAR.is_dir():
        return GEAR
    print(f"note: {GEAR} is absent; using generated JPEGs instead of the gear images")
    return None


def real_weights() -> str | None:
    """The ImageNet MobileNetV2 0.35/224 weights file, or None (random weights, with a message)."""
    if WEIGHTS_035_224.is_file():
        return str(WEIGHTS_035_224)
    print(f"note: {WEIGHTS_035_224} is absent; MobileNetV2 0.35 runs with random weights "
          "(throughput does not depend on the weight values)")
    return None


def image_files(source: Path) -> list[Path]:
    """The files under the class folders of ``source``, sorted (hidden ones left out)."""
    return sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))


def link_tree(source: Path, dest: Path, files: Iterable[Path]) -> Path:
    """A dataset folder ``dest`` made of symlinks to ``files`` (under ``source``), keeping their class folders."""
    for path in files:
        link = dest / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, link)
    return dest


def per_class(files: Sequence[Path], k: int) -> list[Path]:
    """The first ``k`` of ``files`` in each class folder (small datasets for --quick)."""
    taken: dict[Path, int] = {}
    chosen = []
    for path in files:
        if taken.setdefault(path.parent, 0) < k:
            taken[path.parent] += 1
            chosen.append(path)
    return chosen


def small_copy(source: Path, k: int) -> Path:
    """A dataset folder of symlinks to the first ``k`` images of each class of ``source`` (made once)."""
    dest = GENERATED / f"small-{k}-{hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]}"
    if not dest.is_dir():
        tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
        link_tree(source, tmp, per_class(image_files(source), k))
        os.replace(tmp, dest)
    return dest


def generated_jpegs(n: int, *, classes: int = 4, seed: int = 0) -> Path:
    """A folder of ``n`` distinct JPEGs of realistic size (200-436 px, ~20-40 KB) in ``classes`` class folders.

    Written once under :data:`GENERATED` and reused (a ``.complete`` marker says the set is whole).
    """
    root = GENERATED / f"jpeg-{n}-c{classes}-s{seed}"
    if (root / ".complete").is_file():
        return root
    chunks = [(root, seed, start, min(n, start + 500), classes) for start in range(0, n, 500)]
    print(f"generating {n} JPEGs in {root} (once) ...", flush=True)
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_chunk, chunks))
    (root / ".complete").write_text(f"{n}\n")
    return root


def _write_chunk(job: tuple[Path, int, int, int, int]) -> None:
    root, seed, start, stop, classes = job
    for i in range(start, stop):
        kind = _KINDS[i % classes % len(_KINDS)]
        folder = root / f"class_{i % classes}_{kind}"
        folder.mkdir(parents=True, exist_ok=True)
        _product_photo(kind, np.random.default_rng([seed, i])).save(folder / f"img_{i:06d}.jpg", "JPEG",
                                                                   quality=90)


def _product_photo(kind: str, rng: np.random.Generator) -> Image.Image:
    """A textured object of ``kind`` on a white background, like a product photo."""
    width, height = (int(v) for v in rng.integers(200, 437, 2))
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    texture = np.clip(texture + rng.normal(0, 14, texture.shape), 0, 255).astype(np.uint8)
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    rx, ry = width * rng.uniform(0.2, 0.45), height * rng.uniform(0.2, 0.45)
    box = (cx - rx, cy - ry, cx + rx, cy + ry)
    if kind == "ellipse":
        draw.ellipse(box, fill=255)
    elif kind == "box":
        draw.rectangle(box, fill=255)
    elif kind == "triangle":
        draw.polygon([(cx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry)], fill=255)
    else:
        draw.ellipse(box, fill=255)
        draw.ellipse((cx - rx / 2, cy - ry / 2, cx + rx / 2, cy + ry / 2), fill=0)
    white = Image.new("RGB", (width, height), (255, 255, 255))
    return Image.composite(Image.fromarray(texture), white, mask)


def seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def busy_fraction(interval: float = 0.5) -> float:
    """The share of all CPU time spent busy (by any process) over the next ``interval`` seconds."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_until_quiet(limit: float = 0.15, timeout: float = 300.0) -> None:
    """Before a timed round: wait (up to ``timeout`` s) until other processes leave the CPUs idle."""
    if not os.path.exists("/proc/stat"):
        return
    deadline = time.monotonic() + timeout
    busy = busy_fraction()
    while busy > limit and time.monotonic() < deadline:
        busy = busy_fraction(2.0)
    if busy > limit:
        print(f"  warning: the CPUs were {busy:.0%} busy with other work before this round", flush=True)


def interleaved(runs: dict[str, Callable[[], float | None]], rounds: int, *,
                quiet: bool = True) -> dict[str, list[float]]:
    """Wall seconds of each callable over ``rounds`` rounds, alternating them so that any change in the
    machine's load hits every competitor alike; with ``quiet``, each round waits for idle CPUs first. A
    callable that returns a float reports its own seconds (to leave its preparation out)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            if quiet:
                wait_until_quiet()
            start = time.perf_counter()
            own = fn()
            times[name].append(own if isinstance(own, float) else time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain-text table (floats with 2 decimals, or 3 below 10)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(f"{h:>{w}}" for h, w in zip(headers, widths)))
    for row in cells:
        print("  ".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    sys.stdout.flush()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


class Goal(NamedTuple):
    """A measured figure and its target, for :func:`verdict`."""

    what: str
    value: float
    target: float
    higher_is_better: bool = True

    def line(self, quick: bool) -> str:
        met = self.value >= self.target if self.higher_is_better else self.value <= self.target
        status = "smoke run" if quick else ("met" if met else "NOT met")
        return (f"RESULT {self.what}: {self.value:.3f} (target {'>=' if self.higher_is_better else '<='} "
                f"{self.target:g}) {status}")


def verdict(*goals: Goal, quick: bool = False) -> None:
    """The last lines of every benchmark: each measured ratio against its target (printed, never asserted)."""
    print(f"load average {load():.2f} at end")
    for goal in goals:
        print(goal.line(quick))
    sys.stdout.flush()
