"""Issue 20 (a): peak resident memory of ``gearfeat extract``, ``gearfeat train`` and ``gearfeat search`` (its default
in-process backend) over caches of 100k and 1M feature rows. Goal: the 1M peak within 1.5x of the 100k peak, and
below 2 GB.

For each size the benchmark writes, once, a dataset folder of tiny distinct images (8x8 BMPs of 246 bytes in
4 class folders: every one a real image file that ``scan_dataset`` lists and hashes, and that the 64-image
stitch check of ``train`` can decode), then fills the cache file that ``gearfeat extract`` will look for with
one generated row per image: written through the library's own ``FeatureCache.append`` under the fingerprint of
the ``ExtractorConfig`` the commands are given (MobileNetV2 0.35, random weights, 32 px, 1,280 features), keyed
by each file's sha256. The rows are class means plus Gaussian noise, so the heads have something to learn.
Every row is then already cached: the commands never run the backbone over the images (each run is checked to
say ``0 images computed``), and what is measured is what the library does with a cache of that size. ``search``
tries two dense heads (learning rates 1e-3 and 1e-2, ``--epochs`` epochs) and one logistic-regression baseline.

Each command runs in its own child process (``python -m gearfeat ...``); its peak RSS is the ``ru_maxrss`` that
``os.wait4`` returns for it (the kernel's high-water mark, the child's and its reaped descendants'). A watchdog
kills a child whose RSS passes ``--rss-cap-gb`` (the machine is shared): its peak then reads as at least the cap.
``--memory-budget`` is passed to each command whose ``--help`` lists that option.

``--quick`` (what CI runs) is a smoke run of the same commands on 1,000 and 4,000 rows with a 10 MB budget, so
that the larger one takes the streamed paths: in this process (one TensorFlow start instead of six), the peak
then being this process's high-water mark so far, which says nothing about any one command.

Everything is written under ``--work-dir`` (default /tmp/gearfeat-membench; 1M rows are 5.1 GB of cache plus
4 GB of file blocks) and deleted at the end unless ``--keep``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import resource
import threading
import time
from pathlib import Path

import _common as C

CLASSES = 4
PER_FOLDER = 10_000  # files per sub-folder of a class folder
APPEND_ROWS = 8192  # rows per FeatureCache.append while generating
COMMANDS = ("extract", "train", "search")
EXTRACTOR = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
             "--backbone-size", "32", "--no-progress"]
_BMP_HEADER = (b"BM" + struct.pack("<IHHI", 54 + 192, 0, 0, 54)
               + struct.pack("<IiiHHIIiiII", 40, 8, 8, 1, 24, 0, 192, 2835, 2835, 0, 0))


def bmp(i: int) -> bytes:
    """An 8x8 24-bit BMP whose pixels encode ``i``: distinct bytes (and sha256) for every ``i``."""
    return _BMP_HEADER + i.to_bytes(8, "little") * 24


def image_folder(root: Path, n: int) -> tuple[list[str], list[str], list[str]]:
    """Write (once) ``n`` tiny images under ``root``; their paths, class names and sha256s, in writing order."""
    paths, labels, hashes = [], [], []
    complete = root.with_name(root.name + ".complete")  # outside the dataset folder
    exists = complete.is_file()
    if not exists:
        print(f"writing {n} images under {root} ...", flush=True)
    for i in range(n):
        label = f"class_{i % CLASSES}"
        path = root / label / f"part_{i // CLASSES // PER_FOLDER:04d}" / f"img_{i:07d}.bmp"
        data = bmp(i)
        if not exists:
            if i // CLASSES % PER_FOLDER == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        paths.append(str(path))
        labels.append(label)
        hashes.append(hashlib.sha256(data).hexdigest())
    complete.write_text(f"{n}\n")
    return paths, labels, hashes


def fill_cache(cache_dir: Path, paths: list[str], labels: list[str], hashes: list[str]) -> Path:
    """A fresh cache in ``cache_dir`` holding one generated 1,280-float row per image, in the library's format."""
    import numpy as np

    from gearfeat.features.cache import FeatureCache
    from gearfeat.features.extractor import ExtractorConfig

    shutil.rmtree(cache_dir, ignore_errors=True)
    attrs = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=None, image_size=32, backbone_size=32).cache_attrs()
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 0.5, (CLASSES, 1280)).astype(np.float32)
    classes = np.array([int(label.rsplit("_", 1)[1]) for label in labels])
    print(f"writing {len(paths)} feature rows into {FeatureCache.path_for(cache_dir, attrs)} ...", flush=True)
    with FeatureCache.open(cache_dir, attrs) as cache:
        for start in range(0, len(paths), APPEND_ROWS):
            stop = start + APPEND_ROWS
            rows = centers[classes[start:stop]] + rng.standard_normal((len(classes[start:stop]), 1280), np.float32)
            cache.append(hashes[start:stop], rows, paths[start:stop], labels[start:stop])
        return cache.path


def run_child(command: list[str], log: Path, cap_bytes: int, timeout: float, cwd: Path) -> dict:
    """Run ``command`` with its output in ``log``: its peak RSS (bytes), wall seconds, exit code, and whether the
    watchdog killed it for passing ``cap_bytes``."""
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    killed = {"cap": False, "timeout": False}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            if rss_bytes(child.pid) > cap_bytes or time.perf_counter() - started > timeout:
                killed["cap" if rss_bytes(child.pid) > cap_bytes else "timeout"] = True
                child.kill()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    done.set()
    watcher.join()
    return {"peak": usage.ru_maxrss * 1024, "seconds": time.perf_counter() - started, "rc": child.returncode,
            **killed}


def run_inline(arguments: list[str], log: Path) -> dict:
    """``gearfeat ARGUMENTS`` in this process with its output in ``log`` (the quick smoke run): as
    :func:`run_child` reports it, the peak being this process's high-water mark so far."""
    from gearfeat.cli import main as gearfeat_main

    started = time.perf_counter()
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = gearfeat_main(arguments)
    return {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "seconds": time.perf_counter() - started, "rc": rc, "cap": False, "timeout": False}


def rss_bytes(pid: int) -> int:
    """The current resident set size of ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


def main() -> None:
    args = C.arguments(__doc__, **{
        "--sizes": dict(default="100000,1000000", help="cache rows of the small and the large run"),
        "--work-dir": dict(default="/tmp/gearfeat-membench", help="where the images and caches are written"),
        "--keep": dict(action="store_true", help="keep the work folder (images and caches) at the end"),
        "--memory-budget": dict(default=None, help="passed as --memory-budget to each command that takes it"),
        "--epochs": dict(type=int, default=2, help="dense-head epochs of train and of search's heads (default 2)"),
        "--rss-cap-gb": dict(type=float, default=None,
                             help="kill a child past this RSS (default: 12 GB or 60%% of the memory available)"),
        "--timeout": dict(type=float, default=3600, help="kill a child after this many seconds"),
    })
    C.header("issue 20 (a): peak RSS of gearfeat extract + train + search, large / small cache", args)
    import gearfeat

    small, large = (1000, 4000) if args.quick else (int(v) for v in args.sizes.split(","))
    epochs = 1 if args.quick else args.epochs
    memory_budget = "10MB" if args.quick and args.memory_budget is None else args.memory_budget
    work = Path(args.work_dir).resolve()  # the children run in it: `python -m` imports from the working folder first
    work.mkdir(parents=True, exist_ok=True)
    cap = int(args.rss_cap_gb * 1e9) if args.rss_cap_gb else min(12 * 10**9, int(0.6 * available_bytes()))
    gearfeat_cmd = [sys.executable, "-m", "gearfeat"]
    budget = {}  # command -> its extra options
    for name in COMMANDS if memory_budget is not None else ():
        if args.quick:  # this checkout's commands: train and search take it
            budget[name] = ["--memory-budget", memory_budget] if name != "extract" else []
            continue
        helptext = subprocess.run(gearfeat_cmd + [name, "--help"], capture_output=True, text=True,
                                  cwd=work).stdout
        budget[name] = ["--memory-budget", memory_budget] if "--memory-budget" in helptext else []
    print(f"gearfeat {gearfeat.__version__} from {Path(gearfeat.__file__).parent}; sizes {small} and {large} rows "
          f"x 1280 float32; watchdog cap {cap / 1e9:.1f} GB; extra options {budget or 'none'}", flush=True)

    rows, peaks = [], {}
    try:
        for n in (small, large):
            paths, labels, hashes = image_folder(work / f"images-{n}", n)
            cache_dir = work / f"cache-{n}"
            started = time.perf_counter()
            cache_path = fill_cache(cache_dir, paths, labels, hashes)
            print(f"  {cache_path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s", flush=True)
            del paths, labels, hashes
            commands = {
                "extract": ["extract", str(work / f"images-{n}"), "--cache-dir", str(cache_dir), *EXTRACTOR,
                            *budget.get("extract", [])],
                "train": ["train", str(work / f"images-{n}"), "--cache-dir", str(cache_dir), "--out",
                          str(work / f"run-{n}"), *EXTRACTOR, "--epochs", str(epochs),
                          *budget.get("train", [])],
                "search": ["search", str(work / f"images-{n}"), "--cache-dir", str(cache_dir), "--out",
                           str(work / f"search-{n}"), *EXTRACTOR, "--param", "learning_rate=0.001,0.01",
                           "--param", f"epochs={epochs}", "--param", "baseline_c=1.0", "--trials", "all",
                           *budget.get("search", [])],
            }
            for name, command in commands.items():
                log = work / f"{name}-{n}.log"
                result = (run_inline(command, log) if args.quick
                          else run_child(gearfeat_cmd + command, log, cap, args.timeout, work))
                text = log.read_text(errors="replace")
                computed = re.search(r"(\d+) images computed", text)
                if result["cap"] or result["timeout"]:
                    note = "killed: past the RSS cap" if result["cap"] else "killed: timeout"
                elif result["rc"] != 0 or computed is None:
                    raise SystemExit(f"gearfeat {name} failed (exit {result['rc']}); its output:\n{text[-3000:]}")
                elif int(computed.group(1)) != 0:
                    raise SystemExit(f"gearfeat {name} computed {computed.group(1)} images: the generated cache "
                                     f"was not used (fingerprint mismatch?); see {log}")
                else:
                    note = "ok, 0 images computed"
                peaks[name, n] = result
                rows.append([name, n, f"{'>= ' if result['cap'] else ''}{result['peak'] / 1e9:.2f}",
                             result["seconds"], note])
                print(f"  {name} {n}: peak {result['peak'] / 1e9:.2f} GB, {result['seconds']:.0f} s, {note}",
                      flush=True)
                for line in re.findall(r"^.*(?:budget|streamed|in memory|memory-mapped).*$", text, re.MULTILINE)[:3]:
                    print(f"    {name} said: {line.strip()}", flush=True)  # where the features were held
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    C.table(["command", "cache rows", "peak RSS GB", "wall s", ""], rows)
    print(f"feature bytes of {large} rows: {large * 1280 * 4 / 1e9:.2f} GB")
    largest = max(peaks[name, large]["peak"] for name in COMMANDS)
    capped = any(peaks[name, large]["cap"] for name in COMMANDS)
    smallest = max(peaks[name, small]["peak"] for name in COMMANDS)
    if capped:
        print(f"a {large}-row run passed the {cap / 1e9:.1f} GB cap and was killed: the figures below are lower "
              "bounds")
    C.verdict(C.Goal(f"peak RSS (extract, train or search) {large} / {small} rows", largest / smallest, 1.5, False),
              C.Goal(f"peak RSS GB at {large} rows", largest / 1e9, 2.0, False), quick=args.quick)


if __name__ == "__main__":
    main()
