"""Goal 3: a warm cache is free. Re-extracting an unchanged dataset costs <= 3 % of the cold extraction (3a);
adding 10 % new images costs about 10 % of a cold run (3b, judged as <= 0.10 of the cold time).

Each figure is the extraction phase of ``gearfeat train`` (``gearfeat.features.extractor.extract_dataset``: scan and hash
the folder, build the extractor if anything must be computed, extract, read the features), timed in one
process, alternating rounds:

* **cold**: an empty cache;
* **warm**: the same folder again (hashing and cache validation only);
* **+10 %**: a cache filled from 90 % of the images, then the folder with the other 10 % added.

Data: the gear images (../shared) with the real MobileNetV2 0.35 weights, or generated JPEGs with random
weights. The dataset folders are symlink trees under /tmp (the images are never copied).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import _common as C

WARM_TARGET = 0.03
"""Goal 3a: re-extracting an unchanged dataset costs <= 3 % of the cold extraction."""
INCREMENT_TARGET = 0.10
"""Goal 3b: adding 10 % new images costs about 10 % of a cold run, judged as <= 0.10 (no tolerance added)."""


def main() -> None:
    args = C.arguments(__doc__, **{
        "--rounds": dict(type=int, default=3, help="alternating rounds"),
        "--generated": dict(type=int, default=None, metavar="N",
                            help="use N generated JPEGs instead of the gear images (fixed costs weigh less)"),
    })
    C.header("goal 3: warm cache is free (warm / cold, +10 % / cold)", args)
    from gearfeat.features.extractor import ExtractorConfig
    from gearfeat.features.extractor import extract_dataset

    source = (C.generated_jpegs(args.generated) if args.generated else None) or C.real_gear() or \
        C.generated_jpegs(40 if args.quick else 2000)
    weights = C.real_weights()
    config = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=weights, image_size=128,
                             backbone_size=64 if args.quick else None)
    rounds = 1 if args.quick else args.rounds
    work = Path(tempfile.mkdtemp(prefix="gearfeat-bench-warm-"))
    try:
        files = C.image_files(source)
        files = C.per_class(files, 10) if args.quick else files
        new = set(files[::10])
        full = C.link_tree(source, work / "full", files)
        partial = C.link_tree(source, work / "partial", [f for f in files if f not in new])
        n_new = len(new)
        print(f"data: {source} ({len(files)} files; +10 % = {n_new} files), backbone {config.backbone} "
              f"{config.alpha} at {config.backbone_size}, weights {'real' if weights else 'random'}")

        def extract(folder: Path, cache: Path):
            return extract_dataset(folder, config, cache_dir=cache, progress=False)

        def cold() -> None:
            shutil.rmtree(work / "cold", ignore_errors=True)
            extract(full, work / "cold")

        def warm() -> None:
            extract(full, work / "cold")

        def incremental() -> float:
            shutil.rmtree(work / "inc", ignore_errors=True)
            extract(partial, work / "inc")  # not timed: the state before the new images arrive
            return C.seconds(lambda: extract(full, work / "inc"))

        seconds = C.interleaved({"cold": cold, "warm": warm, "+10 %": incremental}, rounds, quiet=not args.quick)
        cold_s = C.median(seconds["cold"])
        rows = [[name, C.median(s), ", ".join(f"{v:.2f}" for v in s), C.median(s) / cold_s]
                for name, s in seconds.items()]
        print()
        C.table(["extraction phase", "median s", "rounds s", "/ cold"], rows)
        C.verdict(C.Goal("goal 3a, warm / cold extraction time", C.median(seconds["warm"]) / cold_s, WARM_TARGET,
                         False),
                  C.Goal("goal 3b, +10 % / cold extraction time", C.median(seconds["+10 %"]) / cold_s,
                         INCREMENT_TARGET, False), quick=args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
