"""What gearfeat says while it works: the standard ``logging`` logger ``gearfeat``, silent in the library unless
configured, printed to stderr as bare lines by the command."""
import logging
import re
import subprocess
import sys

from gearfeat.cli import main
from gearfeat.features.extractor import extract_dataset

from conftest import tiny_config

TINY = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
        "--backbone-size", "32", "--no-progress"]


def test_a_command_prints_the_messages_to_stderr_as_bare_lines_once(shapes_copy, tmp_path, capsys):
    broken = shapes_copy / "circle" / "broken.png"
    broken.write_bytes(b"not a png")
    package = logging.getLogger("gearfeat")
    before = package.level, package.propagate, list(package.handlers)
    seen: list[logging.LogRecord] = []
    root = logging.Handler()
    root.emit = seen.append  # another library's handler on the root logger: it must not print a line twice
    logging.getLogger().addHandler(root)
    try:
        code = main(["extract", str(shapes_copy), "--cache-dir", str(tmp_path / "cache"), *TINY])
    finally:
        logging.getLogger().removeHandler(root)
    out, err = capsys.readouterr()
    cache = out.strip()
    lines = err.splitlines()
    assert code == 3 and len(lines) == 2, err
    assert lines[0].startswith(f"skipped {broken}: ")
    assert re.fullmatch(rf"cache {re.escape(cache)}: 60 images computed, 0 reused, 1 skipped \(\d+\.\d s\)", lines[1])
    assert not [r for r in seen if r.name.startswith("gearfeat")]
    assert (package.level, package.propagate, package.handlers) == before  # main leaves logging as it found it


def test_the_library_prints_nothing_and_logs_each_module_on_its_own_logger(shapes_copy, tmp_path, capsys, caplog,
                                                                           logged):
    (shapes_copy / "circle" / "broken.png").write_bytes(b"not a png")
    extraction = extract_dataset(shapes_copy, tiny_config(), cache_dir=tmp_path, progress=False)
    assert capsys.readouterr() == ("", "")  # nothing printed: the messages are the logger's
    ours = [r for r in caplog.records if r.name.startswith("gearfeat")]
    assert [(r.name, r.levelname) for r in ours] == [("gearfeat.features.extractor", "WARNING"),
                                                     ("gearfeat.features.extractor", "INFO")]
    assert logged()[0].startswith(f"skipped {shapes_copy / 'circle' / 'broken.png'}: ")
    assert logged()[1].startswith(f"cache {extraction.cache_path}: 60 images computed, 0 reused, 1 skipped (")


def test_a_library_user_who_configures_nothing_sees_nothing_and_basic_config_shows_the_messages(tmp_path):
    """Outside pytest (whose capture handler sits on the root logger): no handler anywhere, so a warning would
    reach ``logging.lastResort`` and stderr but for the package's NullHandler."""
    script = ("import logging, sys, gearfeat\n"
              "from gearfeat.outputs.runs import RunDir\n"
              "if sys.argv[2] == 'configured':\n"
              "    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')\n"
              "RunDir(sys.argv[1], create=True).write_json('run.json', {})\n"
              "logging.getLogger('gearfeat.features.cache').warning('warning: a test warning')\n")
    run = tmp_path / "run"
    first = subprocess.run([sys.executable, "-c", script, str(run), "quiet"], capture_output=True, text=True)
    assert (first.returncode, first.stdout, first.stderr) == (0, "", ""), first.stderr
    second = subprocess.run([sys.executable, "-c", script, str(run), "configured"], capture_output=True, text=True)
    assert second.returncode == 0 and second.stdout == "", second.stderr
    assert second.stderr.splitlines() == [f"INFO gearfeat.outputs.runs: {run}: replaced the earlier gearfeat run in it",
                                          "WARNING gearfeat.features.cache: warning: a test warning"]
