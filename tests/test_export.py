"""``gearfeat export``: each format equals model.h5 within 1e-4, predict reads each, bad input is one line."""
import json

import keras
import numpy as np
import pytest

from gearfeat.cli import main
from gearfeat.data.dataset import SplitConfig
from gearfeat.features.layers import preprocess_images, resize_images
from gearfeat.models.export import export
from gearfeat.models.stitch import save_model
from gearfeat.outputs.runs import RunDir
from gearfeat.workflows.predict import Predictor
from gearfeat._internal.errors import GearfeatError
from dataclasses import asdict

from conftest import cnn_record


@pytest.fixture(scope="module")
def run_dir(shapes_dir, tmp_path_factory):
    """A run folder with a small model (with gearfeat's Lambda layers) over the shapes dataset."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(resize_images, arguments={"size": 24}, name="upscale")(inputs)
    x = keras.layers.Lambda(preprocess_images, arguments={"mode": "tf"}, name="preprocess")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    run = RunDir(tmp_path_factory.mktemp("run") / "run", create=True)
    save_model(model, run / "model.h5", ["circle", "square", "triangle"])
    run.record("model.h5")
    cnn_record(shapes_dir, split=asdict(SplitConfig())).save(run)
    return run.path


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    paths = {"savedmodel": out / "sm", "tflite": out / "m.tflite", "keras": out / "m.keras"}
    records = {fmt: export(run_dir, path, format=fmt) for fmt, path in paths.items()}
    return paths, records


def test_every_format_equals_model_h5_and_keeps_the_class_names(exports):
    paths, records = exports
    for fmt, record in records.items():
        assert record["max_deviation"] <= 1e-4 and record["check_images"] == "9 test images of the run", fmt
        assert record["class_names"] == ["circle", "square", "triangle"]
    assert json.loads((paths["savedmodel"] / "gearfeat.json").read_text())["format"] == "savedmodel"
    assert (paths["tflite"].parent / "m.tflite.json").is_file() and not list(paths["tflite"].parent.glob(".*"))


def test_predict_gives_the_same_labels_with_every_format(exports, run_dir, shapes_dir, capsys):
    paths, _ = exports
    images = sorted(str(p) for p in (shapes_dir / "circle").iterdir())[:4]
    reference = Predictor.from_file(run_dir).predict(images)
    for fmt, path in paths.items():
        got = Predictor.from_file(path).predict(images)
        assert [p.label for p in got] == [p.label for p in reference], fmt
        assert np.allclose([p.confidence for p in got], [p.confidence for p in reference], atol=1e-4)
        assert main(["predict", str(path), *images, "--json", "--top-k", "2"]) == 0
        assert [r["label"] for r in json.loads(capsys.readouterr().out)] == [p.label for p in reference]


def test_a_bare_h5_is_checked_on_generated_images_and_quantized_tflite_reports(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--format", "tflite", "--quantize", "dynamic",
                 "--out", str(tmp_path / "q.tflite")]) == 0
    err = capsys.readouterr().err
    assert "dynamic-quantized, kept regardless" in err and "test accuracy" in err
    record = json.loads((tmp_path / "q.tflite.json").read_text())
    assert 0 <= record["test_accuracy"] <= 1 and record["quantize"] == "dynamic"
    bare = tmp_path / "bare" / "model.h5"
    bare.parent.mkdir()
    bare.write_bytes((run_dir / "model.h5").read_bytes())
    record = export(bare, tmp_path / "b.keras", format="keras")
    assert record["check_images"] == "32 generated images" and "test_accuracy" not in record


def test_float16_tflite_holds_float16_weights_is_kept_with_its_test_accuracy_and_predicts(run_dir, shapes_dir,
                                                                                          tmp_path, capsys):
    import tensorflow as tf
    out = tmp_path / "f16.tflite"
    assert main(["export", str(run_dir), "--format", "tflite", "--quantize", "float16", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "float16-quantized, kept regardless" in err and "test accuracy" in err and "model.h5: " in err
    record = json.loads((tmp_path / "f16.tflite.json").read_text())
    assert record["quantize"] == "float16" and record["check_images"] == "9 test images of the run"
    assert 0 <= record["test_accuracy"] <= 1 and 0 <= record["h5_test_accuracy"] <= 1
    assert f"test accuracy {record['test_accuracy']:.4f}" in err
    assert record["max_deviation"] < 1e-2  # float16 weights: close to model.h5, not bit-equal
    dtypes = {d["dtype"] for d in tf.lite.Interpreter(model_path=str(out)).get_tensor_details()}
    assert np.float16 in dtypes  # the weights really are stored as float16
    images = sorted(str(p) for p in (shapes_dir / "square").iterdir())[:4]
    reference = Predictor.from_file(run_dir).predict(images)
    got = Predictor.from_file(out).predict(images)
    assert [p.label for p in got] == [p.label for p in reference]
    assert np.allclose([p.confidence for p in got], [p.confidence for p in reference], atol=1e-2)


def test_a_run_from_a_label_file_is_checked_on_its_test_images(run_dir, shapes_dir, tmp_path):
    import shutil
    flat = tmp_path / "flat"  # no class folders: only the label file knows the classes
    flat.mkdir()
    rows = ["file,kind"]
    for image in sorted(shapes_dir.glob("*/*")):
        shutil.copy(image, flat / f"{image.parent.name}-{image.name}")
        rows.append(f"{image.parent.name}-{image.name},{image.parent.name}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    info = json.loads((run / "run.json").read_text())
    info.update(data_dir=str(flat), labels={"path": str(tmp_path / "labels.csv"), "path_column": None,
                                            "label_column": None})
    (run / "run.json").write_text(json.dumps(info))
    record = export(run, tmp_path / "m.keras", format="keras")
    assert record["check_images"] == "9 test images of the run" and 0 <= record["test_accuracy"] <= 1


def test_a_far_off_export_is_refused_and_leaves_nothing(run_dir, tmp_path, monkeypatch):
    from gearfeat.models import export as module
    monkeypatch.setattr(module.KerasFileRunner, "__call__", lambda self, images, batch_size=32:
                        np.full((len(images), 3), 1 / 3, np.float32))
    with pytest.raises(GearfeatError, match=r"export refused: its probabilities differ from .*model.h5's by up to "
                                            r"0\.\d+ on 9 test images of the run \(tolerance 0.0001\)"):
        export(run_dir, tmp_path / "m.keras", format="keras")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "taken.keras").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    cases = [([str(tmp_path / "nope"), "--format", "keras", "--out", str(tmp_path / "a.keras")], "not found"),
             ([str(tmp_path / "notes.txt"), "--format", "keras", "--out", str(tmp_path / "a.keras")], "not a .h5"),
             ([str(tmp_path), "--format", "keras", "--out", str(tmp_path / "a.keras")], "not a gearfeat run folder"),
             ([str(run_dir), "--format", "keras", "--out", str(tmp_path / "taken.keras")], "exists; remove it"),
             ([str(run_dir), "--format", "keras", "--out", str(tmp_path / "a.tflite")], "must end in '.keras'"),
             ([str(run_dir), "--format", "keras", "--quantize", "dynamic", "--out", str(tmp_path / "a.keras")],
              "not available for keras")]
    for argv, message in cases:
        assert main(["export", *argv]) == 1, message
        err = capsys.readouterr().err
        assert err.startswith("gearfeat: error: ") and message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "a")])
    with pytest.raises(GearfeatError, match="unknown export format 'onnx'"):
        export(run_dir, tmp_path / "a", format="onnx")
    assert main(["predict", str(tmp_path / "notes.txt"), str(tmp_path / "notes.txt")]) == 1
    assert "not a model gearfeat reads" in capsys.readouterr().err
