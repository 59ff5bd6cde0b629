"""Multi-label data as one text file per tag: `<tags folder>/<tag>.txt` lists the images that carry the tag.

The layout of study 004's data (20 000 photos, 14 tags): an image folder and an annotations folder with
`baby.txt`, `bird.txt`, ... An image listed in no file has no tag — a true negative for every class, not a
missing label. A line names an image by its path relative to the image folder (`im123.jpg`), by its file
name without extension (`im123`), or by its number alone (`123`, the digits that end the name), whichever
the files use. A line that names no image is an error naming the file and the line, or with
`data.skip_bad` a note in the record.

No library reads this layout (torchvision's and Hugging Face's multi-label loaders want one table), hence
this module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..config import DataSpec
from ..core.errors import TransferlabError
from .sources import IMAGE_EXTENSIONS, FileSource

TRAILING_NUMBER = re.compile(r"(\d+)$")


def read_tag_files(spec: DataSpec) -> FileSource:
    """The images under `spec.source` with the label matrix `spec.tag_files` gives them (classes: the tag
    files' names, sorted, or `data.classes` in its order)."""
    root, tags = Path(os.path.abspath(spec.source)), Path(spec.tag_files)
    if not root.is_dir():
        raise TransferlabError(f"data.source: {root} is not a folder of images; with data.tag_files the source "
                               "is the image folder")
    files = sorted(tags.glob("*.txt")) if tags.is_dir() else []
    if not files:
        raise TransferlabError(f"data.tag_files: {tags} holds no <tag>.txt files; give the folder with one text "
                               "file per tag")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise TransferlabError(f"data.source: no images under {root}; check the path")
    classes = _classes(files, spec.classes, tags)
    find, notes = _index(paths, root), []
    labels = np.zeros((len(paths), len(classes)), dtype=np.uint8)
    for column, name in enumerate(classes):
        file = tags / f"{name}.txt"
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            reference = line.strip()
            if not reference:
                continue
            row = find(reference)
            if row is None:
                message = f"{file}, line {number}: '{reference}' names no image under {root}"
                if not spec.skip_bad:
                    raise TransferlabError(f"{message}; fix the line, or pass --skip-bad to skip such lines")
                notes.append(f"{message} (line skipped)")
                continue
            labels[row, column] = 1
    return FileSource(root.name, root, paths, labels, classes, max_pixels=spec.max_pixels, notes=notes)


def _classes(files: list[Path], wanted: list[str] | None, tags: Path) -> list[str]:
    found = [file.stem for file in files]
    if wanted is None:
        return found
    missing = [name for name in wanted if name not in found]
    if missing:
        raise TransferlabError(f"data.classes: no {missing[0]}.txt in {tags} (found: {', '.join(found)}); name "
                               "the tags the files have")
    return list(wanted)


def _index(paths: list[Path], root: Path):
    """reference → row: by relative path, by file name without extension, or by the number ending that name
    (the last two only where they are unambiguous)."""
    by_path = {p.relative_to(root).as_posix(): i for i, p in enumerate(paths)}
    by_stem: dict[str, list[int]] = {}
    by_number: dict[int, list[int]] = {}
    for i, p in enumerate(paths):
        by_stem.setdefault(p.stem, []).append(i)
        match = TRAILING_NUMBER.search(p.stem)
        if match:
            by_number.setdefault(int(match.group(1)), []).append(i)

    def find(reference: str) -> int | None:
        if reference in by_path:
            return by_path[reference]
        rows = by_stem.get(reference) or (by_number.get(int(reference)) if reference.isdigit() else None)
        return rows[0] if rows and len(rows) == 1 else None

    return find
