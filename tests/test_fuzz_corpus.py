"""A property-based test of the dataset scan on random folder trees (Hypothesis).

Each example builds a tree of valid and broken images, empty files, hidden and system files, other
extensions, odd names, file links (in the class, to another class, to outside, dangling) and folder
links (in the class, to the root, to another class, to outside), and checks the scan's promises:
no error but a GearfeatError; every file is used under its own class folder's label or is listed in
``skipped`` (itself, or a folder above it) with a reason; no class with a usable image is dropped;
the same tree always gives the same dataset. Decoding is not part of the scan (broken images are
records here); the hostile-corpus extract test covers it.

CI runs the "ci" profile (300 examples, about 10 s). A longer run:
``GEARFEAT_FUZZ=long pytest tests/test_fuzz_corpus.py`` (5000 examples, no deadline).
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gearfeat._internal.errors import GearfeatError
from gearfeat.data.dataset import scan_dataset

settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = ["image", "image", "image", "broken", "empty", "hidden", "system", "text", "link_same", "link_other",
         "link_outside", "link_dangling", "dir_inside", "dir_root", "dir_other", "dir_outside", "subfolder"]
NAME = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=8)
TREE = st.lists(st.tuples(NAME, st.lists(st.tuples(st.sampled_from(KINDS), NAME), max_size=6)), min_size=1,
                max_size=4)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (seed % 256, seed // 256 % 256, 7)).save(buffer, "PNG")
    return buffer.getvalue()


def build(base: Path, tree) -> tuple[Path, set[str]]:
    """Write the tree under ``base / "data"``; returns the root and the classes that hold a usable image
    (a regular, valid image of bytes of its own)."""
    root, outside = base / "data", base / "outside"
    outside.mkdir()
    (outside / "out.png").write_bytes(png(65000))
    root.mkdir()
    seed, usable, classes = 0, set(), []
    for c, (name, _) in enumerate(tree):
        folder = root / f"c{c} {name}".replace(".", "_")  # never hidden, never a duplicate
        folder.mkdir()
        classes.append(folder)
    for folder, (_, files) in zip(classes, tree):
        for i, (kind, name) in enumerate(files):
            stem = f"{i}{name}".replace(".", "_")
            path = folder / f"{stem}.png"
            seed += 1
            if kind == "image":
                path.write_bytes(png(seed))
                usable.add(folder.name)
            elif kind == "broken":
                path.write_bytes(png(seed)[:20])
            elif kind == "empty":
                path.write_bytes(b"")
            elif kind == "hidden":
                (folder / f".{stem}.png").write_bytes(png(seed))
            elif kind == "system":
                (folder / "Thumbs.db").write_bytes(b"\xd0\xcf")
            elif kind == "text":
                (folder / f"{stem}.txt").write_text("notes")
            elif kind == "link_same":
                target = folder / f"{stem}-target.png"
                target.write_bytes(png(seed))
                path.symlink_to(target.name)
                usable.add(folder.name)
            elif kind == "link_other":
                path.symlink_to(classes[(classes.index(folder) + 1) % len(classes)])
                path = path.with_name(f"{stem}-f.png")
                other = classes[(classes.index(folder) + 1) % len(classes)] / f"{stem}-target.png"
                other.write_bytes(png(seed + 30000))
                usable.add(other.parent.name)
                path.symlink_to(other)
            elif kind == "link_outside":
                path.symlink_to(outside / "out.png")
            elif kind == "link_dangling":
                path.symlink_to(base / "nowhere.png")
            elif kind == "dir_inside":
                (folder / f"{stem}-sub").mkdir()
                (folder / f"{stem}-sub" / "in.png").write_bytes(png(seed))
                (folder / f"{stem}-link").symlink_to(f"{stem}-sub")
                usable.add(folder.name)
            elif kind == "dir_root":
                (folder / stem).symlink_to(root)
            elif kind == "dir_other":
                (folder / stem).symlink_to(classes[(classes.index(folder) + 1) % len(classes)])
            elif kind == "dir_outside":
                (folder / stem).symlink_to(outside)
            elif kind == "subfolder":
                (folder / stem).mkdir()
                (folder / stem / "deep.png").write_bytes(png(seed))
                usable.add(folder.name)
    (root / "stray.png").write_bytes(png(64000))
    return root, usable


def scan(root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes with no usable image warn
        try:
            return scan_dataset(root, min_classes=1)
        except GearfeatError as exc:
            return exc


@settings(settings.get_profile(os.environ.get("GEARFEAT_FUZZ", "ci")))
@given(TREE)
def test_random_trees_keep_the_scan_promises(tree):
    with tempfile.TemporaryDirectory() as tmp:
        root, usable = build(Path(tmp), tree)
        dataset = scan(root)
        assert not isinstance(dataset, GearfeatError) or not usable, dataset
        if isinstance(dataset, GearfeatError):
            return
        assert usable <= set(dataset.class_names)  # no class with a usable image dropped
        listed = {Path(item.path): item.reason for item in dataset.skipped}
        assert all(listed.values())  # every skip has a reason
        used = {}
        for record in dataset.records:
            relative = record.path.relative_to(root)
            assert dataset.class_names[record.label] == relative.parts[0]  # its own folder's label
            used[record.path] = record
        for folder, dirs, files in os.walk(root):  # every entry, links not followed
            for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
                path = Path(folder) / name
                followed = path.is_dir() and any(path in record.parents for record in used)  # a folder link
                assert path in used or followed or any(p in listed for p in (path, *path.parents)), path
        again = scan(root)
        assert (again.paths, list(again.labels), again.skipped, again.class_names) == \
            (dataset.paths, list(dataset.labels), dataset.skipped, dataset.class_names)
