import pytest

from gearfeat.errors import first_line


@pytest.mark.parametrize("exc, expected", [
    (OSError("unable to open file\ndetails follow"), "unable to open file"),
    (ValueError("  \n  padded message  \nmore"), "padded message"),
    (KeyError(), "KeyError"),  # an empty message: the type name, never an IndexError
    (RuntimeError("   "), "RuntimeError"),
])
def test_first_line_is_one_readable_line(exc, expected):
    assert first_line(exc) == expected
