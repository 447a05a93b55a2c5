"""Errors that gearfeat reports to the user as one clear line (no traceback)."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name: for one-line error reports."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class GearfeatError(Exception):
    """A problem the user can fix; its message is one line: what, where, what to do."""


class ImageError(GearfeatError):
    """An image file that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsUnavailableError(GearfeatError):
    """Pretrained weights could not be had (the ImageNet download failed, e.g. offline)."""
