"""Goal 5: flat memory. Peak resident memory while extracting 20,000 generated images is within 1.2x of
that for 2,000 images.

Each extraction runs in a fresh child process (``--child``), which reports its peak resident set size
(VmHWM from /proc/self/status): once when streaming ends (decode -> backbone -> HDF5, committed every few
seconds; what the goal measures) and once more after ``extract`` has also read every feature back for
the caller (N x 1280 float32: legitimately O(N) memory, shown for completeness). The JPEGs are generated
once under /tmp (realistic sizes, 200-436 px); the backbone is MobileNetV2 0.35 at 224 with random weights.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import _common as C


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(folder: str, backbone_size: int) -> None:
    """Extract ``folder`` into a fresh cache and print the peaks as JSON (run in a fresh process)."""
    from gearfeat.features.cache import FeatureCache
    from gearfeat.data.dataset import scan_dataset
    from gearfeat.features.extractor import ExtractorConfig, FeatureExtractor

    peaks = {}
    verify = FeatureCache.verify

    def verify_and_mark(cache, rows=None):  # the streaming phase ends where extract checks the rows it serves
        peaks["streaming"] = peak_rss_mib()
        return verify(cache, rows)

    FeatureCache.verify = verify_and_mark
    config = ExtractorConfig("mobilenet_v2", alpha=0.35, weights=None, image_size=128, backbone_size=backbone_size)
    with tempfile.TemporaryDirectory() as cache:
        result = FeatureExtractor(config, progress=False).extract(scan_dataset(folder), cache)
        result.features  # noqa: B018 - reads them all
    peaks["with features read"] = peak_rss_mib()
    print(json.dumps({"images": result.computed, **peaks}))


def main() -> None:
    args = C.arguments(__doc__, **{
        "--child": dict(default=None, help="internal: extract this folder and report peak memory"),
        "--backbone-size": dict(type=int, default=224, help="backbone input size (default 224)"),
    })
    if args.child:
        return child(args.child, 32 if args.quick else args.backbone_size)
    C.header("goal 5: flat memory (peak RSS, 20,000 / 2,000 images)", args)
    sizes = (100, 1000) if args.quick else (2000, 20000)
    rows, peaks = [], {}
    for n in sizes:
        folder = C.generated_jpegs(n)
        command = [sys.executable, __file__, "--child", str(folder), "--backbone-size", str(args.backbone_size)]
        seconds = C.seconds(lambda: peaks.__setitem__(n, json.loads(
            subprocess.run(command + (["--quick"] if args.quick else []), check=True, capture_output=True,
                           text=True).stdout.strip().splitlines()[-1])))
        rows.append([n, peaks[n]["images"], f"{peaks[n]['streaming']:.0f}", f"{peaks[n]['with features read']:.0f}",
                     seconds])
    small, large = sizes
    print()
    C.table(["images", "computed", "peak MiB (streaming)", "peak MiB (+ features read)", "child s"], rows)
    read_back = peaks[large]["with features read"] / peaks[small]["with features read"]
    print(f"with the features read back: {read_back:.3f}x")
    C.verdict(C.Goal(f"goal 5, peak RSS while extracting {large} / {small} images",
                     peaks[large]["streaming"] / peaks[small]["streaming"], 1.2, False), quick=args.quick)


if __name__ == "__main__":
    main()
