import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from gearfeat.workflows import search as search_command, train as train_command, transfer
from gearfeat.cli import main
from gearfeat._internal.errors import GearfeatError
from gearfeat.models.heads import DenseHead
from gearfeat.outputs.runs import RunDir
from gearfeat.models.stitch import load_model, model_info
from gearfeat.data.dataset import SplitConfig
from gearfeat.workflows.train import train

from conftest import cnn_record, tiny_config

TINY_ARGS = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
             "--backbone-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def run(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(shapes_dir, out / "run", config=tiny_config(), head=DenseHead(hidden=(32,), epochs=4),
                   split=SplitConfig(seed=1), cache_dir=out / "cache", progress=False)
    return result


def test_run_folder_has_every_artifact(run):
    names = {p.name for p in run.run_dir.iterdir()}
    assert {"model.h5", "metrics.json", "history.json", "loss.png", "confusion.png", "baseline.joblib",
            "run.json", "skipped.json", "manifest.json", "test_predictions.csv"} <= names
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["baseline_test_accuracy"] <= 1
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    assert {"precision", "recall"} <= set(metrics["per_class"]["circle"])
    history = json.loads((run.run_dir / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == 4
    cache = Path(json.loads((run.run_dir / "run.json").read_text())["cache"])
    assert cache.is_absolute() and cache.is_file()  # found from any working folder
    import csv
    with open(run.run_dir / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["n_test"] and {r["true"] for r in rows} <= {"circle", "square", "triangle"}
    assert sum(r["true"] == r["predicted"] for r in rows) / len(rows) == pytest.approx(metrics["test_accuracy"])
    assert sum(r["true"] == r["baseline"] for r in rows) / len(rows) == pytest.approx(
        metrics["baseline_test_accuracy"])
    assert all(Path(r["path"]).parent.name == r["true"] for r in rows)  # each image under its own class
    for png in ("loss.png", "confusion.png"):
        assert Image.open(run.run_dir / png).size[0] > 200


def test_stitched_model_equals_head_on_cached_features(run):
    assert run.metrics["stitched_vs_head_max_abs_diff"] <= 1e-5


def test_a_stitched_model_that_differs_from_the_head_is_reported(shapes_dir, tmp_path, monkeypatch, logged):
    monkeypatch.setattr(transfer, "max_abs_difference", lambda a, b: 0.25)
    result = train(shapes_dir, tmp_path / "run", config=tiny_config(), head=DenseHead(hidden=(), epochs=1),
                   cache_dir=tmp_path / "cache", progress=False)
    warning = [line for line in logged() if line.startswith("warning: model.h5 does not reproduce the head")]
    assert len(warning) == 1 and "differ by 0.25, tolerance 0.0001" in warning[0] and "delete it" in warning[0]
    assert result.metrics["stitched_vs_head_max_abs_diff"] == 0.25


def test_stitched_model_is_compiled_and_knows_its_classes(run):
    model = load_model(run.run_dir / "model.h5")
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert getattr(model.loss, "__name__", model.loss) == "sparse_categorical_crossentropy"
    assert isinstance(model.layers[1], keras.layers.Lambda)
    assert model_info(run.run_dir / "model.h5")["class_names"] == ["circle", "square", "triangle"]


def test_stitched_model_loads_in_safe_mode_in_a_fresh_process(run, shapes_dir):
    code = (
        "import sys, numpy as np, keras, gearfeat\n"
        "from gearfeat.data.images import load_image\n"
        "m = keras.models.load_model(sys.argv[1])\n"  # default safe_mode=True, no custom_objects
        "x = np.stack([load_image(sys.argv[2], 32)]).astype('float32')\n"
        "p = m.predict(x, verbose=0)\n"
        "assert p.shape == (1, 3) and abs(p.sum() - 1) < 1e-5\n"
        "print('ok')\n")
    image = next((shapes_dir / "circle").iterdir())
    done = subprocess.run([sys.executable, "-c", code, str(run.run_dir / "model.h5"), str(image)],
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_baseline_joblib_is_verified_before_loading(run, tmp_path):
    import gearfeat
    baseline = gearfeat.load_baseline(run.run_dir)
    assert baseline.predict(np.zeros((1, 1280), np.float32)).shape == (1,)
    record = json.loads((run.run_dir / "run.json").read_text())  # the named baseline, by class and parameters
    assert record["baseline"] == "StandardScaler() + LogisticRegression(max_iter=3000, random_state=1)"
    assert run.metrics["baseline"] == "logreg"
    import shutil
    copy = RunDir(shutil.copytree(run.run_dir, tmp_path / "copy"))
    (copy / "baseline.joblib").write_bytes((copy / "baseline.joblib").read_bytes() + b"\x00")
    with pytest.raises(GearfeatError, match="sha256 does not match"):
        gearfeat.load_baseline(copy.path)
    with pytest.raises(GearfeatError, match="not recorded"):
        copy.load_joblib("other.joblib")


def test_cli_train_then_warm_rerun_then_predict(shapes_dir, tmp_path, capsys):
    args = ["train", str(shapes_dir), *TINY_ARGS, "--epochs", "2", "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "60 images computed, 0 reused" in err and "0 images computed, 60 reused" in err
    images = sorted(str(p) for p in (shapes_dir / "square").iterdir())[:5]
    bad = tmp_path / "bad.jpg"
    bad.write_text("<html>not an image</html>")
    code = main(["predict", str(tmp_path / "a" / "model.h5"), *images, str(bad), "--json",
                 "--plot", str(tmp_path / "grid.png")])
    out = json.loads(capsys.readouterr().out)
    assert code == 3  # one image could not be read
    assert [o["path"] for o in out] == [*images, str(bad)]
    assert all(o["label"] in ("circle", "square", "triangle") and 0 < o["confidence"] <= 1 for o in out[:5])
    assert out[5]["label"] is None and "not an image" in out[5]["error"]
    assert Image.open(tmp_path / "grid.png").size[0] > 200


def test_console_exits_with_mains_status_and_skips_the_last_collections(tmp_path, monkeypatch, capsys):
    import gc

    from gearfeat.cli import console
    monkeypatch.setattr(sys, "argv", ["gearfeat", "predict", str(tmp_path / "nope.h5"), "x.jpg"])
    try:
        with pytest.raises(SystemExit) as info:
            console()
        assert info.value.code == 1 and "model file not found" in capsys.readouterr().err
        assert gc.get_freeze_count() > 0  # objects alive at exit are left to the operating system
    finally:
        gc.unfreeze()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing"), *TINY_ARGS, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gearfeat: error:") and "\n" not in err and "missing" in err
    assert main(["predict", str(tmp_path / "nope.h5"), "x.jpg"]) == 1
    assert "model file not found" in capsys.readouterr().err
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04")
    assert main(["predict", str(tmp_path / "model.keras"), "x.jpg"]) == 1
    err = capsys.readouterr().err  # .keras is an export format now: a broken one is one line
    assert err.startswith(f"gearfeat: error: {tmp_path / 'model.keras'}: not a loadable .keras model")
    assert err.count("\n") == 1
    (tmp_path / "taken").write_text("a file")
    assert main(["train", str(tmp_path), *TINY_ARGS, "--out", str(tmp_path / "taken")]) == 1
    assert capsys.readouterr().err == (f"gearfeat: error: --out {tmp_path / 'taken'}: cannot create the run folder, "
                                       "a file of that name is in the way; pass another folder\n")
    assert main(["train", str(tmp_path), *TINY_ARGS, "--out", str(tmp_path / "taken" / "run")]) == 1
    assert capsys.readouterr().err == (f"gearfeat: error: --out {tmp_path / 'taken' / 'run'}: cannot create the "
                                       f"run folder, the file {tmp_path / 'taken'} is in the way; pass another "
                                       "folder\n")
    assert main(["train", str(tmp_path / "no data"), *TINY_ARGS, "--out", str(tmp_path / "new" / "run")]) == 1
    assert "no data" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # a run that fails before writing leaves no empty folder behind
    with pytest.raises(SystemExit) as info:
        main(["train", "data", "--backbone", "mobilenet_v2"])  # --out missing: argparse usage error
    assert info.value.code == 2



@pytest.mark.parametrize("option, message", [
    (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295, got -1"),
    (["--seed", "8589934592"], "--seed must be an integer from 0 to 4294967295, got 8589934592"),
    (["--learning-rate", "inf"], "invalid head parameter --learning-rate=inf"),
    (["--dropout", "nan"], "invalid head parameter --dropout=nan"),
    (["--l2", "inf"], "invalid head parameter --l2=inf"),
    (["--baseline-c", "nan"], "--baseline-c must be a finite number above 0, got nan"),
    (["--baseline", "forest"], "unknown baseline 'forest'"),
    (["--val-fraction", "nan"], "--val-fraction must be a number in [0, 1), got nan"),
    (["--test-fraction", "0"], "--test-fraction is 0.0: training needs test images"),
    (["--val-fraction", "0"], "--val-fraction is 0.0: training needs val images"),
])
def test_bad_settings_are_one_line_before_any_extraction(shapes_dir, tmp_path, capsys, option, message):
    cache = tmp_path / "cache"
    code = main(["train", str(shapes_dir), *TINY_ARGS, "--cache-dir", str(cache), "--out", str(tmp_path / "o"),
                 *option])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"gearfeat: error: {message}") and err.count("\n") == 1
    assert not cache.exists()  # refused before the cache was opened


def test_python_lambda_model_is_refused_and_its_code_never_runs(tmp_path, capsys):
    path = tmp_path / "evil.h5"
    marker = tmp_path / "ran.txt"
    code = (f"import keras, pathlib\n"
            f"inputs = keras.Input((4,))\n"
            f"f = lambda x: (pathlib.Path({str(marker)!r}).write_text('pwned'), x)[1]\n"
            f"keras.Model(inputs, keras.layers.Lambda(f)(inputs)).save({str(path)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    marker.unlink(missing_ok=True)  # building the model in that process ran the lambda once
    with pytest.raises(GearfeatError, match="refused to load.*pass safe_mode=False$"):
        load_model(path)
    assert main(["predict", str(path), "x.jpg"]) == 1
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()


def test_python_api_has_the_cli_names(run, shapes_dir, tmp_path):
    import gearfeat
    extraction = gearfeat.extract(shapes_dir, tiny_config(), cache_dir=tmp_path, progress=False)
    assert extraction.features.shape == (60, 1280)
    image = next((shapes_dir / "circle").iterdir())
    [prediction] = gearfeat.predict(run.run_dir / "model.h5", [image])
    assert prediction.label in ("circle", "square", "triangle") and prediction.error is None
    assert "mobilenet_v2" in gearfeat.list_backbones() and callable(gearfeat.train)
    assert gearfeat.search is search_command.search and gearfeat.train is train_command.train  # the CLI's names


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    import tensorflow as tf

    def too_big(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[1280,100000000]\n"
                                                           "and a long TensorFlow explanation")
    monkeypatch.setattr(train_command, "train", too_big)
    assert main(["train", "data", "--out", "run", "--hidden", "100000000"]) == 1
    assert capsys.readouterr().err == ("gearfeat: error: out of memory (OOM when allocating tensor with "
                                       "shape[1280,100000000]); use smaller layers, batches or images\n")


def test_a_head_seed_other_than_the_runs_is_replaced_with_a_warning(shapes_dir, tmp_path):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        mine = DenseHead(hidden=(), epochs=1, seed=7)
        result = train(shapes_dir, tmp_path / "run", config=tiny_config(), head=mine,
                       split=SplitConfig(seed=2), cache_dir=tmp_path / "cache", progress=False)
    [warning] = [w for w in caught if w.category is UserWarning]
    assert str(warning.message) == ("the head's seed 7 is replaced by the run's seed 2 (SplitConfig.seed seeds "
                                    "the split and the training)")
    assert warning.filename == __file__  # it points at the caller's line
    assert json.loads((result.run_dir / "run.json").read_text())["split"]["seed"] == 2
    assert mine.seed == 7 and not hasattr(mine, "model_")  # trained on a clone, as scikit-learn tools do
    assert result.head.seed == 2 and result.head.n_features_in_ == 1280


def test_features_of_new_images_are_those_the_run_trained_on(run, tmp_path):
    import gearfeat
    from gearfeat._internal.errors import ImageError
    records = run.extraction.dataset.records[:4]
    features = gearfeat.image_features(run.run_dir, [r.path for r in records])
    np.testing.assert_allclose(features, run.extraction.features[:4], atol=1e-5)  # as cached for training
    baseline = gearfeat.load_baseline(run.run_dir)
    assert list(baseline.predict(features)) == list(run.baseline.predict(run.extraction.features[:4]))
    (tmp_path / "bad.jpg").write_text("<html>")
    with pytest.raises(ImageError, match="bad.jpg: not an image"):
        gearfeat.image_features(run.run_dir, [records[0].path, tmp_path / "bad.jpg"])
    (tmp_path / "cnn").mkdir()
    cnn_record().save(RunDir(tmp_path / "cnn", create=True))
    with pytest.raises(GearfeatError, match="is a `gearfeat cnn` run, which has no cached-feature settings"):
        gearfeat.image_features(tmp_path / "cnn", [records[0].path])
    with pytest.raises(GearfeatError, match="^image_features needs at least one image path$"):
        gearfeat.image_features(run.run_dir, [])


def test_the_result_holds_the_fitted_models_and_reads_in_one_line(run):
    X = run.extraction.features[:5]
    assert list(run.head.predict(X)) == list(run.head.predict_proba(X).argmax(axis=1))
    assert run.baseline.predict(X).shape == (5,)
    text = repr(run)
    assert text.startswith(f"TrainResult(run_dir={str(run.run_dir)!r}, test_accuracy=") and "\n" not in text
    assert len(text) < 300 and repr(run.extraction).startswith("Extraction(features=(60, 1280)")
    assert repr(run.extraction.dataset).endswith("classes=3, images=60, skipped=0)")


@pytest.mark.parametrize("settings, message", [
    ({"config": "mobilenet_v2"}, "config must be an instance of ExtractorConfig, got 'mobilenet_v2'"),
    ({"split": {"seed": 1}}, "split must be an instance of SplitConfig, got {'seed': 1}"),
    ({"head": DenseHead(hidden=None)}, "invalid head parameter hidden=None"),
])
def test_settings_of_the_wrong_kind_are_named(tmp_path, settings, message):
    with pytest.raises(GearfeatError, match=f"^{re.escape(message)}$"):
        train(tmp_path / "data", tmp_path / "run", **settings)
    assert not (tmp_path / "run").exists()


class SoftmaxHead:
    """A head that is not a DenseHead: one softmax layer, written against the Head protocol alone."""

    def __init__(self, seed: int = 0, learning_rate: float = 0.05, epochs: int = 3):
        self.seed, self.learning_rate, self.epochs = seed, learning_rate, epochs

    def get_params(self, deep: bool = True) -> dict:
        return {"seed": self.seed, "learning_rate": self.learning_rate, "epochs": self.epochs}

    def set_params(self, **params) -> "SoftmaxHead":
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def validate(self) -> None:
        if not self.epochs >= 1:
            raise GearfeatError(f"SoftmaxHead needs epochs >= 1, got {self.epochs}")

    def fit(self, X, y, validation_data=None, classes=None) -> "SoftmaxHead":
        keras.utils.set_random_seed(self.seed)
        inputs = keras.Input((X.shape[1],))
        self.model_ = keras.Model(inputs, keras.layers.Dense(len(classes), activation="softmax")(inputs))
        self.model_.compile(optimizer=keras.optimizers.SGD(self.learning_rate),
                            loss="sparse_categorical_crossentropy")
        fitted = self.model_.fit(X, y, validation_data=validation_data, epochs=self.epochs, verbose=0)
        self.history_ = fitted.history
        self.best_epoch_ = self.epochs
        return self

    def predict_proba(self, X):
        return self.model_.predict(X, verbose=0)


def test_a_head_of_its_own_class_goes_through_train_into_a_loadable_model(shapes_dir, tmp_path):
    mine = SoftmaxHead(epochs=2)
    result = train(shapes_dir, tmp_path / "run", config=tiny_config(), head=mine, split=SplitConfig(seed=3),
                   cache_dir=tmp_path / "cache", progress=False)
    assert type(result.head) is SoftmaxHead and result.head is not mine and not hasattr(mine, "model_")
    assert result.head.seed == 3 and result.metrics["stitched_vs_head_max_abs_diff"] <= 1e-4
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["head"] == {"seed": 3, "learning_rate": 0.05, "epochs": 2} and record["epochs_run"] == 2
    model = load_model(result.run_dir / "model.h5")  # safe mode
    images = np.stack([np.asarray(Image.open(r.path).convert("RGB"), np.float32)
                       for r in result.extraction.dataset.records[:3]])
    assert model.predict(images, verbose=0).shape == (3, 3)
    assert len(json.loads((result.run_dir / "history.json").read_text())["loss"]) == 2


class NoProba(SoftmaxHead):
    predict_proba = None  # not callable: as missing as an absent method


def test_a_head_missing_part_of_the_protocol_is_one_error_naming_what_is_missing(shapes_dir, tmp_path):
    class Bare:
        seed = 0

    with pytest.raises(GearfeatError, match=r"^head Bare lacks learning_rate, get_params, set_params, validate, "
                                            r"fit, predict_proba: a head needs seed, learning_rate, .*Head\)$"):
        train(shapes_dir, tmp_path / "run", head=Bare())
    with pytest.raises(GearfeatError, match=r"^head NoProba lacks predict_proba: a head needs "):
        train(shapes_dir, tmp_path / "run", head=NoProba())
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # refused before any work
    # over the memory budget the head must also train on streamed rows
    with pytest.raises(GearfeatError, match=r"^head SoftmaxHead lacks fit_streamed: a head trained on features "
                                            r"streamed from the cache needs .*fit_streamed"):
        train(shapes_dir, tmp_path / "run", config=tiny_config(), head=SoftmaxHead(), cache_dir=tmp_path / "cache",
              memory_budget="10kB", progress=False)


def test_a_scikit_learn_classifier_is_the_baseline_cloned_recorded_and_verified(shapes_dir, tmp_path, logged):
    import gearfeat
    from sklearn.neighbors import KNeighborsClassifier
    mine = KNeighborsClassifier(n_neighbors=3)
    result = train(shapes_dir, tmp_path / "run", config=tiny_config(), head=DenseHead(hidden=(8,), epochs=2),
                   baseline=mine, cache_dir=tmp_path / "cache", progress=False)
    lines = logged()
    assert not hasattr(mine, "classes_") and type(result.baseline) is KNeighborsClassifier  # fitted as a clone
    assert result.baseline is not mine and result.baseline.n_neighbors == 3
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["baseline"] == "KNeighborsClassifier(n_neighbors=3)" == result.metrics["baseline"]
    assert record["features"]["baseline"] == "KNeighborsClassifier(n_neighbors=3)"
    assert any("(baseline KNeighborsClassifier(n_neighbors=3): " in line for line in lines), lines
    loaded = gearfeat.load_baseline(result.run_dir)  # checked against manifest.json first
    X = result.extraction.features[:6]
    assert type(loaded) is KNeighborsClassifier and list(loaded.predict(X)) == list(result.baseline.predict(X))
    (result.run_dir / "baseline.joblib").write_bytes((result.run_dir / "baseline.joblib").read_bytes() + b"\x00")
    with pytest.raises(GearfeatError, match="sha256 does not match"):
        gearfeat.load_baseline(result.run_dir)


@pytest.mark.parametrize("baseline, message", [
    ("StandardScaler", r"baseline StandardScaler\(\) is not a scikit-learn classifier \(it has no predict\); "
                       r"choose one of: logreg, linear_svc, svc, or pass a scikit-learn classifier"),
    ("LogisticRegression", r"baseline <class '.*LogisticRegression'> is not a scikit-learn classifier \(a class: "
                           r"pass an instance of it\)"),
    ("number", r"baseline 3 is not a scikit-learn classifier \(it has no fit or predict\)"),
    ("regressor", r"baseline LinearRegression\(\) is not a scikit-learn classifier \(it is not a classifier\)"),
    ("C", r"baseline_c=0.5 sets the C of a named baseline; set it on the estimator LogisticRegression\(C=2\) instead"),
])
def test_a_baseline_that_is_no_classifier_is_one_line_naming_it(shapes_dir, tmp_path, baseline, message):
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.preprocessing import StandardScaler
    value, c = {"StandardScaler": (StandardScaler(), 1.0), "LogisticRegression": (LogisticRegression, 1.0),
                "number": (3, 1.0), "regressor": (LinearRegression(), 1.0), "C": (LogisticRegression(C=2), 0.5)}[baseline]
    with pytest.raises(GearfeatError, match=f"^{message}") as info:
        train(shapes_dir, tmp_path / "run", baseline=value, baseline_c=c, cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
