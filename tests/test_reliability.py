"""Reliability end to end, through the command line: a hostile dataset folder, bad paths, SIGKILL and
SIGTERM in the middle of an extraction, two extractions sharing one cache, damaged or outdated cache files,
and model / joblib files that would run code. The whole file takes about a minute."""
from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import joblib
import numpy as np
import pytest
from PIL import Image

import gearfeat
import gearfeat.data.dataset as dataset_module
from gearfeat.features.cache import FeatureCache
from gearfeat.cli import main
from gearfeat._internal.errors import GearfeatError
from gearfeat.features.extractor import FeatureExtractor
from gearfeat.outputs.runs import RunDir
from gearfeat.data.synthetic import make_shapes_dataset

from conftest import TINY
from test_images import encode, png_header

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("soak_kill", ROOT / "benchmarks" / "soak_kill.py")
soak = sys.modules.setdefault("soak_kill", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(soak)

BACKBONE = soak.BACKBONE_ARGS  # random VGG16 at 32 px: fast, and its features are far from zero
MOBILENET = ["--backbone", TINY["backbone"], "--alpha", str(TINY["alpha"]), "--weights", "none",
             "--image-size", "32", "--backbone-size", "32", "--no-progress"]
DARK, LIGHT = (40, 40, 60), (225, 225, 205)


# ------------------------------------------------------------------------------------------ the corpus
def texture(rng: np.random.Generator, colour, width: int = 24, height: int = 24) -> Image.Image:
    noise = rng.integers(-30, 31, (height, width, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def make_hostile_dataset(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Classes ``dark`` and ``light`` full of awkward files; returns ({good path: class}, {bad path: reason})."""
    rng = np.random.default_rng(0)
    dark, light = root / "dark", root / "light"
    good: dict[str, str] = {}
    bad: dict[str, str] = {}

    def put(path: Path, data: bytes, reason: str | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if reason is None:
            good[str(path)] = path.parent.name
        else:
            bad[str(path)] = reason

    for folder, colour in ((dark, DARK), (light, LIGHT)):
        for i in range(10):
            put(folder / f"plain_{i:02d}.png", encode(texture(rng, colour), "PNG"))
    # awkward but usable: each must be read, and labelled, correctly
    put(dark / "cmyk.jpg", encode(Image.new("CMYK", (20, 20), (0, 0, 0, 200)), "JPEG"))
    put(dark / "grey16.png", encode(Image.fromarray(np.full((20, 20), 9000, np.uint16)), "PNG"))
    put(dark / "palette.png", encode(texture(rng, DARK).convert("P"), "PNG"))
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([255, 0, 0, *DARK] + [0] * 762)
    palette.paste(0, (0, 0, 3, 3))  # a transparent corner
    put(dark / "palette transparent.png", encode(palette, "PNG", transparency=0))
    put(dark / "grey.jpg", encode(Image.new("L", (20, 20), 40), "JPEG"))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    put(dark / "rotated.jpg", encode(texture(rng, DARK, 30, 16), "JPEG", exif=exif))
    put(dark / "one_pixel.png", encode(Image.new("RGB", (1, 1), DARK), "PNG"))
    for folder, frames in ((dark, (DARK, LIGHT)), (light, (LIGHT, DARK))):  # only the first frame counts
        first, *rest = (Image.new("RGB", (16, 16), c) for c in frames)
        put(folder / "animated.gif", encode(first, "GIF", save_all=True, append_images=rest, duration=100))
    put(light / "really a png.jpeg", encode(texture(rng, LIGHT), "PNG"))
    put(light / "été 写真 1.jpg", encode(texture(rng, LIGHT), "JPEG"))
    # unusable: skipped, each with its reason
    jpeg = encode(texture(rng, DARK, 64, 64), "JPEG")
    put(dark / "truncated.jpg", jpeg[: len(jpeg) // 2], "truncated or corrupt image data")
    put(dark / "zero.jpg", b"", "empty file (0 bytes)")
    put(light / "page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "not an image (looks like HTML/text)")
    put(light / "bomb.png", png_header(100_000, 100_000), "image too large")
    put(dark / "bomb below twice the limit.png", png_header(10_000, 10_000), "image too large")  # Pillow warns
    put(dark / ".DS_Store", b"\0\0\0\1Bud1", "hidden or system file")
    put(dark / "Thumbs.db", b"\xd0\xcf\x11\xe0", "hidden or system file")
    put(light / "._really a png.jpeg", b"\0\5\26\7", "hidden or system file")
    put(light / ".photo.jfif.icloud", b"bplist00", "hidden or system file")
    put(light / "notes.txt", b"shot on a phone", "not an image extension (.txt)")
    put(root / "junk" / "readme.md", b"# only text here", "not an image extension (.md)")
    (dark / "loop").symlink_to(dark)
    bad[str(dark / "loop")] = "folder already scanned"
    (light / "self.jpg").symlink_to(light / "self.jpg")
    bad[str(light / "self.jpg")] = "Too many levels of symbolic links"
    (root / "empty class").mkdir()
    return good, bad


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``gearfeat ARGS`` in a fresh process (its exit status and stderr are what a user sees)."""
    return subprocess.run([sys.executable, "-m", "gearfeat", *args], capture_output=True, text=True,
                          timeout=timeout, env=soak._ENV)


def assert_clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]


def cache_rows(cache_dir: Path) -> dict[str, list]:
    with h5py.File(soak.cache_file(cache_dir), "r") as f:
        n = int(f.attrs["n_rows"])
        return {key: [v.decode() if isinstance(v, bytes) else v for v in f[key][:n]] for key in ("path", "label")}


# ------------------------------------------------------------------------------------------ hostile corpus
@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The hostile corpus after ``gearfeat extract`` (a fresh process) and ``gearfeat train`` on it."""
    tmp = tmp_path_factory.mktemp("hostile")
    good, bad = make_hostile_dataset(tmp / "data")
    extract = cli("extract", str(tmp / "data"), *BACKBONE, "--cache-dir", str(tmp / "cache"))
    return dict(tmp=tmp, good=good, bad=bad, extract=extract)


def test_hostile_extract_skips_each_bad_file_with_its_reason(hostile):
    done, good, bad = hostile["extract"], hostile["good"], hostile["bad"]
    assert_clean(done.stderr)
    assert done.returncode == 3, done.stderr[-3000:]  # finished, some files skipped
    skipped = json.loads((hostile["tmp"] / "cache" / "skipped.json").read_text())
    assert {item["path"] for item in skipped} == set(bad)
    for item in skipped:
        assert bad[item["path"]] in item["reason"], item
        assert f"skipped {item['path']}: {item['reason']}" in done.stderr
    for name in ("empty class", "junk"):  # one warning line per class folder with no usable image
        line = next(line for line in done.stderr.splitlines() if f"class {name!r}" in line)
        assert line.startswith("gearfeat: warning: ") and "left out" in line
    assert f"{len(good)} images computed" in done.stderr
    assert "decompression bomb DOS" not in done.stderr  # Pillow's own warning: the skip line says it all
    rows = cache_rows(hostile["tmp"] / "cache")  # every usable file once, under its own folder's class
    assert dict(zip(rows["path"], rows["label"])) == good


def test_hostile_train_and_predict_give_the_right_labels(hostile, capsys):
    tmp, good, bad = hostile["tmp"], hostile["good"], hostile["bad"]
    code = main(["train", str(tmp / "data"), *BACKBONE, "--cache-dir", str(tmp / "cache"), "--out",
                 str(tmp / "run"), "--epochs", "30", "--seed", "0"])
    err = capsys.readouterr().err
    assert code == 3 and f"0 images computed, {len(good)} reused" in err
    run_skipped = json.loads((tmp / "run" / "skipped.json").read_text())
    assert {item["path"] for item in run_skipped} == set(bad)
    assert json.loads((tmp / "run" / "run.json").read_text())["class_names"] == ["dark", "light"]

    # every file, one by one (a folder, here the symlink loop, would stand for the images in it)
    paths = sorted(str(p) for folder in ("dark", "light") for p in (tmp / "data" / folder).iterdir()
                   if not p.is_dir())
    assert main(["predict", str(tmp / "run" / "model.h5"), *paths, "--json"]) == 3  # some got no label
    out = json.loads(capsys.readouterr().out)
    assert [o["path"] for o in out] == paths
    for o in out:
        if o["path"] in good:
            assert o["label"] == good[o["path"]] and "error" not in o, o
        else:
            assert o["label"] is None and o["confidence"] is None and o["error"], o
    by_path = {o["path"]: o for o in out}
    for path, reason in bad.items():
        if reason not in ("hidden or system file", "folder already scanned") and "extension" not in reason:
            assert reason in by_path[path]["error"], by_path[path]  # the same reason as in extract


@pytest.mark.parametrize("case", ["missing", "file", "no class folders", "one class", "unreadable"])
def test_bad_dataset_folders_are_one_line_errors(case, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    if case == "file":
        data.write_bytes(b"x")
    elif case == "no class folders":
        data.mkdir()
        (data / "a.png").write_bytes(encode(Image.new("RGB", (4, 4)), "PNG"))
    elif case == "one class":
        (data / "only").mkdir(parents=True)
        (data / "only" / "a.png").write_bytes(encode(Image.new("RGB", (4, 4)), "PNG"))
    elif case == "unreadable":  # the tests may run as root, who can read anything: refuse in code
        data.mkdir()
        real = os.scandir

        def scandir(path):
            if Path(path) == data:
                raise PermissionError(13, "Permission denied")
            return real(path)
        monkeypatch.setattr(dataset_module.os, "scandir", scandir)
    code = main(["extract", str(data), *MOBILENET, "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    expected = {"missing": "dataset folder not found", "file": "is a file, not a folder",
                "no class folders": "no class folders", "one class": "found only 1 class",
                "unreadable": "Permission denied"}[case]
    assert code == 1 and err.startswith("gearfeat: error:") and "\n" not in err and expected in err, err


def test_class_too_small_for_the_split_is_a_clear_error(shapes_copy, tmp_path, capsys):
    for extra in sorted((shapes_copy / "circle").iterdir())[2:]:
        extra.unlink()
    code = main(["train", str(shapes_copy), *MOBILENET, "--cache-dir", str(tmp_path / "c"), "--out",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("gearfeat: error: class 'circle' has 2 distinct images;"), err
    assert "--val-fraction=0.15 and --test-fraction=0.15 need at least 3" in err, err  # the flags, not Python's names


def test_a_class_whose_every_image_fails_says_they_were_skipped(shapes_copy, tmp_path, capsys):
    for image in (shapes_copy / "circle").iterdir():
        image.write_bytes(b"not an image")
    code = main(["train", str(shapes_copy), *MOBILENET, "--cache-dir", str(tmp_path / "c"), "--out",
                 str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and sum(line.startswith("skipped ") and "/circle/" in line for line in lines) == 20
    assert lines[-1].startswith("gearfeat: error: class 'circle' has 0 distinct images (20 of its files were "
                                "skipped, each listed above); ")


# ------------------------------------------------------------------------------------------ kills, locks, damage
@pytest.fixture(scope="module")
def soak_data(tmp_path_factory):
    """150 generated images, the cache of one uninterrupted ``gearfeat extract`` of them, and its seconds."""
    tmp = tmp_path_factory.mktemp("soak")
    data = make_shapes_dataset(tmp / "data", per_class=50, size=32, seed=3)
    reference = soak.run(soak.extract_command(data, tmp / "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    seconds = float(reference.stderr.rsplit(" skipped (", 1)[1].split(" s)")[0])
    return data, soak.cache_file(tmp / "reference"), seconds


def test_sigkill_loop_resumes_to_an_identical_cache(soak_data, tmp_path):
    data, reference, seconds = soak_data
    # kills a random moment after a commit, scaled to this machine's speed so that several land mid-run
    stats = soak.kill_loop(data, tmp_path / "cache", rounds=5, seed=7, max_delay=seconds / 8, startup_fraction=0,
                           log=lambda m: None)
    assert stats.kills >= 3, stats
    assert stats.resumed + stats.rebuilt == stats.kills and stats.rebuild_warnings <= stats.rebuilt, stats
    assert soak.compare_caches(reference, soak.cache_file(tmp_path / "cache")) == []


def test_two_concurrent_extractions_compute_each_image_once(soak_data, tmp_path):
    data, reference, _ = soak_data
    command = soak.extract_command(data, tmp_path / "cache", commit_seconds=5.0)
    with FeatureCache.open(tmp_path / "cache", soak.cache_attrs()):  # both start while the cache is busy
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=soak._ENV) for _ in range(2)]
        for p in procs:
            assert any("waiting for another gearfeat process" in line for line in p.stderr), p.wait()
    errs = [p.communicate(timeout=300)[1] for p in procs]  # now they race for the cache
    for p, err in zip(procs, errs):
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    computed = sorted(int(err.split(" images computed")[0].rsplit(" ", 1)[1]) for err in errs)
    assert computed == [0, 150]  # one computed everything; the other waited for it, then reused it all
    assert soak.compare_caches(reference, soak.cache_file(tmp_path / "cache")) == []


def test_sigterm_commits_what_was_computed_and_the_next_run_resumes(soak_data, tmp_path, capsys, monkeypatch):
    data, reference, _ = soak_data
    real = FeatureExtractor.features_of
    batches = []

    def terminated_at_third_batch(self, images):
        batches.append(len(images))
        if len(batches) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stopping the job would
        return real(self, images)

    monkeypatch.setattr(FeatureExtractor, "features_of", terminated_at_third_batch)
    args = ["extract", str(data), *BACKBONE, "--cache-dir", str(tmp_path / "cache"), "--batch-size-extract", "8"]
    assert main(args) == 130
    assert "interrupted; what was computed is kept" in capsys.readouterr().err
    kept = soak.verified_rows(tmp_path / "cache")
    assert kept in (16, 24)  # the batches finished before the signal, committed on the way out
    monkeypatch.setattr(FeatureExtractor, "features_of", real)
    assert main(args) == 0
    assert f"{150 - kept} images computed, {kept} reused" in capsys.readouterr().err
    assert soak.compare_caches(reference, soak.cache_file(tmp_path / "cache")) == []


@pytest.mark.parametrize("damage", ["truncated", "flipped feature", "older preprocessing"])
def test_damaged_or_outdated_cache_is_rebuilt_with_one_warning(soak_data, tmp_path, capsys, damage, monkeypatch):
    data, reference, _ = soak_data
    cache = tmp_path / "cache"
    path = soak.cache_file(reference.parent)
    target = cache / path.name
    if damage == "older preprocessing":  # a file written by an older gearfeat, under today's name
        monkeypatch.setattr("gearfeat.features.extractor.PREPROCESSING_VERSION", -1)
        assert main(["extract", str(data), *BACKBONE, "--cache-dir", str(tmp_path / "old")]) == 0
        monkeypatch.undo()
        old = soak.cache_file(tmp_path / "old")
        assert old.name != path.name  # a new version never even looks at the old file ...
        cache.mkdir()
        old.rename(target)  # ... and one renamed to the new name is refused by its recorded settings
    else:
        cache.mkdir()
        target.write_bytes(path.read_bytes())
        if damage == "truncated":
            target.write_bytes(target.read_bytes()[: target.stat().st_size * 2 // 3])
        else:
            with h5py.File(target, "a") as f:
                f["features"][42, 7] += 1.0
    capsys.readouterr()
    assert main(["extract", str(data), *BACKBONE, "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "failed verification" in line]
    assert len(warnings) == 1 and "rebuilding" in warnings[0] and "150 images computed, 0 reused" in err
    assert target.with_suffix(".corrupt").exists()
    assert soak.compare_caches(reference, target) == []


def test_file_a_kill_left_unwritable_keeps_its_rows(tmp_path, logged):
    """A real cache file left by SIGKILLing a process in the middle of an append (HDF5 1.14): it reads and
    verifies, but HDF5 refuses the next write. The cache copies its committed rows to a fresh file."""
    attrs = {"backbone": "x"}
    path = FeatureCache.path_for(tmp_path, attrs)
    path.write_bytes(gzip.decompress((ROOT / "tests" / "data" / "cache_killed_mid_write.h5.gz").read_bytes()))
    with h5py.File(path, "r") as f:
        before = {key: f[key][:56] for key in ("features", "sha256", "path", "label")}
    with FeatureCache.open(tmp_path, attrs) as cache:
        assert len(cache) == 56 and logged() == []  # it verifies
        with pytest.raises(OSError):  # ... but a plain HDF5 write fails
            cache._write(path, 56, {key: np.zeros((1, 4), np.float32) if key == "features" else [b"x"]
                                    for key in ("features", "sha256", "digest", "path", "label")})
        cache.append(["e" * 64], np.ones((1, 4), np.float32), ["new.png"], ["a"])
    assert len(logged()) == 1 and "copied its 56 committed rows to a fresh file" in logged()[0]
    with FeatureCache.open(tmp_path, attrs, write=False) as cache:
        assert len(cache) == 57 and len(logged()) == 1
        np.testing.assert_array_equal(cache.read([h.decode() for h in before["sha256"]]), before["features"])
    with h5py.File(path, "r") as f:
        assert all(np.array_equal(f[key][:56], value) for key, value in before.items())


def test_write_failure_that_cannot_be_repaired_is_one_clear_error(tmp_path, monkeypatch):
    attrs = {"backbone": "x"}
    with FeatureCache.open(tmp_path, attrs) as cache:
        cache.append(["a" * 64], np.ones((1, 4), np.float32), ["a.png"], ["a"])

        def disk_full(*args):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(FeatureCache, "_write", disk_full)
        with pytest.raises(GearfeatError, match="cannot write cache .*No space left.*disk full"):
            cache.append(["b" * 64], np.ones((1, 4), np.float32), ["b.png"], ["a"])
        monkeypatch.undo()
    with FeatureCache.open(tmp_path, attrs, write=False) as cache:
        assert len(cache) == 1  # what was committed is untouched


# ------------------------------------------------------------------------------------------ untrusted files
@pytest.fixture(scope="module")
def lambda_model(tmp_path_factory):
    """An .h5 whose Lambda layer holds Python bytecode that writes a marker file when it runs."""
    import keras
    tmp = tmp_path_factory.mktemp("evil")
    path, marker = tmp / "evil.h5", str(tmp / "ran.txt")
    inputs = keras.Input((4,))
    code = lambda x: (__import__("pathlib").Path(marker).write_text("pwned"), x)[1]  # noqa: E731 - the point
    keras.Model(inputs, keras.layers.Lambda(code)(inputs)).save(path)  # Keras runs it to infer its shape
    Path(marker).unlink()  # building the model ran it once, here
    return path, Path(marker)


def test_lambda_model_is_refused_by_load_model_and_predict(lambda_model, shapes_dir):
    path, marker = lambda_model
    with pytest.raises(GearfeatError, match=r"refused to load.*Python bytecode.*if you trust this file, pass "
                                            r"safe_mode=False$"):
        gearfeat.load_model(path)
    image = next((shapes_dir / "circle").iterdir())
    done = cli("predict", str(path), str(image))
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and err[-1].startswith("gearfeat: error:") and "refused to load" in err[-1]
    assert_clean(done.stderr)
    assert not marker.exists()  # the lambda's code never ran
    gearfeat.load_model(path, safe_mode=False)  # the override, knowingly: now it does run
    assert marker.read_text() == "pwned"


class _Payload:
    """Unpickling this writes a file: what a planted joblib file could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "pwned")


def test_planted_joblib_is_refused_before_it_can_run(tmp_path):
    run = RunDir(tmp_path / "run", create=True)
    run.save_joblib({"fine": 1}, "baseline.joblib")
    assert run.load_joblib("baseline.joblib") == {"fine": 1}
    marker = tmp_path / "ran.txt"
    joblib.dump(_Payload(marker), run / "baseline.joblib")  # replaced after gearfeat recorded its sha256
    with pytest.raises(GearfeatError, match="sha256 does not match"):
        RunDir(run.path).load_joblib("baseline.joblib")
    joblib.dump(_Payload(marker), run / "head.joblib")  # never recorded at all
    with pytest.raises(GearfeatError, match="not recorded"):
        run.load_joblib("head.joblib")
    with pytest.raises(GearfeatError, match="not a gearfeat run folder"):
        RunDir(tmp_path).load_joblib("baseline.joblib")
    assert not marker.exists()
    joblib.load(run / "head.joblib")  # the payload is live: loading it unchecked runs it
    assert marker.exists()



def test_a_run_folder_is_checked_at_once_and_made_at_the_first_write(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "a" / "b", create=True)
    assert not (tmp_path / "a").exists()
    run.write_json("run.json", {})
    assert (tmp_path / "a" / "b" / "run.json").is_file()
    monkeypatch.setattr("gearfeat.outputs.runs.os.access", lambda path, mode: False)  # as a read-only folder (not root)
    with pytest.raises(GearfeatError, match=f"^out .*c: cannot create the run folder, permission denied in {tmp_path}; "
                                            "pass another folder$"):
        RunDir(tmp_path / "c", create=True)


def test_a_new_run_replaces_the_earlier_run_in_its_folder_once_it_writes(tmp_path, logged):
    earlier = RunDir(tmp_path / "run", create=True)
    earlier.write_json("run.json", {"command": "search"})
    earlier.write_json("trials.json", [1, 2])
    (tmp_path / "outside.txt").write_text("keep")
    manifest = earlier.manifest()
    (earlier.path / "manifest.json").write_text(json.dumps({**manifest, "../outside.txt": "x"}))
    (earlier.path / "notes.txt").write_text("the user's own file")
    run = RunDir(earlier.path, create=True)
    assert (earlier.path / "trials.json").exists() and logged() == []  # nothing goes before the first write
    run.write_json("metrics.json", {"test_accuracy": 1.0})
    assert sorted(p.name for p in earlier.path.iterdir()) == ["manifest.json", "metrics.json", "notes.txt"]
    assert run.manifest() == {"metrics.json": run.manifest()["metrics.json"]}  # no stale entries
    assert (tmp_path / "outside.txt").read_text() == "keep"  # only names in the folder itself are removed
    assert logged() == [f"{earlier.path}: replaced the earlier gearfeat search run in it"]
    run.write_json("history.json", {})
    assert len(logged()) == 1 and (earlier.path / "metrics.json").exists()  # cleared once, not at every write
    again = RunDir(earlier.path, create=True)
    (earlier.path / "metrics.json").write_text("{}")  # written directly, then recorded: kept
    again.record("metrics.json")
    assert sorted(again.manifest()) == ["metrics.json"] and not (earlier.path / "history.json").exists()
    (earlier.path / "manifest.json").write_text("[not, json")
    assert RunDir(earlier.path, create=True).manifest() == {}  # a damaged manifest is no earlier run
    (earlier.path / "manifest.json").write_text('["notes.txt"]')  # JSON, but not a manifest: no earlier run
    edited = RunDir(earlier.path, create=True)
    assert edited.manifest() == {}
    edited.write_json("run.json", {})
    assert (earlier.path / "notes.txt").read_text() == "the user's own file"
    with pytest.raises(GearfeatError, match="not recorded"):
        edited.load_joblib("notes.txt")


def unpickling_calls(source: str) -> list[int]:
    """Lines that unpickle: ``joblib/pickle.load(s)``, ``np.load(allow_pickle=...)``, an Unpickler subclass
    that does not restrict ``find_class``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if owner in ("joblib", "pickle", "dill", "cloudpickle") and node.func.attr in ("load", "loads") or (
                    owner in ("np", "numpy") and node.func.attr == "load"
                    and any(k.arg == "allow_pickle" for k in node.keywords)):
                lines.append(node.lineno)
        elif isinstance(node, ast.ClassDef) and any(getattr(b, "attr", None) == "Unpickler" for b in node.bases):
            if not any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body):
                lines.append(node.lineno)
    return sorted(lines)


def test_every_pickle_load_in_the_package_goes_through_rundir():
    assert unpickling_calls("import joblib, pickle, numpy as np\njoblib.load(p)\npickle.loads(b)\n"
                            "np.load(p, allow_pickle=True)\nclass U(pickle.Unpickler): pass\n") == [2, 3, 4, 5]
    package = ROOT / "gearfeat"
    found = {source.relative_to(package).as_posix(): unpickling_calls(source.read_text())
             for source in package.rglob("*.py")}
    runs_line = next(i for i, line in enumerate((package / "outputs" / "runs.py").read_text().splitlines(), 1)
                     if "return joblib.load(path)" in line)
    assert {name: lines for name, lines in found.items() if lines} == {"outputs/runs.py": [runs_line]}
