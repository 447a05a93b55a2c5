"""The command line's one source of truth: defaults read from the library, library errors that name the Python
parameter and CLI errors that name the flag, commands declared once in the registry, help text unchanged."""
import dataclasses
from pathlib import Path

import pytest

from gearfeat import cli
from gearfeat._internal.errors import GearfeatError
from gearfeat._internal.system import memory_budget
from conftest import tiny_config
from gearfeat.cli import COMMANDS, build_parser, main
from gearfeat.data.dataset import SplitConfig
from gearfeat.features.extractor import ExtractorConfig
from gearfeat.models.heads import DenseHead

BACKBONE_ARGS = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--image-size", "32", "--backbone-size", "32"]
TINY_ARGS = [*BACKBONE_ARGS, "--weights", "none", "--no-progress"]
"""The flags of :func:`conftest.tiny_config`."""
HELP = Path(__file__).parent / "data" / "help"
"""``gearfeat [COMMAND] --help`` as it was before the registry (80 columns), one file per command."""


def test_a_library_error_names_the_python_parameter():
    with pytest.raises(GearfeatError, match=r"^val_fraction must be a number in \[0, 1\), got 1.5$") as info:
        SplitConfig(val_fraction=1.5)
    assert info.value.parameters == ("val_fraction",)
    with pytest.raises(GearfeatError, match="^memory_budget must be a size above 0"):
        memory_budget("lots")
    with pytest.raises(GearfeatError, match="^image_size must be an integer from 8 to 4096, got 7$"):
        ExtractorConfig(image_size=7, weights=None)


@pytest.mark.parametrize("option, message", [
    (["--val-fraction", "1.5"], "--val-fraction must be a number in [0, 1), got 1.5"),
    (["--val-fraction", "0.6", "--test-fraction", "0.5"],
     "--val-fraction + --test-fraction must be below 1 to leave images for training, got 0.6 + 0.5"),
    (["--memory-budget", "lots"], "--memory-budget must be a size above 0 such as 2GB, 500MB or 1.5GiB, got 'lots'"),
    (["--image-size", "7"], "--image-size must be an integer from 8 to 4096, got 7"),
    (["--dropout", "1.5"], "invalid head parameter --dropout=1.5"),
])
def test_the_same_error_from_the_cli_names_the_flag(tmp_path, capsys, option, message):
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *option]) == 1
    assert capsys.readouterr().err == f"gearfeat: error: {message}\n"
    assert not (tmp_path / "run").exists()  # refused before any work


def _flags(*argv: str) -> dict[str, str]:
    """What :func:`main` renames a library error by, for the command line ``argv``."""
    return build_parser().parse_args(list(argv)).flags


def test_cache_dir_is_named_by_the_api_and_by_the_flag(shapes_dir, tmp_path, capsys):
    from gearfeat.features.extractor import extract_dataset
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(GearfeatError, match=f"^cannot use cache folder {taken}: .*; pass a writable cache_dir$"):
        extract_dataset(shapes_dir, tiny_config(), cache_dir=taken, progress=False)
    assert main(["extract", str(shapes_dir), *TINY_ARGS, "--cache-dir", str(taken)]) == 1
    assert capsys.readouterr().err.splitlines()[-1].endswith("; pass a writable --cache-dir")


def test_out_is_named_by_the_api_and_by_the_flag(shapes_dir, tmp_path, capsys):
    from gearfeat.workflows.train import train
    taken = tmp_path / "out"  # a path component that is the parameter's name stays a path
    taken.write_text("a file")
    message = f"out {taken}: cannot create the run folder, a file of that name is in the way; pass another folder"
    with pytest.raises(GearfeatError) as info:
        train(shapes_dir, taken, config=tiny_config())
    assert str(info.value) == message
    assert main(["train", str(shapes_dir), *TINY_ARGS, "--out", str(taken)]) == 1
    assert capsys.readouterr().err == f"gearfeat: error: --{message}\n"


def test_weights_and_alpha_are_named_by_the_api_and_by_the_flag(monkeypatch, capsys, shapes_dir, tmp_path):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format  # the layout of Keras Applications' own files
    from gearfeat.features.backbones import create_backbone

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid/weights.h5")

    monkeypatch.setattr("keras.src.applications.mobilenet_v2.file_utils.get_file", offline)
    with pytest.raises(GearfeatError, match=r"\(offline\?\); set weights to the path of a local weights .h5 file, "
                                            r"or to 'none' for random initialization$"):
        create_backbone("mobilenet_v2", weights="imagenet", input_size=32, alpha=0.35)
    assert main(["extract", str(shapes_dir), *BACKBONE_ARGS, "--weights", "imagenet", "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")]) == 1
    assert "(offline?); set --weights to the path of a local" in capsys.readouterr().err

    weights = tmp_path / "mobilenet_2_5_32_tf_no_top.h5"  # MobileNet's own file name for alpha 0.25
    with h5py.File(weights, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, create_backbone("mobilenet", weights=None, input_size=32,
                                                                       alpha=0.25))
    with pytest.raises(GearfeatError, match=r": pass alpha=0.25 \(the file's name says alpha 0.25, size 32\)") as info:
        create_backbone("mobilenet", weights=weights, input_size=32, alpha=0.5)
    assert info.value.parameters == ("alpha",) and "--" not in str(info.value)
    renamed = info.value.renamed(_flags("train", "data", "--out", "run"))
    assert ": pass --alpha=0.25 (the file's name says alpha 0.25, size 32); with input 32 and alpha 0.5:" in renamed


def test_safe_mode_is_named_by_the_api_and_unsafe_by_the_flag(tmp_path, capsys):
    import keras
    import gearfeat
    path = tmp_path / "lambda.h5"
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(path)
    with pytest.raises(GearfeatError, match="; if you trust this file, pass safe_mode=False$"):
        gearfeat.load_model(path)
    assert main(["predict", str(path), "x.jpg"]) == 1
    assert capsys.readouterr().err.endswith("; if you trust this file, pass --unsafe\n")


def test_labels_is_named_by_the_api_and_by_the_flag(shapes_dir, tmp_path, capsys):
    from gearfeat.workflows.train import train
    folder = tmp_path / "labels"
    folder.mkdir()
    with pytest.raises(GearfeatError, match=f"^labels takes a CSV file, not a folder: {folder}$"):
        train(shapes_dir, tmp_path / "run", labels=folder, config=tiny_config(), cache_dir=tmp_path / "cache")
    assert main(["train", str(shapes_dir), *TINY_ARGS, "--labels", str(folder), "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.endswith(f"error: --labels takes a CSV file, not a folder: {folder}\n")


def test_a_flag_is_named_where_the_api_names_its_parameter_not_in_a_path():
    error = GearfeatError("out runs/out: cannot write out/model.h5 or out.md; pass another out.", parameter="out")
    assert error.renamed({"out": "--out"}) == "--out runs/out: cannot write out/model.h5 or out.md; pass another out."
    later = GearfeatError("cannot write runs/out/x or out/y: pass another out.", parameter="out")
    assert later.renamed({"out": "--out"}) == "cannot write runs/out/x or out/y: pass another --out."


def test_renaming_replaces_the_first_whole_word_mention_of_each_parameter():
    error = GearfeatError("address 'tcp://x' is not a dask scheduler address", parameter="address")
    assert error.renamed({"address": "--address"}) == "--address 'tcp://x' is not a dask scheduler address"
    assert error.renamed({}) == str(error)  # a parameter the command has no flag for stays as it is
    error = GearfeatError("batch_size is 0; --batch_size and my_batch_size are other words", parameter="batch_size")
    assert error.renamed({"batch_size": "--batch-size"}).startswith("--batch-size is 0; --batch_size and my_")
    untagged = GearfeatError("seed must be an integer")
    assert untagged.renamed({"seed": "--seed"}) == "seed must be an integer"  # only the parameters it names


def test_cli_defaults_are_the_library_defaults():
    args = build_parser().parse_args(["train", "data", "--out", "run"])
    assert cli.split_config(args) == SplitConfig()
    assert cli.extractor_config(args) == ExtractorConfig()
    assert cli.dense_head(args).get_params() == DenseHead().get_params()  # every head parameter, the seed included


def test_a_cli_default_follows_its_dataclass_field(monkeypatch):
    field = next(f for f in dataclasses.fields(SplitConfig) if f.name == "val_fraction")
    monkeypatch.setattr(field, "default", 0.25)  # read when the parser is built, not typed in cli.py
    assert build_parser().parse_args(["train", "data", "--out", "run"]).val_fraction == 0.25


def test_the_fit_defaults_of_cnn_and_finetune_are_their_configs():
    from gearfeat.workflows.finetune import DEFAULT_FIT
    from gearfeat.workflows.fitting import FitConfig
    parser = build_parser()
    cnn = cli.fit_config(parser.parse_args(["cnn", "data", "--out", "run"]))
    tuned = cli.fit_config(parser.parse_args(["finetune", "source", "--out", "run", "--unfreeze", "3"]))
    assert (cnn, tuned) == (FitConfig(), DEFAULT_FIT)


def test_train_passes_on_the_defaults_the_cli_reads_from_fit_and_save():
    from gearfeat.workflows.train import train
    from gearfeat.workflows.transfer import fit_and_save
    for name in ("baseline", "baseline_c", "memory_budget"):
        assert cli.default_of(train, name) == cli.default_of(fit_and_save, name), name


@pytest.mark.parametrize("name", ["gearfeat", *COMMANDS])
def test_help_is_unchanged(name, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as info:
        main(["--help"] if name == "gearfeat" else [name, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out == (HELP / f"{name}.txt").read_text()


def test_every_command_has_its_stored_help():
    assert sorted(path.stem for path in HELP.glob("*.txt")) == sorted(["gearfeat", *COMMANDS])


def test_a_command_is_declared_in_one_place(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", dict(COMMANDS))  # the registry as it was, after the test

    @cli.command("greet", help="say hello", options=(cli.option("--who", default="world"),),
                 parameters={"name": "--who"})
    def cmd_greet(args):
        if not args.who.isalpha():
            raise GearfeatError(f"name must be a word, got {args.who!r}", parameter="name")
        print(f"hello {args.who}")
        return cli.EXIT_OK

    assert main(["greet"]) == 0 and capsys.readouterr().out == "hello world\n"
    assert main(["greet", "--who", "42"]) == 1
    assert capsys.readouterr().err == "gearfeat: error: --who must be a word, got '42'\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "greet" in capsys.readouterr().out and list(cli.COMMANDS)[-1] == "greet"
