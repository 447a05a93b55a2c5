import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from gearfeat.models.architecture import (DEFAULT_AUGMENT, DEFAULT_LAYERS, build_cnn, list_layers, parse_layers,
                                          register_layer)
from gearfeat.cli import main
from gearfeat.workflows.cnn import train_cnn
from gearfeat.data.dataset import scan_dataset, split_dataset
from gearfeat._internal.errors import GearfeatError
from gearfeat.workflows.fitting import FitConfig, load_split
from gearfeat.models.stitch import load_model, model_info
from gearfeat.data.dataset import SplitConfig

SMALL = "conv:8,bn,pool,conv:16,bn,pool,gap,dropout:0.2"
QUIET = ["--image-size", "32", "--layers", SMALL, "--no-progress"]


@pytest.fixture(scope="module")
def run(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "run"
    return train_cnn(shapes_dir, out, layers=SMALL, image_size=32, config=FitConfig(epochs=3, patience=5),
                     split=SplitConfig(seed=1), progress=False)


def test_run_folder_has_every_artifact_well_formed(run):
    folder = run.run_dir
    names = {p.name for p in folder.iterdir()}
    assert {"model.h5", "metrics.json", "history.json", "loss.png", "confusion.png", "run.json",
            "skipped.json", "manifest.json"} <= names
    assert set(json.loads((folder / "manifest.json").read_text())) >= names - {"manifest.json"}
    history = json.loads((folder / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == len(history["accuracy"]) == 3
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    assert {"precision", "recall", "support"} <= set(metrics["per_class"]["square"])
    assert sum(c["support"] for c in metrics["per_class"].values()) == metrics["n_test"]
    for png in ("loss.png", "confusion.png"):
        with Image.open(folder / png) as image:
            assert image.format == "PNG" and image.size[0] > 200


def test_run_json_follows_the_run_folder_contract(run, shapes_dir):
    record = json.loads((run.run_dir / "run.json").read_text())
    assert record["command"] == "cnn" and record["layers"] == SMALL and record["augment"] == DEFAULT_AUGMENT
    assert record["class_names"] == ["circle", "square", "triangle"]
    assert record["seconds"]["total"] >= record["seconds"]["train"] > 0
    assert record["machine"]["cores"] >= 1 and record["fit"]["epochs"] == 3
    expected = split_dataset(scan_dataset(shapes_dir), seed=1)  # the split `gearfeat train --seed 1` uses
    assert record["split"] == {"val_fraction": 0.15, "test_fraction": 0.15, "seed": 1,
                               **{k: len(v) for k, v in expected.items()}}


def test_saved_model_is_the_best_epoch_and_classifies_raw_images(run, shapes_dir):
    """EarlyStopping restored the lowest-val_loss weights before saving; augmentation is off at inference."""
    record = json.loads((run.run_dir / "run.json").read_text())
    history = json.loads((run.run_dir / "history.json").read_text())
    assert record["best_epoch"] == int(np.argmin(history["val_loss"])) + 1
    model = load_model(run.run_dir / "model.h5")  # safe mode
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"RandomFlip", "RandomRotation", "RandomZoom", "Rescaling"} <= kinds
    data = load_split(shapes_dir, SplitConfig(seed=1), 32, progress=False)
    images, labels = data.arrays("val")
    loss, _ = model.evaluate(images.astype(np.float32), labels, verbose=0)
    assert loss == pytest.approx(min(history["val_loss"]), rel=1e-4)
    assert np.array_equal(model.predict(images.astype(np.float32), verbose=0),
                          model.predict(images.astype(np.float32), verbose=0))
    assert model_info(run.run_dir / "model.h5")["class_names"] == ["circle", "square", "triangle"]


def test_augmentation_is_active_in_training_only():
    model = build_cnn(3, 32, SMALL, DEFAULT_AUGMENT)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    assert np.array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model.layers[1](x, training=True), x)  # RandomFlip/rotation/... change the images
    assert np.array_equal(model.layers[1](x, training=False), x)


def test_cnn_model_is_usable_by_gearfeat_predict_in_a_fresh_process(run, shapes_dir):
    """The saved augmentation and rescaling layers load in Keras safe mode (what `gearfeat predict` uses)."""
    image = next((shapes_dir / "circle").iterdir())
    done = subprocess.run([sys.executable, "-m", "gearfeat", "predict", str(run.run_dir / "model.h5"),
                           str(image), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [prediction] = json.loads(done.stdout)
    assert prediction["label"] in ("circle", "square", "triangle") and 0 < prediction["confidence"] <= 1


def test_default_architecture_extends_the_challenge_start():
    model = build_cnn(12)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[:6] == ["InputLayer", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                         "Rescaling"]
    assert kinds.count("Conv2D") == DEFAULT_LAYERS.count("conv:") == kinds.count("MaxPooling2D")
    assert kinds[-1] == "Dense" and model.output_shape == (None, 12)
    assert model.input_shape == (None, 128, 128, 3)


def test_the_challenge_start_is_flattened_before_the_output():
    model = build_cnn(3, 32, "conv:8,pool,conv:16,pool", augment="none")
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer", "Rescaling", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert model.layers[2].kernel_size == (3, 3) and model.layers[2].filters == 8


def test_parse_layers_converts_arguments_and_defaults():
    parsed = parse_layers("conv:32:5, pool, dense:64,dropout:0.5")
    assert [(kind.name, args) for kind, args in parsed] == [
        ("conv", (32, 5)), ("pool", (2,)), ("dense", (64,)), ("dropout", (0.5,))]
    assert parse_layers("none", augment=True) == [] and parse_layers("", augment=True) == []
    assert {t.name for t in list_layers(augment=True)} >= {"flip", "rotation", "zoom"}


@pytest.mark.parametrize("spec, message", [
    ("conv:32,pool,softmax", "unknown layers entry 'softmax'"),
    ("conv", "expected conv:filters"),
    ("conv:32:3:1", "expected conv:filters"),
    ("conv:-4", "bad filters '-4'"),
    ("dropout:1.5", "bad rate '1.5'"),
    ("conv:many", "bad filters 'many'"),
    ("flip,conv:8", "unknown layers entry 'flip'"),  # augmentation goes in --augment
])
def test_bad_architecture_is_one_clear_error(spec, message):
    with pytest.raises(GearfeatError, match=message) as info:
        build_cnn(3, 32, spec, "none")
    assert "\n" not in str(info.value)


def test_a_misspelled_flip_is_refused_not_a_flip_that_does_nothing():
    with pytest.raises(GearfeatError, match="augmentation entry 'flip:diagonal': bad mode 'diagonal' \\(must be "
                                            "one of horizontal, vertical, horizontal_and_vertical\\)"):
        build_cnn(3, 32, "conv:8,gap", "flip:diagonal")
    build_cnn(3, 32, "conv:8,gap", "flip:vertical")


@pytest.mark.parametrize("option, message", [
    (["--image-size", "-5"], "--image-size must be an integer from 8 to 4096, got -5"),
    (["--image-size", "100000"], "--image-size must be an integer from 8 to 4096, got 100000"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295, got -1"),
    (["--learning-rate", "inf"], "invalid training parameter --learning-rate=inf"),
])
def test_bad_cnn_settings_are_one_line_before_the_images_are_read(tmp_path, capsys, option, message):
    out = tmp_path / "run"
    assert main(["cnn", str(tmp_path / "no-such-folder"), "--out", str(out), "--no-progress", *option]) == 1
    assert capsys.readouterr().err == f"gearfeat: error: {message}\n"
    assert not out.exists()


def test_layers_that_do_not_fit_together_are_a_clear_error():
    with pytest.raises(GearfeatError, match=r"cannot add conv:filters\[:kernel\]"):
        build_cnn(3, 32, "gap,conv:8", "none")
    with pytest.raises(GearfeatError, match="unknown augmentation entry 'conv:8'"):
        build_cnn(3, 32, SMALL, "conv:8")


def test_registering_a_layer_makes_it_usable():
    @register_layer("leaky", ("alpha", float, 0.1))
    def _leaky(alpha):
        """Leaky ReLU."""
        return keras.layers.LeakyReLU(negative_slope=alpha)

    try:
        model = build_cnn(3, 32, "conv:8,leaky:0.2,gap", "none")
        assert model.layers[3].negative_slope == pytest.approx(0.2)
    finally:
        from gearfeat.features import augment
        del augment._LAYERS["leaky"]


def test_cli_cnn_time_limit_and_skipped_files(shapes_dir, tmp_path, capsys):
    data = shutil.copytree(shapes_dir, tmp_path / "data")
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    code = main(["cnn", str(data), "--out", str(tmp_path / "run"), *QUIET, "--epochs", "20", "--max-minutes",
                 "0.0001"])
    err = capsys.readouterr().err
    assert code == 3 and "broken.png" in err and "stopped by time limit" in err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["epochs_run"] == 1 and record["stopped_by"] == "time limit" and record["n_skipped"] == 1
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert [s["path"] for s in skipped] == [str(data / "circle" / "broken.png")]


def test_cli_cnn_errors_are_one_line(shapes_dir, tmp_path, capsys):
    assert main(["cnn", str(shapes_dir), "--out", str(tmp_path / "o"), "--layers", "conv:8,bogus"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gearfeat: error: unknown layers entry 'bogus'") and "\n" not in err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    assert main(["cnn", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *QUIET]) == 1
    assert "dataset folder not found" in capsys.readouterr().err
    assert main(["cnn", str(shapes_dir), "--out", str(tmp_path / "o"), *QUIET, "--epochs", "0"]) == 1
    assert "invalid training parameter --epochs=0" in capsys.readouterr().err


def test_a_split_without_validation_images_is_refused(shapes_dir, tmp_path):
    with pytest.raises(GearfeatError, match="^val_fraction is 0.0: training needs val images"):
        train_cnn(shapes_dir, tmp_path / "run", layers=SMALL, image_size=32,
                  split=SplitConfig(val_fraction=0.0), progress=False)
