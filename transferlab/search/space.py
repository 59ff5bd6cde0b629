"""The `search:` space: each key parsed into a `Dimension` (a path into a run, its Optuna distribution, the
`when` it applies), every mistake caught up front as one line naming the key (each end of a range and each
choice is validated as a run); a trial's values → the `RunSpec` it runs (`trial_spec`).
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

import optuna

from ..config import BackboneSpec, ParadigmSpec, RunSpec, SearchSpec, SpaceParam, StudySpec
from ..core.errors import TransferlabError
from ..core.registry import did_you_mean
from ..evaluate import SCALAR_METRICS, primary_metric
from ..paradigms import PARADIGMS, get_paradigm_class
from ..resolve import SPLIT_ONLY_FIELDS, apply_overrides, backbones_of, base_cell, find_backbones, resolved

MINIMIZED = frozenset({"log_loss", "ece", "hamming_loss"})  # validation metrics where lower is better
RUN_FIELDS = ("batch_size", "threshold", "engine", "device")  # top-level run options a space may set


# ------------------------------------------------------------------------------------------------ the space

@dataclass(frozen=True)
class Dimension:
    """One searched option: its path in a run (`paradigm.lr`), its Optuna distribution, and `when` it applies."""

    path: str
    param: SpaceParam

    @property
    def when(self) -> dict[str, tuple]:
        """{dimension: the values it must take}, as Optuna stores them (a list choice as its JSON text: a condition
        on `paradigm.head.hidden` lists its lists, `[[128], [256, 128]]`)."""
        return {k: tuple(encoded_choice(c) for c in v) if isinstance(v, list) else (encoded_choice(v),)
                for k, v in self.param.when.items()}

    def active(self, values: dict[str, Any]) -> bool:
        return all(key in values and values[key] in allowed for key, allowed in self.when.items())

    @property
    def choices(self) -> list[Any] | None:
        """The choices as Optuna stores them: a list or mapping choice (a head's `hidden: [256, 128]`) as its JSON
        text, which `trial_spec` reads back."""
        return None if self.param.choices is None else [encoded_choice(c) for c in self.param.choices]

    def distribution(self):
        p = self.param
        if p.choices is not None:
            return optuna.distributions.CategoricalDistribution(self.choices)
        if p.is_int:
            return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)

    def suggest(self, trial) -> Any:
        p, d = self.param, self.distribution()
        if p.choices is not None:
            return trial.suggest_categorical(self.path, self.choices)
        if p.is_int:
            return trial.suggest_int(self.path, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(self.path, d.low, d.high, step=d.step, log=d.log)

    def grid_values(self) -> list[Any]:
        p = self.param
        if p.choices is not None:
            return list(self.choices)
        if p.is_int:
            return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        if p.step is None:
            raise TransferlabError(f"search.space.{self.path}: a grid needs a finite set; give a step or a list "
                                   "of values")
        count = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
        return [round(p.low + i * p.step, 12) for i in range(count)]


def encoded_choice(choice: Any) -> Any:
    return json.dumps(choice) if isinstance(choice, list | dict) else choice


def decoded_value(spec: StudySpec, path: str, value: Any) -> Any:
    """A trial's value as the run takes it: a list / mapping choice back from its JSON text."""
    param = spec.search.space.get(path) if spec.search else None
    if isinstance(value, str) and param is not None and param.choices and \
            any(isinstance(c, list | dict) for c in param.choices):
        return json.loads(value)
    return value


def parse_space(spec: StudySpec) -> list[Dimension]:
    """The study's search space as dimensions, conditions first; every mistake is one line naming the key.

    `paradigm` / `backbone` default to the study's lists when those hold more than one entry."""
    search = _search_block(spec)
    space = dict(search.space)
    for key, listed in (("paradigm", _names(spec.paradigms, lambda p: p.label or p.name, lambda p: p.row_label)),
                        ("backbone", _names(spec.backbones, lambda b: b.name, lambda b: b.label))):
        if key not in space and len(listed) > 1:
            space[key] = SpaceParam(choices=listed)
    if not space:
        raise TransferlabError(f"study '{spec.name}': search.space is empty; declare at least one parameter, e.g. "
                               "search: {space: {paradigm.lr: {low: 1e-4, high: 1e-1, log: true}}}")
    dims = [Dimension(path, param) for path, param in space.items()]
    dims.sort(key=lambda d: bool(d.when))  # conditions are decided before what depends on them
    by_path = {d.path: d for d in dims}
    for dim in dims:
        _check_path(spec, dim, by_path)
    if search.sampler == "grid":
        for dim in dims:
            dim.grid_values()
    return dims


def _names(entries, short, full) -> list[str]:
    """How the study's paradigms / backbones are named as choices: short names unless two entries share one."""
    names = [short(e) for e in entries]
    return names if len(set(names)) == len(names) else [full(e) for e in entries]


def _search_block(spec: StudySpec) -> SearchSpec:
    if spec.search is None:
        raise TransferlabError(f"study '{spec.name}': no search: block; add one, e.g. search: {{space: "
                               "{paradigm.hidden: [128, 512], paradigm.lr: {low: 1e-4, high: 1e-2, log: true}}}")
    if len(spec.datasets) != 1:
        raise TransferlabError(f"study '{spec.name}': a search tunes on one dataset, the spec lists "
                               f"{len(spec.datasets)}; keep one under datasets:")
    return spec.search


def _check_path(spec: StudySpec, dim: Dimension, by_path: dict[str, Dimension]) -> None:
    where = f"study '{spec.name}': search.space.{dim.path}"
    for key, allowed in dim.when.items():
        other = by_path.get(key)
        if other is None or other.param.choices is None:
            raise TransferlabError(f"{where}: when: {key} must name another categorical dimension of the space "
                                   f"(declared: {', '.join(p for p, d in by_path.items() if d.param.choices)})")
        unknown = [v for v in allowed if v not in other.choices]
        if unknown:
            raise TransferlabError(f"{where}: when: {key} = {unknown[0]!r} is not one of its choices "
                                   f"{other.param.choices}")
    head, _, field = dim.path.partition(".")
    valid = valid_paths(spec)
    if dim.path in ("paradigm", "backbone"):
        for choice in dim.param.choices or []:
            (resolve_paradigm if head == "paradigm" else resolve_backbone)(spec, choice, where)
        if dim.param.choices is None:
            raise TransferlabError(f"{where}: give a list of {head} names")
    elif head == "paradigm" and field:
        field = field.partition(".")[0]  # paradigm.head.dropout: the paradigm's `head`
        names = {resolve_paradigm(spec, c, where).name for c in _paradigm_choices(spec, dim, by_path)}
        lacking = sorted(n for n in names if field not in get_paradigm_class(n).Params.model_fields)
        if len(lacking) == len(names):
            _unknown(where, dim.path, valid)
        if lacking:
            raise TransferlabError(f"{where}: {', '.join(lacking)} has no parameter '{field}'; add when: "
                                   f"{{paradigm: {sorted(names - set(lacking))[0]}}} or drop it")
    elif dim.path in MOVES_TEST:
        raise TransferlabError(f"{where}: this would move images in or out of the test split, which is fixed "
                               "before any choice (a search that picks it would be choosing on test); set it in "
                               "the dataset instead. data.train_size, data.val_size and data.folds can be tuned")
    elif dim.path not in valid:
        _unknown(where, dim.path, valid)
    _check_extremes(spec, dim, by_path, where)


# Data fields that decide which images are test images: never a search dimension.
MOVES_TEST = ("data.test_size", "data.ratios", "data.split_seed")


def _unknown(where: str, path: str, valid: list[str]) -> None:
    close = difflib.get_close_matches(path, valid, n=3, cutoff=0.5)
    close += [v for v in valid if v.endswith("." + path) and v not in close]
    hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
    raise TransferlabError(f"{where}: unknown parameter{hint}; keys are paradigm, backbone, paradigm.<param>, "
                           f"backbone.<field>, data.<field> or {', '.join(RUN_FIELDS)}")


def valid_paths(spec: StudySpec) -> list[str]:
    paradigm_fields = {f for p in PARADIGMS.values() for f in p.Params.model_fields}
    return ["paradigm", "backbone", *(f"paradigm.{f}" for f in sorted(paradigm_fields)),
            *(f"backbone.{f}" for f in BackboneSpec.model_fields if f != "name"),
            *(f"data.{f}" for f in sorted(SPLIT_ONLY_FIELDS - {"name"}) if f"data.{f}" not in MOVES_TEST),
            *RUN_FIELDS]


def _paradigm_choices(spec: StudySpec, dim: Dimension, by_path: dict[str, Dimension]) -> list[str]:
    """The paradigms a `paradigm.<param>` dimension can meet: those its `when` allows, else all candidates."""
    if "paradigm" in dim.when:
        return list(dim.when["paradigm"])
    if "paradigm" in by_path:
        return list(by_path["paradigm"].param.choices)
    return [spec.paradigms[0].row_label]


def _check_extremes(spec: StudySpec, dim: Dimension, by_path: dict[str, Dimension], where: str) -> None:
    """Each end of a range and each choice, alone on the base run, must be a valid run (caught now, not
    as failed trials): e.g. dropout up to 1.5, or an image size the backbone refuses."""
    if dim.path in ("paradigm", "backbone"):
        return
    values = dim.grid_values() if dim.param.choices is not None else [dim.param.low, dim.param.high]
    context = {k: allowed[0] for k, allowed in dim.when.items()}
    if "paradigm" not in context and dim.path.startswith("paradigm.") and "paradigm" in by_path:
        context["paradigm"] = _paradigm_choices(spec, dim, by_path)[0]
    for value in values:
        if dim.param.choices is None and dim.param.is_int:
            value = int(value)
        try:
            trial_spec(spec, {**context, dim.path: value}, seed=spec.seeds[0])
        except TransferlabError as exc:
            raise TransferlabError(f"{where}: the value {value!r} makes an invalid run: {exc}") from None


# ------------------------------------------------------------------------------------- trial → run spec

def resolve_paradigm(spec: StudySpec, choice: Any, where: str = "search"):
    """A paradigm choice: a study paradigm's row label or name (its params come along), or any registered name."""
    for paradigm in spec.paradigms:
        if choice in (paradigm.row_label, paradigm.label):
            return paradigm
    for paradigm in spec.paradigms:
        if choice == paradigm.name:
            return paradigm
    try:
        PARADIGMS.get(str(choice))  # the registry's one line for an unknown name
    except TransferlabError as exc:
        raise TransferlabError(f"{where}: {exc}") from None
    return ParadigmSpec(name=choice)


def resolve_backbone(spec: StudySpec, choice: Any, where: str = "search"):
    """A backbone choice: a study backbone's label or name (its weights come along), or any timm model name."""
    found = find_backbones(spec.backbones, choice)
    if found:
        return found[0]
    return resolved(BackboneSpec, {"name": choice}, f"{where}: backbone {choice}")


def trial_spec(spec: StudySpec, values: dict[str, Any], *, seed: int, label: str | None = None) -> RunSpec:
    """The run a trial's values describe: the study's base cell for the chosen paradigm and backbone, its
    overrides, then each value at its path."""
    data = spec.datasets[0]
    paradigm = resolve_paradigm(spec, values.get("paradigm", spec.paradigms[0].row_label))
    backbone = None
    if get_paradigm_class(paradigm.name).needs_backbone:
        if "backbone" not in values and not spec.backbones:
            raise TransferlabError(f"study '{spec.name}': paradigm '{paradigm.name}' needs a backbone; add one "
                                   "under backbones:")
        default = backbones_of(spec, paradigm)[0].label if spec.backbones else None  # its own, if it names some
        backbone = resolve_backbone(spec, values.get("backbone", default))
    cell = apply_overrides(spec, base_cell(spec, data, backbone, paradigm, seed), data, backbone, paradigm)
    for path, value in values.items():
        head, _, field = path.partition(".")
        value = decoded_value(spec, path, value)
        if not field:
            if head not in ("paradigm", "backbone"):
                cell[head] = value
        elif cell.get(head) is not None:  # backbone.* of a paradigm that uses none does not apply
            cell[head] = placed(cell[head], field.split("."), value, f"study '{spec.name}': search.space.{path}")
    if label:
        cell["paradigm"] = {**cell["paradigm"], "label": label}
    return resolved(RunSpec, cell, f"study '{spec.name}', search trial {json.dumps(values, default=str)}")


def placed(container: dict[str, Any], keys: list[str], value: Any, where: str) -> dict[str, Any]:
    """`container` with `value` at the nested `keys`: `head.dropout` inside a mapping, `betas.0` an item of a
    list the spec gives."""
    key, rest = keys[0], keys[1:]
    if not rest:
        return {**container, key: value}
    current = container.get(key)
    if rest[0].isdigit() and len(rest) == 1:
        if not isinstance(current, list | tuple) or int(rest[0]) >= len(current):
            raise TransferlabError(f"{where}: an item of {key} is searched, but the run has no {key} list with item "
                                   f"{rest[0]}; give {key} in the paradigm's spec, e.g. {key}: [0.9, 0.999]")
        items = list(current)
        items[int(rest[0])] = value
        return {**container, key: items}
    if current is not None and not isinstance(current, dict):
        raise TransferlabError(f"{where}: {key} is {current!r}, not a mapping with a {rest[0]}")
    return {**container, key: placed(current or {}, rest, value, where)}


def grid_points(dims: list[Dimension]) -> list[dict[str, Any]]:
    """Every distinct combination, a conditional dimension only where its condition holds."""
    points: list[dict[str, Any]] = [{}]
    for dim in dims:  # conditions come first (parse_space sorted them)
        grown = []
        for point in points:
            grown += [{**point, dim.path: v} for v in dim.grid_values()] if dim.active(point) else [point]
        points = grown
    unique = {json.dumps(p, sort_keys=True): p for p in points}
    return list(unique.values())


def space_digest(spec: StudySpec, dims: list[Dimension]) -> str:
    """What must match for a stored search to be continued: the space, objective and base runs."""
    described = {"space": {d.path: d.param.model_dump(mode="json") for d in dims},
                 "objective": objective_of(spec)[0], "sampler": spec.search.sampler,
                 "datasets": [d.model_dump(mode="json") for d in spec.datasets],
                 "paradigms": [p.model_dump(mode="json") for p in spec.paradigms],
                 "backbones": [b.model_dump(mode="json") for b in spec.backbones],
                 "overrides": [o.model_dump(mode="json") for o in spec.overrides]}
    return json.dumps(described, sort_keys=True)


def objective_of(spec: StudySpec, multi_label: bool | None = None) -> tuple[str, str]:
    """(validation metric, direction). The default follows the task: accuracy, or multi-label micro_f1."""
    multi_label = bool(multi_label if multi_label is not None else spec.datasets[0].multi_label)
    name = (spec.search.objective or primary_metric(multi_label)).removeprefix("val_")
    known = SCALAR_METRICS[multi_label]
    if name not in known:
        hint = did_you_mean(name, known)
        task = "multi-label" if multi_label else "single-label"
        raise TransferlabError(f"study '{spec.name}': search.objective '{name}' is not a {task} validation "
                               f"metric{hint}; choose from {', '.join(known)}")
    return name, "minimize" if name in MINIMIZED else "maximize"
