import os
import subprocess
import sys

import numpy as np
import pytest

from gearfeat._internal.startup import held_startup_logs
from gearfeat._internal.errors import first_line


@pytest.mark.parametrize("exc, expected", [
    (OSError("unable to open file\ndetails follow"), "unable to open file"),
    (ValueError("  \n  padded message  \nmore"), "padded message"),
    (KeyError(), "KeyError"),  # an empty message: the type name, never an IndexError
    (RuntimeError("   "), "RuntimeError"),
])
def test_first_line_is_one_readable_line(exc, expected):
    assert first_line(exc) == expected


def test_startup_logs_are_held_back_and_the_rest_passed_on(capfd):
    with held_startup_logs():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1795278221.103733    9779 port.cc:153] oneDNN custom operations are on.\n"
                    b"W0000 00:00:1795278221.104634    9779 cuda.cc:31] a real warning\n"
                    b"something else went wrong\n")
    assert capfd.readouterr().err == ("W0000 00:00:1795278221.104634    9779 cuda.cc:31] a real warning\n"
                                      "something else went wrong\n")


def test_a_command_error_is_the_only_line_on_stderr(tmp_path):
    """What a user sees in a fresh process: no TensorFlow start-up chatter ahead of the error line."""
    missing = tmp_path / "nope.h5"
    done = subprocess.run([sys.executable, "-m", "gearfeat", "predict", str(missing), "x.jpg"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"gearfeat: error: model file not found: {missing}"]


def test_seeds_cover_the_whole_range_keras_and_numpy_take():
    from gearfeat._internal.errors import MAX_SEED, InvalidArgumentError, check_seed
    for seed in (0, MAX_SEED, np.uint32(MAX_SEED)):
        check_seed(seed)
    for seed in (-1, MAX_SEED + 1, 1.0, True, "1"):
        with pytest.raises(InvalidArgumentError, match=f"seed must be an integer from 0 to {MAX_SEED}, got"):
            check_seed(seed)
