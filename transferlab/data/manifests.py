"""Image lists written by people: CSV / Parquet manifests and split files.

A manifest has a `path` column (relative to the manifest's folder) and labels in one of three forms:
`label` (one class per image), `labels` (several, joined by `data.label_separator`; an empty cell is an
image with no label), or one 0/1 column per class. The last two make the dataset multi-label, as does
`data.multi_label: true` with a `label` column.

Every row problem names the manifest, the row and what to do. With `data.skip_bad` a row whose file is
missing or whose label is unknown is skipped and reported instead; exact duplicate rows are always
dropped with a note (no image is lost); a path that leaves the dataset folder is always an error.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..config import DataSpec
from ..core.errors import TransferlabError
from .sources import IMAGE_EXTENSIONS, FileSource, FolderSource, Pools

PATH_COLUMN = "path"


def read_manifest(manifest: Path, spec: DataSpec, classes: list[str] | None = None) -> FileSource:
    """The images a manifest lists; `classes` (the training classes, or data.classes) fixes the class list."""
    rows, columns = _read_rows(manifest)
    if PATH_COLUMN not in columns:
        raise TransferlabError(f"{manifest}: no '{PATH_COLUMN}' column (found: {', '.join(columns)}); name the "
                               "image column 'path'")
    form = _label_form(manifest, columns, spec)
    root = Path(os.path.abspath(manifest.parent))
    listing = _Listing(manifest, root, spec.skip_bad)
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        listing.add(number, row, form)
    if form == "columns":
        names = [c for c in columns if c != PATH_COLUMN]
        if classes is not None and names != list(classes):
            raise TransferlabError(f"{manifest}: class columns {names} differ from the training classes {classes}; "
                                   "use the same columns in the same order")
        matrix = np.array([[_flag(manifest, n, c, row[c]) for c in names] for n, row in listing.rows], dtype=np.uint8)
        return listing.source(manifest.stem, matrix.reshape(-1, len(names)), names, spec)
    separator = spec.label_separator
    if form == "labels" and "label_separator" not in spec.model_fields_set:
        separator = _detected_separator(manifest, [_cell(row) for _, row in listing.rows], listing)
    given = [_labels_of(row, form, separator) for _, row in listing.rows]
    known = list(classes) if classes is not None else sorted({label for labels in given for label in labels})
    index = {name: i for i, name in enumerate(known)}
    keep = []
    for (number, _), labels in zip(listing.rows, given, strict=True):
        unknown = [label for label in labels if label not in index] or (["(empty)"] if form == "label" and not labels
                                                                         else [])
        if unknown:
            listing.problem(number, f"label '{unknown[0]}' is not a known class ({', '.join(known[:10])}"
                            f"{', ...' if len(known) > 10 else ''})", "fix the label or data.classes")
        keep.append(not unknown)
    listing.keep(keep)
    given = [labels for labels, kept in zip(given, keep, strict=True) if kept]
    if form == "label":
        targets = np.array([index[labels[0]] for labels in given], dtype=np.int64)
    else:
        targets = np.zeros((len(given), len(known)), dtype=np.uint8)
        for i, labels in enumerate(given):
            targets[i, [index[label] for label in labels]] = 1
    return listing.source(manifest.stem, targets, known, spec)


def pools_from_split_files(spec: DataSpec) -> Pools:
    """Split files: one image path per line (relative to the source folder); the label is the class folder."""
    root = Path(spec.source)
    if not root.is_dir():
        raise TransferlabError(f"{root}: split files list paths inside a dataset folder; data.source must be it")
    if "train" not in spec.splits:
        raise TransferlabError("data.splits: a train file is needed (val and test are optional)")
    everything = FolderSource(root, spec.classes, skip_empty=spec.skip_bad, max_pixels=spec.max_pixels,
                              imposed_by_training=False)
    position = {path.resolve(): i for i, path in enumerate(everything.paths)}
    pools = {}
    for name, file in spec.splits.items():
        listed = Path(file)
        if not listed.is_file():
            raise TransferlabError(f"data.splits.{name}: {listed} does not exist; give a text file with one "
                                   "image path per line")
        indices = []
        for number, line in enumerate(listed.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # a NUL byte is no path at all (resolve() raises on it): the same line error as any other stray line
            found = None if "\0" in line else position.get((root / line).resolve())
            if found is None:
                raise TransferlabError(f"{listed}:{number}: {line!r} is not an image under {root}/<class>/; fix "
                                       "the line (paths are relative to data.source)")
            indices.append(found)
        if len(set(indices)) != len(indices):
            raise TransferlabError(f"{listed}: lists an image twice; each image belongs in one line")
        pools[name] = everything.subset(f"{everything.name}/{name}", np.asarray(indices, dtype=np.int64))
    _refuse_overlap(spec, pools)
    return Pools(train=pools["train"], val=pools.get("val"), test=pools.get("test"))


# ---------------------------------------------------------------- helpers


class _Listing:
    """Rows that passed the per-row checks (file exists, stays inside the root, not a duplicate)."""

    def __init__(self, manifest: Path, root: Path, skip_bad: bool):
        self.manifest, self.root, self.skip_bad = manifest, root, skip_bad
        self.rows: list[tuple[int, dict[str, str]]] = []
        self.paths: list[Path] = []
        self.notes: list[str] = []  # rows skipped, and why
        self.info: list[str] = []  # how the manifest was read (e.g. a detected label separator)
        self._seen: dict[Path, tuple[int, dict[str, str]]] = {}

    def add(self, number: int, row: dict[str, str], form: str) -> None:
        raw = (row.get(PATH_COLUMN) or "").strip()
        path = Path(os.path.normpath(self.root / raw))  # not resolve(): symlinks (git-annex, DVC) stay inside
        if not raw:
            self.problem(number, "empty path", "fill it in or delete the row")
            return
        if not path.is_relative_to(self.root):
            raise TransferlabError(f"{self.manifest}, row {number}: '{raw}' is outside the dataset folder "
                                   f"{self.root}; move the image inside it and use a relative path")
        if path in self._seen:
            first, first_row = self._seen[path]
            if {k: v for k, v in row.items() if k != PATH_COLUMN} != \
                    {k: v for k, v in first_row.items() if k != PATH_COLUMN}:
                raise TransferlabError(f"{self.manifest}, row {number}: '{raw}' is listed again (row {first}) with "
                                       "other labels; keep one row per image")
            self.notes.append(f"{self.manifest}, row {number}: duplicate of row {first} ('{raw}'), dropped")
            return
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            reason = "no such file" if not path.is_file() else f"not an image extension ({path.suffix})"
            self.problem(number, f"'{raw}': {reason}", "fix the path or delete the row")
            return
        self._seen[path] = (number, row)
        self.rows.append((number, row))
        self.paths.append(path)

    def problem(self, number: int, what: str, fix: str) -> None:
        message = f"{self.manifest}, row {number}: {what}"
        if not self.skip_bad:
            raise TransferlabError(f"{message}; {fix}, or pass --skip-bad to skip such rows")
        self.notes.append(f"{message} (row skipped)")

    def keep(self, mask: list[bool]) -> None:
        self.rows = [row for row, kept in zip(self.rows, mask, strict=True) if kept]
        self.paths = [path for path, kept in zip(self.paths, mask, strict=True) if kept]

    def source(self, name: str, labels: np.ndarray, classes: list[str], spec: DataSpec) -> FileSource:
        if not self.paths:
            raise TransferlabError(f"{self.manifest}: no usable rows ({len(self.notes)} skipped, e.g. "
                                   f"{self.notes[0] if self.notes else 'none listed'}); check the manifest")
        return FileSource(name, self.root, self.paths, labels, classes, max_pixels=spec.max_pixels,
                          notes=self.info + self.notes)


def _read_rows(manifest: Path) -> tuple[list[dict[str, str]], list[str]]:
    if not manifest.is_file():
        raise TransferlabError(f"{manifest}: no such manifest; give a CSV or Parquet file with a path column")
    if manifest.suffix.lower() == ".parquet":
        try:
            table = pq.read_table(manifest)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds; all mean "not a readable table"
            raise TransferlabError(f"{manifest}: not a readable Parquet file ({exc}); check the file") from None
        rows = [{k: "" if v is None else str(v) for k, v in row.items()} for row in table.to_pylist()]
        return rows, list(table.column_names)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = [{k.strip(): (v or "") for k, v in row.items() if k is not None} for row in reader]
            return rows, [c.strip() for c in reader.fieldnames or []]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TransferlabError(f"{manifest}: not a readable UTF-8 CSV ({exc}); save it as UTF-8 CSV") from None


def _label_form(manifest: Path, columns: list[str], spec: DataSpec) -> str:
    """'label' (single), 'labels' (joined multi-label) or 'columns' (one 0/1 column per class)."""
    others = [c for c in columns if c != PATH_COLUMN]
    if "labels" in others:
        return "labels"
    if "label" in others:
        return "labels" if spec.multi_label else "label"
    if others:
        return "columns"
    raise TransferlabError(f"{manifest}: no label column; add 'label' (one class), 'labels' (several) or one "
                           "0/1 column per class")


SEPARATORS = ("|", ";", ",")  # what else joins tags in the wild when it is not the default space


def _detected_separator(manifest: Path, cells: list[str], listing: _Listing) -> str:
    """The default separator (a space), unless no cell holds a space but cells hold one of SEPARATORS: then
    that one, said in the source's notes (read with a space, "cat|dog" would be one class per combination)."""
    if any(" " in cell for cell in cells):
        return " "
    used = [sep for sep in SEPARATORS if any(sep in cell for cell in cells)]
    if not used:
        return " "
    if len(used) > 1:
        raise TransferlabError(f"{manifest}: the labels column joins labels with {' and '.join(map(repr, used))}; "
                               "set data.label_separator to the one that separates labels")
    joined = sum(used[0] in cell for cell in cells)
    listing.info.append(f"{manifest}: labels split at '{used[0]}' ({joined} cells hold it and none a space; set "
                         "data.label_separator to choose)")
    return used[0]


def _cell(row: dict[str, str]) -> str:
    return (row.get("labels") if "labels" in row else row.get("label") or "").strip()


def _labels_of(row: dict[str, str], form: str, separator: str) -> list[str]:
    cell = _cell(row)
    if form == "label":
        return [cell] if cell else []  # a single label may contain the separator ("ankle boot")
    return [label.strip() for label in cell.split(separator) if label.strip()]


def _flag(manifest: Path, number: int, column: str, value: str) -> int:
    value = value.strip()
    if value in ("0", "1", "0.0", "1.0", "True", "False", "true", "false"):
        return int(value in ("1", "1.0", "True", "true"))
    raise TransferlabError(f"{manifest}, row {number}: column '{column}' holds '{value}', not 0 or 1; class "
                           "columns take 0/1")


def _refuse_overlap(spec: DataSpec, pools: dict[str, FileSource]) -> None:
    names = list(pools)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = set(pools[a].paths) & set(pools[b].paths)
            if shared:
                raise TransferlabError(f"data.splits: {len(shared)} images are in both {a} and {b} (e.g. "
                                       f"{next(iter(shared))}); a split file must not repeat another's images")
