"""Errors that gearfeat reports to the user as one clear line (no traceback)."""
import numbers


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name: for one-line error reports."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class GearfeatError(Exception):
    """A problem the user can fix; its message is one line: what, where, what to do."""


class InvalidArgumentError(GearfeatError, ValueError, TypeError):
    """An argument of the wrong value or type. Also a ``ValueError`` and a ``TypeError``, as NumPy and
    scikit-learn code expects of bad input (scikit-learn's own ``InvalidParameterError`` is both)."""


MAX_SEED = 2**32 - 1  # Keras and NumPy seed range


def is_int(value: object, least: int) -> bool:
    """True for an integer (Python's or numpy's, not a bool) of at least ``least``."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= least


def is_real(value: object) -> bool:
    """True for a real number (int, float or numpy's, not a bool); NaN included, ranges are the caller's."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def check_seed(seed: object) -> None:
    """Raise an InvalidArgumentError naming ``seed`` unless it is an integer in [0, 2**32 - 1]."""
    if not is_int(seed, 0) or seed > MAX_SEED:
        raise InvalidArgumentError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")


class ImageError(GearfeatError):
    """An image file that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsUnavailableError(GearfeatError):
    """Pretrained weights could not be had (the ImageNet download failed, e.g. offline)."""
