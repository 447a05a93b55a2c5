"""Tests for gearfeat.workflows.demo: every artifact is written, and offline ImageNet falls back to random, said plainly."""
import json
import re

import pytest
from keras.src.utils import file_utils
from PIL import Image

from gearfeat.cli import main
from gearfeat.workflows.demo import run_demo
from gearfeat._internal.errors import GearfeatError
from gearfeat.models.heads import DenseHead

from conftest import tiny_config

TINY = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--per-class", "8", "--image-size", "32",
        "--backbone-size", "32", "--hidden", "16", "--epochs", "2", "--no-progress"]  # = tiny_config()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    return run_demo(out, None, config=tiny_config(), head=DenseHead(hidden=(16,), epochs=2), per_class=8,
                    n_new=6, progress=False)


def test_demo_writes_every_artifact(demo):
    assert [p.name for p in sorted(demo.data_dir.iterdir())] == ["circle", "square", "triangle"]
    assert all(len(list(folder.iterdir())) == 8 for folder in demo.data_dir.iterdir())
    for what, path in demo.artifacts():
        assert path.exists(), what
        if path.suffix == ".png":
            with Image.open(path) as image:
                assert image.format == "PNG" and image.size[0] > 200, what
    run = demo.train.run_dir
    assert json.loads((run / "run.json").read_text())["extractor"]["weights"] is None
    assert demo.config.weights is None and demo.weights_note is None  # random because asked for


def test_demo_predicts_new_images_that_are_not_in_the_dataset(demo):
    assert len(demo.predictions) == 6
    assert all(p.label in ("circle", "square", "triangle") and 0 < p.confidence <= 1 for p in demo.predictions)
    dataset = {path.read_bytes() for path in demo.data_dir.rglob("*.png")}
    assert not any(open(p.path, "rb").read() in dataset for p in demo.predictions)


def test_demo_report_matches_metrics_and_says_random(demo):
    text = demo.report.read_text()
    metrics = json.loads((demo.train.run_dir / "metrics.json").read_text())
    assert f"| Dense head | `transfer` | {metrics['test_accuracy']:.4f} |" in text
    assert f"| Scikit-learn baseline | `transfer` | {metrics['baseline_test_accuracy']:.4f} |" in text
    abstract = text.split("## Abstract", 1)[1].split("## Introduction", 1)[0]
    assert "random initialization" in abstract
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links[-1] == "report_files/predictions.png"
    assert all((demo.report.parent / link).is_file() for link in links)


def test_offline_imagenet_falls_back_to_random_and_says_so(demo, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    code = main(["demo", "--out", str(tmp_path / "demo"), *TINY, "--cache-dir", str(demo.out / "cache")])
    captured = capsys.readouterr()
    assert code == 0
    assert "could not be downloaded" in captured.err and "random initialization" in captured.err
    assert "NOTE: the backbone has random initialization" in captured.out
    assert re.search(r"report +\S+report\.md", captured.out) and "predictions figure" in captured.out
    run = json.loads((tmp_path / "demo" / "transfer" / "run.json").read_text())
    assert run["extractor"]["weights"] is None and run["images_reused"] == 24  # same features as `demo`
    report = (tmp_path / "demo" / "report.md").read_text()
    abstract = report.split("## Introduction", 1)[0]
    assert "random initialization" in abstract and "ImageNet weights were asked for but could not be" in abstract
    assert "**random initialization (no pretrained weights)**" in report.split("## Materials and methods")[1]


def test_demo_refuses_a_folder_with_files_it_did_not_draw(tmp_path):
    mine = tmp_path / "demo" / "data" / "shapes" / "circle" / "holiday.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    with pytest.raises(GearfeatError, match="did not draw.*circle/holiday.jpg"):
        run_demo(tmp_path / "demo", None, config=tiny_config(), per_class=4)
    assert mine.read_bytes() == b"mine"


@pytest.mark.parametrize("option, value, message", [
    ("--per-class", "2", "--per-class must be an integer >= 3, got 2 (one image each for training, validation and "
                         "test)"),
    ("--new-images", "0", "--new-images must be an integer >= 1, got 0"),
])
def test_demo_sizes_are_checked_before_drawing(tmp_path, capsys, option, value, message):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--weights", "none", "--no-progress", option, value]) == 1
    assert capsys.readouterr().err == f"gearfeat: error: {message}\n"
    assert not out.exists()


def test_demo_into_a_file_is_one_line(tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert main(["demo", "--out", str(taken), "--weights", "none", "--no-progress"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after the line announcing the drawing
    assert last == (f"gearfeat: error: --out {taken}: cannot draw the demo images there (Not a directory); pass "
                    "another folder")
    assert taken.read_text() == "mine"
