"""Errors that gearfeat reports to the user as one clear line (no traceback)."""
from __future__ import annotations

import numbers
import re
from collections.abc import Mapping


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name: for one-line error reports."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class GearfeatError(Exception):
    """A problem the user can fix; its message is one line: what, where, what to do.

    ``parameter`` names the argument (or arguments) at fault by their Python names, as the message first
    mentions each (``"val_fraction must be ..."``); :meth:`renamed` spells them another way, as the command line
    does with its flags (``"--val-fraction must be ..."``).
    """

    def __init__(self, *args: object, parameter: str | tuple[str, ...] = ()):
        super().__init__(*args)
        self.parameters: tuple[str, ...] = (parameter,) if isinstance(parameter, str) else tuple(parameter)

    def renamed(self, names: Mapping[str, str]) -> str:
        """The message with the first mention (a whole word, not part of a path such as ``runs/out/model.h5``)
        of each of its parameters that ``names`` has replaced by ``names[parameter]``; the others as they are."""
        message = str(self)
        for parameter in self.parameters:
            found = re.search(rf"(?<![\w./-]){re.escape(parameter)}(?![\w-]|[./]\w)", message)
            if found and parameter in names:
                message = message[:found.start()] + names[parameter] + message[found.end():]
        return message


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


def check_seed(seed: object, name: str = "seed") -> None:
    """Raise an InvalidArgumentError naming the parameter ``name`` unless ``seed`` is an integer in [0, 2**32 - 1]."""
    if not is_int(seed, 0) or seed > MAX_SEED:
        raise InvalidArgumentError(f"{name} must be an integer from 0 to {MAX_SEED}, got {seed!r}", parameter=name)


class ImageError(GearfeatError):
    """An image file that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsUnavailableError(GearfeatError):
    """Pretrained weights could not be had (the ImageNet download failed, e.g. offline)."""
