"""Tests for gearfeat.outputs.report: the table equals metrics.json, figures travel with the report, bad folders refused."""
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from gearfeat.cli import main
from gearfeat._internal.errors import GearfeatError
from gearfeat.models.heads import DenseHead
from gearfeat.outputs.report import wilson_interval, write_report
from gearfeat.outputs.runs import RunDir
from gearfeat.data.dataset import SplitConfig
from gearfeat.workflows.train import train

from conftest import tiny_config

ACCURACY_KEY = {"Scikit-learn baseline": "baseline_test_accuracy", "Dense head": "test_accuracy",
                "Fine-tuned model": "test_accuracy", "CNN from scratch": "test_accuracy"}


@pytest.fixture(scope="module")
def transfer(shapes_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return train(shapes_dir, out / "transfer", config=tiny_config(), head=DenseHead(hidden=(16,), epochs=3),
                 split=SplitConfig(seed=2), cache_dir=out / "cache", progress=False).run_dir


def _fake_run(source: Path, folder: Path, command: str, accuracy: float, **metrics) -> Path:
    """A run folder of another kind, with the keys gearfeat.workflows.fitting.finish_run writes, built on a real run."""
    info = json.loads((source / "run.json").read_text())
    real = json.loads((source / "metrics.json").read_text())
    run = RunDir(folder, create=True)
    for name in ("loss.png", "confusion.png"):
        shutil.copyfile(source / name, run / name)
        run.record(name)
    run.write_json("metrics.json", {"test_accuracy": accuracy, "test_loss": 0.5, "val_accuracy": 0.5,
                                    "val_loss": 0.6, **metrics, "per_class": real["per_class"],
                                    "n_test": real["n_test"]})
    record = {"cnn": {"layers": "conv32-pool-dense64", "augment": "flip", "parameters": 12345},
              "finetune": {"source_run": str(source), "unfreeze": 10, "unfrozen_layers": ["a", "b"],
                           "trainable_parameters": 4321, "extractor": info["extractor"]}}[command]
    run.write_json("run.json", {
        "command": command, "data_dir": info["data_dir"], **record,
        "fit": {"learning_rate": 1e-3, "batch_size": 32, "epochs": 5, "patience": 2, "reduce_lr_patience": 4,
                "max_minutes": 20.0},
        "image_size": 32, "epochs_run": 5, "best_epoch": 4, "stopped_by": "epochs", "split": info["split"],
        "class_names": info["class_names"], "n_images": info["n_images"], "n_skipped": 0,
        "seconds": {"load": 1.0, "train": 42.0, "evaluate": 0.5, "total": 43.5}, "machine": info["machine"]})
    return folder


def _table(text: str) -> list[dict[str, str]]:
    """The rows of Table 1 as dicts keyed by the header."""
    block = text.split("Table 1.", 1)[1].split("\n\n")[1]
    header, _, *rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()]
    return [dict(zip(header, row)) for row in rows]


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _check_table(text: str, runs: dict[str, Path]) -> list[dict[str, str]]:
    rows = _table(text)
    for row in rows:
        metrics = json.loads((runs[row["Run"].strip("`")] / "metrics.json").read_text())
        expected = metrics[ACCURACY_KEY[row["Model"]]]
        assert row["Test accuracy"] == f"{expected:.4f}"
        assert row["Correct / test images"] == f"{round(expected * metrics['n_test'])} / {metrics['n_test']}"
        low, high = wilson_interval(expected, metrics["n_test"])
        assert row["95 % interval"] == f"[{low:.3f}, {high:.3f}]" and low <= expected <= high
    return rows


def _images(report: Path) -> list[Path]:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    assert all(not Path(link).is_absolute() for link in links)
    return [report.parent / link for link in links]


def test_report_of_a_transfer_run(transfer, tmp_path):
    report = write_report([transfer], tmp_path / "out" / "report.md")
    text = report.read_text()
    for title in ("Abstract", "Introduction", "Materials and methods", "Results", "Discussion"):
        assert f"\n## {title}\n" in text
    rows = _check_table(text, {"transfer": transfer})
    assert [r["Model"] for r in rows] == ["Scikit-learn baseline", "Dense head"]
    assert "Absent rows: fine-tuned model (no `gearfeat finetune` run was given); CNN from scratch" in text
    # the tiny backbone has random weights: said plainly in the abstract and the methods
    assert "random initialization" in _section(text, "Abstract")
    assert "random initialization" in _section(text, "Materials and methods")
    run = json.loads((transfer / "run.json").read_text())
    methods = _section(text, "Materials and methods")
    split = run["split"]
    assert f"{split['train']} training, {split['val']} validation and {split['test']} test images" in methods
    assert f"{run['seconds']['total']:.1f}" in methods and run["machine"]["cpu"] in methods
    images = _images(report)
    assert [p.name for p in images] == ["transfer-loss.png", "transfer-confusion.png"]
    for image in images:
        assert image.parent == report.parent / "report_files"
        assert Image.open(image).size[0] > 200


def test_report_of_every_kind_with_predictions(transfer, tmp_path):
    cnn = _fake_run(transfer, tmp_path / "cnn", "cnn", 0.55)
    tuned = _fake_run(transfer, tmp_path / "tuned", "finetune", 0.75, head_only_test_accuracy=0.6)
    grid = tmp_path / "grid.png"
    Image.new("RGB", (300, 200), "white").save(grid)
    code = main(["report", str(transfer), str(tuned), str(cnn), "--out", str(tmp_path / "r" / "paper.md"),
                 "--predictions", str(grid)])
    assert code == 0
    report = tmp_path / "r" / "paper.md"
    text = report.read_text()
    rows = _check_table(text, {"transfer": transfer, "cnn": cnn, "tuned": tuned})
    assert [r["Model"] for r in rows] == ["Scikit-learn baseline", "Dense head", "Fine-tuned model",
                                          "CNN from scratch"]
    assert "Absent rows" not in text
    assert "starting model of `tuned` scored 0.6000 on the same test images; after, 0.7500" in text
    assert ("| Class | Test images | Dense head (`transfer`) | Fine-tuned model (`tuned`) | "
            "CNN from scratch (`cnn`) |") in text
    assert "`conv32-pool-dense64`" in text and "top 10 backbone layers are unfrozen" in text
    assert "The CNN trained from scratch (`cnn`) scores" in text
    images = _images(report)
    assert len(images) == 7 and images[-1].name == "predictions.png"
    assert all(p.is_file() for p in images)

    # portable: the report and its folder move together
    moved = shutil.move(str(tmp_path / "r"), str(tmp_path / "elsewhere"))
    assert all(p.is_file() for p in _images(Path(moved) / "paper.md"))


def test_runs_on_different_splits_are_not_said_to_share_test_images(transfer, tmp_path):
    same = write_report([transfer, _fake_run(transfer, tmp_path / "cnn", "cnn", 0.5)], tmp_path / "same.md")
    assert "on the same held-out test images" in _section(same.read_text(), "Abstract")
    assert "All of them are evaluated on the same held-out test split." in same.read_text()
    other = _fake_run(transfer, tmp_path / "cnn-seed-7", "cnn", 0.5)
    info = json.loads((other / "run.json").read_text())
    RunDir(other).write_json("run.json", {**info, "split": {**info["split"], "seed": 7}})
    text = write_report([transfer, other], tmp_path / "mixed.md").read_text()
    assert "same held-out" not in text
    assert "each on its own run's held-out test images" in _section(text, "Abstract")
    assert "so their test accuracies are measured on different held-out images" in _section(text, "Introduction")


def test_runs_with_the_same_folder_name_keep_their_own_figures(transfer, tmp_path):
    copy = Path(shutil.copytree(transfer, tmp_path / "b" / "transfer"))
    report = write_report([transfer, copy], tmp_path / "report.md")
    names = [p.name for p in _images(report)]
    assert len(set(names)) == 4 and "transfer-2-loss.png" in names


def test_not_a_gearfeat_run_is_refused_in_one_line(transfer, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GearfeatError, match="not a gearfeat run folder"):
        write_report([plain], tmp_path / "r.md")
    other = RunDir(tmp_path / "other", create=True)
    other.write_json("run.json", {"command": "extract"})
    other.write_json("metrics.json", {})
    with pytest.raises(GearfeatError, match="not a run of gearfeat train"):
        write_report([other.path], tmp_path / "r.md")
    assert main(["report", str(transfer), str(plain), "--out", str(tmp_path / "r.md")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gearfeat: error:") and "\n" not in err and "plain" in err
    assert not (tmp_path / "r.md").exists()
    with pytest.raises(GearfeatError, match="ending in .md"):
        write_report([transfer], tmp_path / "r.txt")
    with pytest.raises(GearfeatError, match="prediction figure .*none.png: No such file or directory"):
        write_report([transfer], tmp_path / "r.md", predictions_png=tmp_path / "none.png")
    (tmp_path / "page.png").write_text("<html>saved from a browser</html>")
    with pytest.raises(GearfeatError, match="page.png is not a PNG image; pass the file gearfeat predict --plot"):
        write_report([transfer], tmp_path / "r.md", predictions_png=tmp_path / "page.png")
    assert main(["report", str(transfer), "--out", str(tmp_path / "r.txt")]) == 2  # bad usage, as predict --plot
    assert "gearfeat report: error: argument --out: " in capsys.readouterr().err


def test_an_unfinished_or_edited_run_is_named_with_what_is_wrong(transfer, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(transfer, run)
    (run / "metrics.json").write_text("{}")
    with pytest.raises(GearfeatError, match=r"metrics.json has no test_accuracy \(edited, or written by an "
                                            r"unfinished run\?\); run the command again"):
        write_report([run], tmp_path / "r.md")
    (run / "metrics.json").unlink()
    with pytest.raises(GearfeatError, match=r"metrics.json is missing \(the run did not finish"):
        write_report([run], tmp_path / "r.md")
    shutil.rmtree(run)
    shutil.copytree(transfer, run)
    (run / "loss.png").unlink()
    with pytest.warns(UserWarning, match="loss.png is missing \\(the run wrote it\\); the report goes on without it"):
        text = write_report([run], tmp_path / "r.md").read_text()
    assert "loss.png" not in text and "confusion.png" in text


def test_wilson_interval():
    assert wilson_interval(1.0, 289)[0] == pytest.approx(0.9869, abs=1e-4)
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
