"""``gearfeat predict --plot``: a bad path is refused before any work; no readable image still reports each file."""
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from gearfeat.workflows import predict as prediction
from gearfeat.cli import main
from gearfeat.data.images import load_image
from gearfeat.models.stitch import save_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny 16 px, 2-class model saved the way gearfeat saves its models."""
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    return save_model(keras.Model(inputs, outputs), tmp_path_factory.mktemp("model") / "model.h5", ["cat", "dog"])


def test_a_bad_plot_path_is_a_usage_error_before_any_work(model_path, tmp_path, capsys, monkeypatch):
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20), "red").save(image)
    monkeypatch.setattr(prediction, "load_image",
                        lambda *args: pytest.fail("an image was read before --plot was checked"))
    assert main(["predict", str(model_path), str(image), "--plot", str(tmp_path / "grid.jpg")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"gearfeat predict: error: argument --plot: {tmp_path / 'grid.jpg'}: figures are written as PNG; use a "
        "path ending in .png\n")
    assert main(["predict", str(tmp_path / "nope.h5"), str(image), "--plot", "grid"]) == 2  # before the model
    assert "argument --plot: grid: figures are written as PNG" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["predict", str(model_path), str(image), "--plot", str(tmp_path / "file" / "grid.png")]) == 2
    assert "is not a writable folder" in capsys.readouterr().err
    (tmp_path / "grid.png").mkdir()
    assert main(["predict", str(model_path), str(image), "--plot", str(tmp_path / "grid.png")]) == 2
    assert "grid.png is a folder" in capsys.readouterr().err


def test_no_readable_image_reports_each_file_and_skips_the_plot(model_path, tmp_path, capsys):
    bad, missing = tmp_path / "bad.jpg", tmp_path / "missing.png"
    bad.write_text("<html>not an image</html>")
    plot = tmp_path / "grid.png"
    assert main(["predict", str(model_path), str(bad), str(missing), "--plot", str(plot)]) == 3
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [[str(bad), "ERROR"], [str(missing), "ERROR"]]
    assert "not an image" in lines[0]
    assert captured.err == f"gearfeat: warning: no readable image, {plot} not drawn\n"
    assert not plot.exists()
    assert main(["predict", str(model_path), str(bad), "--json", "--plot", str(plot)]) == 3
    assert json.loads(capsys.readouterr().out)[0]["label"] is None


def test_the_warning_follows_the_lines_it_is_about_on_a_shared_terminal(model_path, tmp_path):
    """stdout and stderr into one pipe (as a terminal or ``2>&1`` shows them): each file's line, then the warning."""
    bad, plot = tmp_path / "bad.jpg", tmp_path / "grid.png"
    bad.write_text("<html>not an image</html>")
    done = subprocess.run([sys.executable, "-m", "gearfeat", "predict", str(model_path), str(bad), "--plot", str(plot)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert done.returncode == 3
    assert [line.split("\t")[1] if "\t" in line else line for line in done.stdout.splitlines()] == \
        ["ERROR", f"gearfeat: warning: no readable image, {plot} not drawn"]


def test_a_warning_before_an_error_is_still_shown(model_path, tmp_path, capsys, monkeypatch):
    import warnings

    from gearfeat._internal.errors import GearfeatError

    def warn_then_fail(*args, **kwargs):
        warnings.warn("held back", stacklevel=2)
        raise GearfeatError("model.h5: broken")

    monkeypatch.setattr(prediction.Predictor, "from_file", warn_then_fail)
    assert main(["predict", str(model_path), str(tmp_path / "a.png")]) == 1
    assert capsys.readouterr().err.splitlines() == ["gearfeat: warning: held back", "gearfeat: error: model.h5: broken"]


def test_a_readable_image_is_plotted(model_path, tmp_path, capsys):
    image, plot = tmp_path / "a.png", tmp_path / "out" / "grid.png"
    Image.new("RGB", (20, 20), "red").save(image)
    assert main(["predict", str(model_path), str(image), "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    path, label, _ = captured.out.split("\t")
    assert path == str(image) and label in ("cat", "dog")
    assert captured.err == f"wrote {plot}\n" and Image.open(plot).size[0] > 100


def _image(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (16, 16), "red").save(image)
    return image


def test_a_figure_that_cannot_be_written_loses_no_prediction(model_path, tmp_path, capsys, monkeypatch):
    from gearfeat._internal.errors import GearfeatError

    def fail(*args, **kwargs):
        raise GearfeatError("cannot write grid.png: Read-only file system")

    monkeypatch.setattr(prediction, "plot_predictions", fail)
    image = _image(tmp_path)
    assert main(["predict", str(model_path), str(image), "--plot", str(tmp_path / "grid.png")]) == 1
    captured = capsys.readouterr()
    assert captured.out.split("\t")[0] == str(image)  # printed before the figure was tried
    assert captured.err == "gearfeat: error: cannot write grid.png: Read-only file system\n"


def _other_tool(tmp_path, name, inputs, outputs):
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / name)  # Keras's own .h5, without gearfeat's metadata
    return tmp_path / name


def test_models_of_other_tools_get_one_line_or_a_warning(tmp_path, capsys):
    image = _image(tmp_path)
    square = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()
    free = keras.Input((None, None, 3))
    cases = {
        "free.h5": (free, keras.layers.Dense(2, activation="softmax")(pooled(free)),
                    "takes input (None, None, None, 3); gearfeat predicts with models that take square RGB images"),
        "gray.h5": (keras.Input((16, 16, 1)), None, "takes input (None, 16, 16, 1)"),
        "vector.h5": (keras.Input((10,)), None, "takes input (None, 10)"),
        "two.h5": (square, [keras.layers.Dense(2, activation="softmax")(pooled(square)),
                            keras.layers.Dense(3, activation="softmax")(pooled(square))],
                   "gearfeat predicts with models that give one vector of class probabilities"),
    }
    for name, (inputs, outputs, expected) in cases.items():
        if outputs is None:
            flat = keras.layers.Flatten()(inputs)
            outputs = keras.layers.Dense(2, activation="softmax")(flat)
        path = _other_tool(tmp_path, name, inputs, outputs)
        assert main(["predict", str(path), str(image)]) == 1, name
        err = capsys.readouterr().err
        assert err.startswith(f"gearfeat: error: {path}: ") and expected in err and err.count("\n") == 1, err
    plain = _other_tool(tmp_path, "plain.h5", square, keras.layers.Dense(2, activation="softmax")(pooled(square)))
    assert main(["predict", str(plain), str(image)]) == 0
    captured = capsys.readouterr()
    assert captured.out.split("\t")[1] in ("0", "1")
    assert captured.err == (f"gearfeat: warning: {plain} holds no class names (not saved by gearfeat?): the labels "
                            "are output indexes, and images go in as gearfeat standardizes them (16 x 16 RGB, 0-255)\n")
    logits = save_model(keras.Model(square, keras.layers.Dense(2)(pooled(square))), tmp_path / "logits.h5",
                        ["cat", "dog"])
    assert main(["predict", str(logits), str(image)]) == 0
    assert capsys.readouterr().err == ("gearfeat: warning: the model's outputs are not probabilities (no softmax?): "
                                       "the confidences are its raw outputs\n")


@pytest.mark.parametrize("metadata", ["{not json", "[1, 2]"])
def test_damaged_gearfeat_metadata_is_one_line(model_path, tmp_path, capsys, metadata):
    import shutil

    import h5py
    damaged = tmp_path / "damaged.h5"
    shutil.copy(model_path, damaged)
    with h5py.File(damaged, "a") as f:
        f.attrs["gearfeat"] = metadata
    assert main(["predict", str(damaged), str(_image(tmp_path))]) == 1
    assert capsys.readouterr().err == (f"gearfeat: error: {damaged}: its gearfeat metadata is not a JSON object "
                                       "(edited or damaged?); save the model again with gearfeat\n")


def test_saving_and_predicting_check_their_arguments(model_path, tmp_path):
    from gearfeat._internal.errors import GearfeatError
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(inputs)))
    with pytest.raises(GearfeatError, match="the model has 3 outputs but 2 class names"):
        save_model(model, tmp_path / "m.h5", ["a", "b"])
    with pytest.raises(GearfeatError, match="class_names must be a list of strings, got 'abc'"):
        save_model(model, tmp_path / "m.h5", "abc")
    with pytest.raises(GearfeatError, match="model metadata must be JSON values"):
        save_model(model, tmp_path / "m.h5", ["a", "b", "c"], size=np.int64(3))
    (tmp_path / "taken.h5").mkdir()
    with pytest.raises(GearfeatError, match="cannot write .*taken.h5"):
        save_model(model, tmp_path / "taken.h5", ["a", "b", "c"])
    assert not list(tmp_path.glob(".*.tmp.h5"))  # no temporary file left behind
    [one] = prediction.Predictor.from_file(model_path).predict(str(_image(tmp_path)))  # one path, one image
    assert one.error is None and one.label in ("cat", "dog")
    for names in (["a", "b"], ["a", "b", "c", "d"]):
        with pytest.raises(GearfeatError, match=f"model has 3 outputs but {len(names)} class names"):
            prediction.Predictor(model, names)


def test_top_k_classes_with_their_probabilities(model_path, tmp_path, capsys):
    image = _image(tmp_path)
    [result] = prediction.Predictor.from_file(model_path).predict([image])
    assert set(result.probabilities) == {"cat", "dog"} and sum(result.probabilities.values()) == pytest.approx(1)
    (first, p1), (second, p2) = result.top(5)  # no more than there are classes
    for k in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"k must be an integer >= 1, got {k!r}"):
            result.top(k)
    assert first == result.label and p1 == result.confidence and p1 >= p2 and second != first
    assert main(["predict", str(model_path), str(image), "--top-k", "2"]) == 0
    path, label1, prob1, label2, prob2 = capsys.readouterr().out.strip().split("\t")
    assert (path, label1, label2) == (str(image), first, second) and float(prob1) == pytest.approx(p1, abs=1e-4)
    assert main(["predict", str(model_path), str(image), "--top-k", "2", "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert [t["label"] for t in record["top"]] == [first, second] and record["label"] == first
    assert main(["predict", str(model_path), str(image), "--json"]) == 0
    assert "top" not in json.loads(capsys.readouterr().out)[0]  # the JSON keeps its shape without --top-k
    with pytest.raises(SystemExit) as info:
        main(["predict", str(model_path), str(image), "--top-k", "0"])
    assert info.value.code == 2
    from gearfeat._internal.errors import GearfeatError
    with pytest.raises(GearfeatError, match="predict takes image file paths, got ndarray; save the image first"):
        prediction.Predictor.from_file(model_path).predict([np.zeros((16, 16, 3), np.uint8)])


def test_a_run_folder_and_image_folders_are_accepted(model_path, tmp_path, capsys):
    images = tmp_path / "new"
    images.mkdir()
    for name in ("b.png", "a.png"):
        Image.new("RGB", (16, 16), "red").save(images / name)
    (images / ".hidden.png").write_bytes((images / "a.png").read_bytes())
    (images / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(model_path.parent), str(images), str(tmp_path / "empty")]) == 3
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [line[0] for line in lines] == [str(images / "a.png"), str(images / "b.png"), str(tmp_path / "empty")]
    assert lines[2][1:] == ["ERROR", "no image files in this folder"]


def test_the_label_is_the_most_probable_class(model_path, tmp_path):
    predictor = prediction.Predictor.from_file(model_path)
    image = _image(tmp_path)
    [result] = predictor.predict([image])
    probabilities = predictor.runner(load_image(image, predictor.image_size)[None])[0]
    assert result.label == predictor.class_names[int(np.argmax(probabilities))]
    assert result.confidence == pytest.approx(float(probabilities.max()), abs=1e-6)
