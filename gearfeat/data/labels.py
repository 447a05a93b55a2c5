"""A dataset listed by a CSV label file instead of class folders.

The file has a header; one column names each image (relative to the data folder, sub-folders allowed), another
its class. :func:`read_label_file` turns it into the same listing the folder scan makes, ``(class, path)`` pairs,
so everything after it (hashing, conflicting bytes, the split, the cache) is the folder scan's. Rows that cannot
be used are returned with their reason and never raise; only a file that is not a usable CSV does.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from .._internal.errors import GearfeatError
from .images import IMAGE_EXTENSIONS

__all__ = ["LabelFile", "read_label_file"]

_SNIFF_BYTES = 64 * 1024  # read to tell a text CSV from a binary file


@dataclass(frozen=True)
class LabelFile:
    """A CSV label file and the columns (by header name) that hold the image path and the class;
    None: the first column for the path, the second for the class."""

    path: str | os.PathLike
    path_column: str | None = None
    label_column: str | None = None

    @classmethod
    def of(cls, labels: str | os.PathLike | LabelFile) -> LabelFile:
        """``labels`` as a LabelFile (a path gets the default columns)."""
        if isinstance(labels, LabelFile):
            return labels
        if not isinstance(labels, (str, os.PathLike)):
            raise GearfeatError(f"labels must be the path of a CSV file or a LabelFile, got {labels!r:.60}")
        return cls(labels)

    def to_dict(self) -> dict[str, str | None]:
        """For run.json: the file (absolute) and its columns."""
        return {"path": str(Path(self.path).resolve()), "path_column": self.path_column,
                "label_column": self.label_column}


def read_label_file(labels: LabelFile, root: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """The usable rows of ``labels`` as ``(class, root / file)`` pairs in file order, and the rows left out as
    ``(path, reason)``.

    A row is left out when its file is empty, absolute, outside ``root`` (``..`` or a link leading out),
    missing or not a file with an image extension, or its class is empty. A file listed on several rows with
    one class is kept once (the repeats are listed with their reason); with different classes, all its rows
    are left out as conflicting.

    Raises:
        GearfeatError: the file cannot be read, is not a text CSV, has no header, or lacks a named column.
    """
    header, rows = _read_rows(Path(labels.path))
    name = Path(labels.path).name
    path_at = _column(labels, header, labels.path_column, 0, "path_column")
    label_at = _column(labels, header, labels.label_column, 1, "label_column")
    if _looks_like_image(header[path_at], root):
        raise GearfeatError(
            f"{labels.path} has no header: its first row ({', '.join(header[:3])}) names an image; add a first "
            "row with the column names, e.g. 'path,label'")
    real_root = os.path.realpath(root)
    skipped: list[tuple[str, str]] = []
    first: dict[str, tuple[int, str]] = {}  # normalized file -> (row, class) of its first usable row
    rows_of: dict[str, list[int]] = {}
    for line, cells in rows:
        where = f"{name} row {line}"
        if len(cells) <= max(path_at, label_at):
            skipped.append((f"{labels.path}:{line}", f"{where}: {len(cells)} cells, the columns need "
                                                      f"{max(path_at, label_at) + 1}"))
            continue
        file, label = cells[path_at].strip(), cells[label_at].strip()
        reason = _file_problem(file, root, real_root)
        if reason is None and not label:
            reason = "empty label"
        shown = str(root / file) if file else f"{labels.path}:{line}"
        if reason is not None:
            skipped.append((shown, f"{where}: {reason}"))
            continue
        key = os.path.normpath(file)
        rows_of.setdefault(key, []).append(line)
        if key not in first:
            first[key] = (line, label)
        elif first[key][1] == label:
            skipped.append((shown, f"{where}: repeats row {first[key][0]} with the same label; counted once"))
        else:
            first[key] = (first[key][0], None)  # conflicting: every row of the file is left out below
    listed = []
    for key, (line, label) in first.items():
        if label is None:
            lines = ", ".join(map(str, rows_of[key]))
            skipped.append((str(root / key), f"{name} rows {lines}: the file is listed with different labels "
                                             "(conflicting); left out"))
        else:
            listed.append((label, root / key))
    return listed, skipped


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the ``(line number, cells)`` of the non-blank rows of the CSV at ``path``."""
    try:
        with open(path, "rb") as f:
            start = f.read(_SNIFF_BYTES)
        if start.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise GearfeatError(f"{path} is UTF-16 text; save it as UTF-8 CSV (e.g. 'CSV UTF-8' in a spreadsheet)")
        if b"\0" in start:
            raise GearfeatError(f"{path} is a binary file, not a CSV; pass a text file with a header row and "
                                "one row per image")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, cells) for cells in reader if any(cell.strip() for cell in cells)]
    except FileNotFoundError:
        raise GearfeatError(f"label file not found: {path}") from None
    except IsADirectoryError:
        raise GearfeatError(f"labels takes a CSV file, not a folder: {path}", parameter="labels") from None
    except OSError as exc:
        raise GearfeatError(f"cannot read label file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise GearfeatError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 "
                            "CSV") from None
    except csv.Error as exc:
        raise GearfeatError(f"{path} is not a readable CSV: {exc}") from None
    if not rows:
        raise GearfeatError(f"{path} is empty; it needs a header row and one row per image")
    header = [cell.strip() for cell in rows[0][1]]
    return header, rows[1:]


def _column(labels: LabelFile, header: list[str], name: str | None, default: int, parameter: str) -> int:
    """The index of column ``name`` (the value of ``parameter``) in ``header`` (``default`` when None)."""
    if name is None:
        if len(header) <= default:
            raise GearfeatError(f"{labels.path} has {len(header)} column{'' if len(header) == 1 else 's'} "
                                f"({', '.join(header)}); it needs one for the image file and one for its class "
                                "(is it comma-separated?)")
        return default
    if name not in header:
        raise GearfeatError(f"{parameter} {name!r} is not a column of {labels.path}; its columns are "
                            f"{', '.join(map(repr, header))}", parameter=parameter)
    return header.index(name)


def _looks_like_image(cell: str, root: Path) -> bool:
    return Path(cell).suffix.lower() in IMAGE_EXTENSIONS or (bool(cell) and (root / cell).is_file())


def _file_problem(file: str, root: Path, real_root: str) -> str | None:
    """Why ``file`` (as written in the label file) cannot be an image of ``root``, or None."""
    if not file:
        return "empty file name"
    if os.path.isabs(file) or Path(file).drive:
        return "absolute path; name the file relative to the data folder"
    if ".." in Path(file).parts:
        return "path leads out of the data folder (..)"
    path = root / file
    real = os.path.realpath(path)
    if os.path.commonpath([real, real_root]) != real_root:
        return f"a link leading out of the data folder (to {real})"
    if not os.path.lexists(path):
        return "file not found"
    if os.path.isdir(path):
        return "a folder, not an image file"
    return None
