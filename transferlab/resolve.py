"""The one precedence step: from what the user wrote to the runs that will be executed.

Spec defaults (config.py's schemas) → the study's cells (datasets × backbones × paradigms × seeds) →
overrides (in the order listed) → the reference rows → registry checks (every paradigm, its params and
every backbone name is known). config.py holds schemas only and knows no registry; everything that needs
one (paradigm params, timm model names, which paradigms need a backbone) is checked here, with the same
one-line `file: field: problem` message a schema error gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import (
    BackboneSpec,
    ParadigmSpec,
    RunSpec,
    Spec,
    StudySpec,
    deep_merge,
    load_yaml,
    named_entries,
    validated,
)
from .core import names
from .core.errors import TransferlabError
from .data.builtins import BUILTINS
from .models.backbones import check_model_name, model_names
from .paradigms import PARADIGMS, get_paradigm_class, validate_params


def resolved(model: type[Spec], data: Any, where: str) -> Any:
    """`config.validated` plus the registry checks: the spec a run or study can be built from."""
    return checked(validated(model, data, where), where)


def checked(spec: Spec, where: str) -> Any:
    """`spec` after the registry checks (`check_registered`), a failure as one line starting with `where`."""
    try:
        check_registered(spec)
    except (TransferlabError, ValueError) as exc:
        raise TransferlabError(f"{where}: {exc}") from None
    return spec


def load_study_spec(path: str | Path) -> StudySpec:
    return resolved(StudySpec, load_yaml(path), str(path))


def check_registered(spec: Spec) -> None:
    """Raise `field: problem` for the first name no registry knows (paradigm, timm or torchvision model), then
    for a paradigm's params; leave the registries' names for the next process (core.names)."""
    if not names.remembered():
        names.remember(PARADIGMS, *model_names(), BUILTINS)
    for field, kind, name in named_entries(spec, datasets=False):  # a source is opened, and checked, when read
        _at(field, check_model_name if kind == "backbone" else get_paradigm_class, name)
    if isinstance(spec, StudySpec):
        for i, paradigm in enumerate(spec.paradigms):
            _at(f"paradigms.{i}", validate_params, paradigm.name, paradigm.params)
    elif isinstance(spec, RunSpec):
        _at("paradigm", validate_params, spec.paradigm.name, spec.paradigm.params)
        needs = get_paradigm_class(spec.paradigm.name).needs_backbone
        if needs and spec.backbone is None:
            raise TransferlabError(f"paradigm '{spec.paradigm.name}' needs a backbone; give one (e.g. "
                                   "tf_efficientnet_lite0)")
        if not needs and spec.backbone is not None:
            raise TransferlabError(f"paradigm '{spec.paradigm.name}' uses no backbone; leave backbone empty")
    elif isinstance(spec, ParadigmSpec):
        _at("", validate_params, spec.name, spec.params)


def _at(field: str, check, *args) -> None:
    try:
        check(*args)
    except (TransferlabError, ValueError) as exc:
        raise TransferlabError(f"{field}: {exc}" if field else str(exc)) from None


# ---------------------------------------------------------------- a study's cells

def expand(spec: StudySpec, is_multi_label=None) -> list[RunSpec]:
    """Every cell of the grid as a checked RunSpec, overrides applied, in a cache-friendly order, followed
    per dataset and seed by the reference rows (`reference_cells`). `is_multi_label(data_spec)` says which
    baselines apply (default: what the spec declares)."""
    is_multi_label = is_multi_label or (lambda data: bool(data.multi_label))
    cells = []
    for data in spec.datasets:
        for seed in spec.seeds:
            block: list[RunSpec] = []  # this dataset and seed: where a features_from row finds its source
            for paradigm in spec.paradigms:
                for backbone in backbones_of(spec, paradigm):
                    cell = base_cell(spec, data, backbone, paradigm, seed)
                    cell = apply_overrides(spec, cell, data, backbone, paradigm)
                    cell = resolved(RunSpec, cell, f"study '{spec.name}', cell {len(cells) + len(block) + 1}")
                    block.append(with_features_source(spec, cell, block) if paradigm.features_from else cell)
            cells += block
            for cell in reference_cells(spec, data, seed, is_multi_label(data)):
                # A reference row anchors the grid rows of its dataset: it takes their data-wide overrides
                # (e.g. a train_size), never those that select a backbone or paradigm.
                for override in spec.overrides:
                    if override.where.backbone is None and override.where.paradigm is None and \
                            override.where.dataset in (None, data.label):
                        cell = deep_merge(cell, {k: v for k, v in override.set.items() if k != "paradigm"})
                cells.append(resolved(RunSpec, cell, f"study '{spec.name}', reference row {cell['reference']}"))
    seen: dict[str, RunSpec] = {}
    for cell in cells:  # two cells with one id would overwrite each other's record and checkpoints
        if cell.run_id in seen and seen[cell.run_id] != cell:
            raise TransferlabError(f"study '{spec.name}': two cells are both named {cell.run_id}; give the datasets "
                                   "distinct `name:`s or the paradigms distinct `label:`s")
        seen[cell.run_id] = cell
    return list(seen.values())  # a cell listed twice runs (and counts as a seed) once


def with_features_source(spec: StudySpec, cell: RunSpec, earlier: list[RunSpec]) -> RunSpec:
    """A `features_from` cell with its source: the cell of the named row on the same dataset, seed and backbone,
    listed before it (the study trains it first), which must train the backbone network on the same data."""
    wanted, paradigm = cell.paradigm.features_from, cell.paradigm
    where = f"study '{spec.name}', paradigm {paradigm.row_label}: features_from"
    if get_paradigm_class(paradigm.name).input != "features":
        raise TransferlabError(f"{where}: {paradigm.name} is not a feature paradigm; features_from applies to "
                               "paradigms on cached features (knn, linear, rff, mlp)")
    rows = [p for p in spec.paradigms if p.row_label == wanted]
    if not rows:
        raise TransferlabError(f"{where}: no row is labelled '{wanted}' (rows: "
                               f"{', '.join(p.row_label for p in spec.paradigms)})")
    if not get_paradigm_class(rows[0].name).trains_backbone:
        raise TransferlabError(f"{where}: row '{wanted}' is {rows[0].name}, which trains no backbone network; name "
                               "a finetune or scratch row")
    found = [c for c in earlier if c.paradigm.row_label == wanted and c.backbone == cell.backbone]
    if not found:
        raise TransferlabError(f"{where}: row '{wanted}' has no cell on backbone {cell.backbone.label} listed before "
                               "this row; list it first, on the same backbones")
    source = found[0]
    if source.data != cell.data or source.final != cell.final:
        raise TransferlabError(f"{where}: row '{wanted}' is split or refitted differently on {cell.data.label} "
                               "(its overrides differ); give both rows the same data and final settings")
    return cell.model_copy(update={"features_source": source})


def backbones_of(spec: StudySpec, paradigm: ParadigmSpec) -> list[BackboneSpec | None]:
    """The backbones a paradigm's rows run on: every study backbone, or those its `backbones:` names
    ([None] for paradigms that use none)."""
    where = f"study '{spec.name}', paradigm {paradigm.row_label}"
    if not get_paradigm_class(paradigm.name).needs_backbone:
        if paradigm.backbones:
            raise TransferlabError(f"{where}: '{paradigm.name}' uses no backbone; drop its backbones:")
        return [None]
    if not spec.backbones:
        raise TransferlabError(f"study '{spec.name}': paradigm '{paradigm.name}' needs a backbone; add one under "
                               "backbones:")
    if paradigm.backbones is None:
        return list(spec.backbones)
    chosen = []
    for wanted in paradigm.backbones:
        found = find_backbones(spec.backbones, wanted)
        if not found:
            raise TransferlabError(f"{where}: backbones: '{wanted}' is not one of the study's backbones "
                                   f"({', '.join(b.label for b in spec.backbones)})")
        chosen += found
    return [b for b in spec.backbones if b in chosen]


def find_backbones(backbones: list[BackboneSpec], wanted: str) -> list[BackboneSpec]:
    """The backbones `wanted` names: a row label names one (under --mini, so does the label of the backbone it
    stands in for); a model name, every entry of that model."""
    return ([b for b in backbones if b.label == wanted] or [b for b in backbones if b.stands_in_for == wanted] or
            [b for b in backbones if wanted in b.names])


def apply_overrides(spec: StudySpec, cell: dict[str, Any], data, backbone, paradigm) -> dict[str, Any]:
    """`cell` with every override whose `where` selects it merged in, in the order they are listed."""
    for override in spec.overrides:
        if _matches(override.where, data.label, backbone, paradigm):
            cell = deep_merge(cell, override.set)
    return cell


def base_cell(spec: StudySpec, data, backbone, paradigm, seed: int, reference: str | None = None) -> dict[str, Any]:
    """A cell before overrides: the study-wide run fields (device, engine, batch size, ...) are the spec's."""
    return {
        "data": data.model_dump(exclude_defaults=True),
        "backbone": backbone.model_dump(exclude_defaults=True) if backbone else None,
        "paradigm": {"name": paradigm.name, **({"label": paradigm.label} if paradigm.label else {}),
                     **({"features_from": paradigm.features_from} if paradigm.features_from else {}),
                     **paradigm.params},
        "seed": seed, **{field: getattr(spec, field) for field in STUDY_WIDE_FIELDS},
        "reference": reference or (paradigm.name if paradigm.name in LABEL_AND_PIXEL_REFERENCES else None),
    }


# Run fields a study sets for every cell (same names in StudySpec and RunSpec; defaults in config.py only).
STUDY_WIDE_FIELDS = ("device", "engine", "batch_size", "threshold", "final", "calibrate")
LABEL_AND_PIXEL_REFERENCES = ("majority", "all-negative", "pixels")  # paradigms that are reference rows by nature
# What each reference row is: the paradigm it runs and whether it needs a backbone.
REFERENCE_PARADIGMS = {"majority": "majority", "all-negative": "all-negative", "pixels": "pixels",
                       "untrained": "linear"}


def reference_cells(spec: StudySpec, data, seed: int, multi_label: bool) -> list[dict[str, Any]]:
    """The rows that show what transfer buys, for one dataset and seed: the majority class (multi-label: the
    training label frequencies) and, for multi-label data, no label at all; raw pixels (no backbone); and a
    linear probe on each backbone's *untrained* (random-init) features. Untrained inits share one fixed seed,
    so every run seed reuses one encoding."""
    wanted = list(REFERENCE_PARADIGMS) if spec.references is True else list(dict.fromkeys(spec.references or []))
    if not multi_label:
        if any(p.name == "all-negative" for p in spec.paradigms):
            raise TransferlabError(f"study '{spec.name}': paradigm 'all-negative' is a multi-label baseline, but "
                                   f"{data.label} is single-label; use 'majority'")
        wanted = [w for w in wanted if w != "all-negative"]
    in_grid = {p.name for p in spec.paradigms}  # e.g. pixels listed by hand: that row is the reference
    wanted = [w for w in wanted if w == "untrained" or REFERENCE_PARADIGMS[w] not in in_grid]
    cells = []
    for kind in wanted:
        # The untrained row is labelled apart, so a random-init backbone in the grid never shares its id.
        paradigm = ParadigmSpec(name=REFERENCE_PARADIGMS[kind], label="linear-untrained" if kind == "untrained"
                                else None)
        if kind != "untrained":
            cells.append(base_cell(spec, data, None, paradigm, seed, reference=kind))
            continue
        for backbone in dict.fromkeys((b.name, b.image_size) for b in spec.backbones):
            untrained = BackboneSpec(name=backbone[0], image_size=backbone[1], weights="random", init_seed=0)
            cells.append(base_cell(spec, data, untrained, paradigm, seed, reference=kind))
    return cells


def _matches(where, dataset: str, backbone, paradigm) -> bool:
    names = {
        "dataset": {dataset},
        "backbone": backbone.names if backbone else {"none"},
        "paradigm": {paradigm.name, paradigm.row_label},
    }
    return all(wanted is None or wanted in names[field] for field, wanted in where.model_dump().items())


# DataSpec fields that only change how the listed images are split: datasets differing in these share pools.
SPLIT_ONLY_FIELDS = {"name", "train_size", "val_size", "test_size", "ratios", "folds", "limit_per_class", "split_seed"}
