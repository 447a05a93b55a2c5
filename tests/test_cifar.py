"""scripts/0-transfer.py and gearfeat.workflows.cifar: a generated archive in CIFAR-10's own pickle format, the script
run end to end, and a grader's exact check of cifar10.h5 in a fresh process."""
import importlib.util
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from gearfeat.workflows import cifar as cifar_module
from gearfeat.features import extractor as extractor_module
from gearfeat.workflows.cifar import CLASS_NAMES, load_cifar10, train_cifar10
from gearfeat._internal.errors import GearfeatError
from gearfeat.models.heads import DenseHead
from gearfeat.models.stitch import model_info
from gearfeat.workflows.transfer import STITCH_TOLERANCE

from conftest import tiny_config

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SCRIPT = SCRIPTS / "0-transfer.py"
PER_BATCH, N_TEST = 40, 100  # 5 x 40 training images, 100 test images
# the default application, random weights, at 48 px (random MobileNets give ~1e-11 features: no head learns)
TINY_ARGS = ["--backbone", "resnet50", "--weights", "none", "--backbone-size", "48", "--epochs", "20",
             "--batch-size", "32", "--no-progress"]
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]])
QUIET = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Rows in CIFAR-10's layout (1024 red, 1024 green, 1024 blue); each class has its own colour."""
    pixels = PALETTE[labels][:, :, None] + rng.normal(0, 12, (len(labels), 3, 1024))
    return np.clip(pixels, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def _batch(rng: np.random.Generator, n: int, label: str) -> dict:
    labels = np.arange(n) % len(CLASS_NAMES)
    rng.shuffle(labels)
    return {b"batch_label": label.encode(), b"labels": [int(v) for v in labels],
            b"data": _images(rng, labels), b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write_batches(folder: Path, seed: int = 0) -> Path:
    """The extracted form: ``folder/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``."""
    rng = np.random.default_rng(seed)
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    batches = {f"data_batch_{i}": _batch(rng, PER_BATCH, f"training batch {i} of 5") for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, N_TEST, "testing batch 1 of 1")
    batches["batches.meta"] = {b"label_names": [n.encode() for n in CLASS_NAMES], b"num_vis": 3072,
                               b"num_cases_per_batch": PER_BATCH}
    for name, payload in batches.items():  # protocols 3 and 4 store bytes as bytes, as the official files do
        (root / name).write_bytes(pickle.dumps(payload, protocol=4 if name == "test_batch" else 3))
    return root


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> tuple[Path, Path]:
    """(the extracted cifar-10-batches-py folder, the same as cifar-10-python.tar.gz)."""
    base = tmp_path_factory.mktemp("cifar")
    folder = write_batches(base / "extracted")
    archive = base / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return folder, archive


def _run_script(args, cwd: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env or QUIET)


@pytest.fixture(scope="module")
def trained(cifar, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The script run end to end from an empty working folder on the generated archive."""
    cwd = tmp_path_factory.mktemp("work")
    done = _run_script(["--data", str(cifar[1]), *TINY_ARGS, "--plots", "plots"], cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd, done


# ------------------------------------------------------------------------------------------ loading
def test_archive_folder_and_parent_folder_load_exactly_as_keras_reads_the_batches(cifar):
    from keras.src.datasets.cifar import load_batch  # Keras's own reader of this format
    folder, archive = cifar
    (x_train, y_train), (x_test, y_test) = load_cifar10(archive)
    assert x_train.shape == (5 * PER_BATCH, 32, 32, 3) and x_test.shape == (N_TEST, 32, 32, 3)
    assert y_train.shape == (5 * PER_BATCH, 1) and y_test.shape == (N_TEST, 1)
    assert x_train.dtype == y_train.dtype == np.uint8
    keras_x, keras_y = load_batch(str(folder / "data_batch_2"))
    np.testing.assert_array_equal(x_train[PER_BATCH:2 * PER_BATCH], keras_x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y_train[PER_BATCH:2 * PER_BATCH, 0], keras_y)
    for other in (folder, folder.parent):
        (a, b), (c, d) = load_cifar10(other)
        for mine, theirs in ((a, x_train), (b, y_train), (c, x_test), (d, y_test)):
            np.testing.assert_array_equal(mine, theirs)


def test_a_pickled_global_is_refused_and_never_runs(cifar, tmp_path):
    import shutil
    folder = Path(shutil.copytree(cifar[0], tmp_path / "cifar-10-batches-py"))
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=4))
    with pytest.raises(GearfeatError, match=r"data_batch_3 cannot be read.*refused global posix.mkdir"):
        load_cifar10(folder)
    assert not marker.exists()


def _rewrite(folder: Path, name: str, payload) -> None:
    (folder / name).write_bytes(payload if isinstance(payload, bytes) else pickle.dumps(payload, protocol=3))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "test_batch").unlink(), r"no CIFAR-10 batch test_batch in it; pass the official"),
    (lambda f: _rewrite(f, "data_batch_1", b"\x80\x02}q\x00(X"), r"data_batch_1 cannot be read as a CIFAR"),
    (lambda f: _rewrite(f, "data_batch_4", [1, 2, 3]), r"data_batch_4 is not a CIFAR-10 batch"),
    (lambda f: _rewrite(f, "data_batch_5", {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}),
     r"data_batch_5: b'data' must be a uint8 array of shape \(N, 3072\), N >= 1, got float32 \(2, 3072\)"),
    (lambda f: _rewrite(f, "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
     r"test_batch: b'labels' must be 2 integers in 0..9"),
])
def test_damaged_folders_give_one_line_naming_the_batch(cifar, tmp_path, damage, message):
    import shutil
    folder = Path(shutil.copytree(cifar[0], tmp_path / "cifar-10-batches-py"))
    damage(folder)
    with pytest.raises(GearfeatError, match=message) as info:
        load_cifar10(folder)
    assert "\n" not in str(info.value)


def test_missing_path_empty_folder_and_non_archive_are_one_line_errors(tmp_path):
    with pytest.raises(GearfeatError, match=r"CIFAR-10 data not found: .*nope does not exist; pass the"):
        load_cifar10(tmp_path / "nope")
    with pytest.raises(GearfeatError, match=r"no CIFAR-10 batch data_batch_1, .*test_batch in it"):
        load_cifar10(tmp_path)
    fake = tmp_path / "cifar-10-python.tar.gz"
    fake.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(GearfeatError, match=r"not a readable CIFAR-10 archive"):
        load_cifar10(fake)
    truncated = tmp_path / "truncated.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 1 << 20
        tar.addfile(info, io.BytesIO(bytes(1 << 20)))
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(GearfeatError, match=r"truncated.tar.gz: not a readable CIFAR-10 archive"):
        load_cifar10(truncated)


# ------------------------------------------------------------------------------------------ the script
def _import_script():
    spec = importlib.util.spec_from_file_location("transfer_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preprocess_data_is_float_pixels_and_one_hot_labels():
    preprocess_data = _import_script().preprocess_data
    X = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    for Y in (np.array([3, 0, 9, 1, 1, 5], np.uint8), np.array([[3], [0], [9], [1], [1], [5]])):
        X_p, Y_p = preprocess_data(X, Y)
        assert X_p.dtype == np.float32 and X_p.shape == X.shape and np.array_equal(X_p, X)
        assert Y_p.shape == (6, 10) and np.array_equal(Y_p.argmax(axis=1), Y.reshape(-1)) and Y_p.sum() == 6
    with pytest.raises(GearfeatError, match=r"shape \(m, 32, 32, 3\), got \(6, 32, 32\)"):
        preprocess_data(X[..., 0], Y)
    with pytest.raises(GearfeatError, match="Y must hold 6 integer labels"):
        preprocess_data(X, np.zeros(5, np.int64))


def test_importing_the_script_builds_trains_and_writes_nothing(tmp_path):
    code = (
        "import json, os, sys, keras\n"
        "built = []\n"
        "init = keras.layers.Layer.__init__\n"
        "def counting_init(self, *a, **k):\n"
        "    built.append(type(self).__name__)\n"
        "    init(self, *a, **k)\n"
        "keras.layers.Layer.__init__ = counting_init\n"
        "before = sorted(os.listdir(sys.argv[1]))\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "module = __import__('0-transfer')\n"
        "after = sorted(os.listdir(sys.argv[1]))\n"
        "print(json.dumps({'built': built, 'cwd': os.listdir('.'), 'same': before == after,\n"
        "                  'api': [callable(module.preprocess_data), callable(module.main)]}))\n")
    done = subprocess.run([sys.executable, "-c", code, str(SCRIPTS)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=QUIET)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"built": [], "cwd": [], "same": True, "api": [True, True]}


def test_script_end_to_end_then_graders_exact_check_in_a_fresh_process(trained, cifar):
    cwd, done = trained
    assert sorted(p.name for p in cwd.iterdir()) == ["cache", "cifar10.h5", "plots"]
    assert sorted(p.name for p in (cwd / "plots").iterdir()) == ["confusion.png", "loss.png"]
    info = model_info(cwd / "cifar10.h5")
    assert info["class_names"] == list(CLASS_NAMES) and info["backbone_size"] == 48
    reported = float(re.search(r"^test accuracy ([0-9.]+) on the 100 CIFAR-10 test", done.stdout, re.M)[1])
    assert abs(reported - info["test_accuracy"]) < 1e-4
    grader = (
        "import json, sys\n"
        "import numpy as np\n"
        "import tensorflow.keras as K\n"
        "preprocess_data = __import__('0-transfer').preprocess_data\n"
        "model = K.models.load_model(sys.argv[1])\n"  # no custom_objects, default safe_mode
        "from gearfeat.workflows.cifar import load_cifar10\n"
        "_, (X, Y) = load_cifar10(sys.argv[2])\n"
        "X_p, Y_p = preprocess_data(X, Y)\n"
        "loss, accuracy = model.evaluate(X_p, Y_p, batch_size=128, verbose=0)\n"
        "p = model.predict(X_p, verbose=0)\n"
        "print(json.dumps({'loss': loss, 'accuracy': accuracy, 'first': type(model.layers[1]).__name__,\n"
        "    'upscaled': list(model.layers[1].output.shape[1:3]),\n"
        "    'optimizer': type(model.optimizer).__name__,\n"
        "    'ce': float(-np.mean(np.log(p[np.arange(len(Y)), Y[:, 0]]))),\n"
        "    'l2': float(sum(np.asarray(penalty) for penalty in model.losses)),\n"
        "    'argmax_accuracy': float(np.mean(p.argmax(1) == Y[:, 0]))}))\n")
    check = subprocess.run([sys.executable, "-c", grader, str(cwd / "cifar10.h5"), str(cifar[1])],
                           cwd=SCRIPTS, capture_output=True, text=True, timeout=300, env=QUIET)
    assert check.returncode == 0, check.stderr[-3000:]
    result = json.loads(check.stdout.strip().splitlines()[-1])
    assert result["first"] == "Lambda" and result["upscaled"] == [48, 48] and result["optimizer"] == "Adam"
    # compiled with categorical cross-entropy on one-hot Y_p (plus the head's L2 penalty, as in training)
    assert result["l2"] > 0 and abs(result["loss"] - (result["ce"] + result["l2"])) < 1e-4
    assert result["accuracy"] == pytest.approx(result["argmax_accuracy"], abs=1e-6)
    assert abs(result["accuracy"] - reported) <= 1 / N_TEST + 1e-4  # the script's figure is the grader's
    assert result["accuracy"] > 0.3  # each class has its own colour: far above chance (0.1)


def test_rerun_reuses_every_cached_feature_and_trains_only_the_head(trained, cifar, tmp_path, monkeypatch):
    cwd, _ = trained

    def backbone_must_not_run(self, images):
        raise AssertionError("the backbone ran again on images already in the cache")

    monkeypatch.setattr(extractor_module.FeatureExtractor, "features_of", backbone_must_not_run)
    config = tiny_config(backbone="resnet50", alpha=None, backbone_size=48)  # the script run's settings
    run = dict(data=cifar[0], cache_dir=cwd / "cache", config=config, head=DenseHead(hidden=(32,), epochs=1),
               progress=False)
    with monkeypatch.context() as strict:  # a saved file that fails its reload check is never left behind
        strict.setattr(cifar_module, "RELOAD_TOLERANCE", -1.0)
        with pytest.raises(GearfeatError, match=r"again.h5 not written: the saved model, reloaded, differs"):
            train_cifar10(tmp_path / "again.h5", **run)
    assert list(tmp_path.iterdir()) == []
    result = train_cifar10(tmp_path / "again.h5", **run)
    assert [p.name for p in tmp_path.iterdir()] == ["again.h5"]
    assert result.metrics["n_train"] + result.metrics["n_val"] == 5 * PER_BATCH
    assert result.metrics["n_val"] == 5 * PER_BATCH // 10 and result.metrics["n_test"] == N_TEST
    assert result.metrics["saved_vs_head_max_abs_diff"] < STITCH_TOLERANCE  # CPU: exact (0)


def test_bad_data_path_and_bad_options_are_one_line(cifar, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = _import_script().main
    assert main(["--data", str(tmp_path / "missing.tar.gz"), *TINY_ARGS]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("0-transfer.py: error: CIFAR-10 data not found") and "\n" not in err
    assert not (tmp_path / "cifar10.h5").exists()
    assert main(["--data", str(tmp_path), "--backbone", "resnet5"]) == 1
    assert "unknown backbone 'resnet5'" in capsys.readouterr().err
    assert main(["--data", str(cifar[0]), *TINY_ARGS, "--val-fraction", "1.5"]) == 1
    assert "error: --val-fraction must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert main(["--data", str(cifar[0]), *TINY_ARGS, "--val-fraction", "0.01"]) == 1  # 2 images, 10 classes
    err = capsys.readouterr().err.strip()
    assert "cannot hold out --val-fraction=0.01 of 200 training images stratified by class" in err
    assert "\n" not in err and list(tmp_path.iterdir()) == []


def test_a_corrupt_keras_download_says_what_to_do(monkeypatch):
    import keras

    def corrupt():  # what keras.utils.get_file raises when the archive fails its sha256
        raise ValueError("Incomplete or corrupted file detected. The sha256 file hash does not match the "
                         "provided value of 6d958be0.")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", corrupt)
    with pytest.raises(GearfeatError, match=r"download is corrupt; delete ~/.keras/datasets/cifar-10.*, or set data "
                                            r"to .*\(Incomplete "):
        load_cifar10()


@pytest.mark.parametrize("failure, why", [
    (PermissionError(13, "Permission denied", "/home/u/.keras/datasets"),
     "PermissionError: [Errno 13] Permission denied: '/home/u/.keras/datasets'"),
    (pickle.UnpicklingError("pickle data was truncated"), "UnpicklingError: pickle data was truncated"),
], ids=["unwritable-cache", "truncated-extraction"])
def test_any_other_keras_download_failure_is_one_line_saying_what_to_do(monkeypatch, tmp_path, capsys, failure,
                                                                        why):
    import keras

    def failing():
        raise failure

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", failing)
    monkeypatch.chdir(tmp_path)
    assert _import_script().main(TINY_ARGS) == 1
    assert capsys.readouterr().err == (
        "0-transfer.py: error: cannot get CIFAR-10 through keras.datasets; check that ~/.keras/datasets "
        "(or $KERAS_HOME/datasets) is writable with ~350 MB free, delete its cifar-10-batches-py* and run "
        "again, or set --data to the path of the official cifar-10-python.tar.gz or its extracted "
        f"cifar-10-batches-py folder ({why})\n")


def test_keras_download_messages_go_to_stderr_not_stdout(monkeypatch, capsys):
    import keras
    from keras.src.utils import io_utils  # what keras.utils.get_file prints with
    arrays = ((np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 1), np.uint8)),) * 2

    def downloading():
        io_utils.print_msg("Downloading data from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
        return arrays

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", downloading)
    assert load_cifar10() is arrays
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("Downloading data from https://www.cs.toronto.edu/")


def test_sigterm_stops_the_script_like_ctrl_c_with_one_line_and_exit_130(tmp_path):
    code = (  # the script run as __main__, stalled in loading CIFAR-10 until the signal comes
        "import runpy, sys, time\n"
        "import gearfeat.workflows.cifar\n"
        "def stalled(data):\n"
        "    print('loading', flush=True)\n"
        "    time.sleep(120)\n"
        "gearfeat.workflows.cifar.load_cifar10 = stalled\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(SCRIPT), *TINY_ARGS], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=QUIET)
    try:
        assert process.stdout.readline() == "loading\n"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == ("0-transfer.py: interrupted; the features computed so far stay in "
                                            "the cache, run again to resume")
    assert "Traceback" not in err


def test_offline_without_data_says_what_to_pass(tmp_path):
    closed = "http://127.0.0.1:9"  # a proxy nobody listens on: offline, whatever this machine's network
    env = {**QUIET, "KERAS_HOME": str(tmp_path / "keras"), "no_proxy": "", "NO_PROXY": "",
           "https_proxy": closed, "HTTPS_PROXY": closed}
    done = _run_script(TINY_ARGS, tmp_path, env)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("0-transfer.py: error: cannot download CIFAR-10 through keras.datasets (offline?)")
    assert "set --data to the path of the official cifar-10-python.tar.gz or its extracted " in last
    assert "Traceback" not in done.stderr and not (tmp_path / "cifar10.h5").exists()
