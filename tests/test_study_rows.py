"""Each reference study's spec against its original, row by row (tests/study_rows/<study>.yaml).

Every entry names a row of the original's result tables (section, row, figure), the spec row that reproduces
it (backbone label + paradigm row label) and the settings that define it in the original. The full-size spec
is expanded and each of that row's cells (every seed) must carry those settings, so a spec cannot drift from
its original unnoticed. Settings under `paradigm.params.` are read from the paradigm's validated params, so
defaults count; a mapping is compared key by key (a plan or head spec lists only the keys the original gives).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from transferlab.paradigms import get_paradigm_class
from transferlab.resolve import expand, load_study_spec

ROWS = Path(__file__).parent / "study_rows"
STUDIES = Path(__file__).parent.parent / "examples" / "studies"
NAMES = sorted(p.stem for p in ROWS.glob("*.yaml"))


def matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(matches(v, actual.get(k)) for k, v in expected.items())
    if isinstance(expected, list):
        return (isinstance(actual, list | tuple) and len(expected) == len(actual)
                and all(matches(e, a) for e, a in zip(expected, actual, strict=True)))
    if isinstance(expected, float) or isinstance(actual, float):
        return isinstance(actual, int | float) and math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-12)
    return expected == actual


def value(cell_dump: dict[str, Any], params: dict[str, Any], path: str) -> Any:
    if path.startswith("paradigm.params."):
        current: Any = params
        keys = path.removeprefix("paradigm.params.").split(".")
    else:
        current, keys = cell_dump, path.split(".")
    for key in keys:
        if not isinstance(current, dict) or key not in current:
            return KeyError(path)
        current = current[key]
    return current


def cells_of_rows(name: str, references: bool = False):
    """The full-size spec's cells (the reference rows the study adds only with `references`)."""
    spec = load_study_spec(STUDIES / f"{name}.yaml")
    return [c for c in expand(spec) if references or not c.reference]


def label(cell) -> tuple[str, str, str]:
    return (cell.data.label, cell.backbone.label if cell.backbone else "none", cell.paradigm.row_label)


@pytest.mark.parametrize("name", NAMES)
def test_every_row_of_the_original_carries_its_settings(name):
    entries = yaml.safe_load((ROWS / f"{name}.yaml").read_text())
    cells = cells_of_rows(name, references=True)  # an original's row may be a reference row (all-negative)
    assert entries, name
    for entry in entries:
        chosen = [c for c in cells if c.paradigm.row_label == entry["row"]
                  and (c.backbone.label if c.backbone else "none") == entry["backbone"]
                  and ("dataset" not in entry or c.data.label == entry["dataset"])]
        assert chosen, f"{name}: no row {entry['backbone']} / {entry['row']} for {entry['original']}"
        for cell in chosen:
            params = get_paradigm_class(cell.paradigm.name).Params(**cell.paradigm.params).model_dump(mode="json")
            dump = cell.model_dump(mode="json")
            for path, expected in entry["expect"].items():
                got = value(dump, params, path)
                assert matches(expected, got), (f"{name}: {entry['original']} — {label(cell)} {path} is {got!r}, "
                                                f"the original's is {expected!r}")


@pytest.mark.parametrize("name", NAMES)
def test_every_row_of_the_spec_stands_for_a_row_of_the_original(name):
    """No row in the spec that the expectations table does not tie to the original."""
    entries = yaml.safe_load((ROWS / f"{name}.yaml").read_text())
    listed = {(e["backbone"], e["row"]) for e in entries}
    rows = {(b, p) for _, b, p in map(label, cells_of_rows(name))}
    assert rows - listed == set(), f"{name}: spec rows with no original row listed"


def test_there_is_a_table_for_every_study():
    assert NAMES == sorted(p.stem for p in STUDIES.glob("*.yaml"))
