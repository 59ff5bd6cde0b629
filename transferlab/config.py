"""Typed specs for a run and a study: YAML in, validated, one-line errors out.

Schemas only: this module imports nothing of transferlab's above `core/`. What needs a registry (is this
paradigm known, are its params valid, is this a timm model) is checked by `resolve.py`, which also holds the
precedence: what the user wrote (CLI / YAML, then per-cell overrides) > the paradigm's defaults > the
backbone's pretrained config.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .core.errors import TransferlabError
from .core.registry import did_you_mean


class Spec(BaseModel):
    """Base for every spec: immutable, and an unknown key is an error that lists the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in allowed:
                    raise ValueError(f"unknown key '{key}'{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")
        return data


Size = int | float  # an image count, or a fraction of the pool when < 1


class DataSpec(Spec):
    """Where the images come from and how they are split.

    `source` is a builtin dataset name (see `transferlab.data.builtins.BUILTINS`), an image-folder root
    (`root/<class>/<image>`, images may be nested deeper) or a CSV / Parquet manifest (`path,label`;
    multi-label as `path,labels` split by `label_separator`, or `path` plus one 0/1 column per class; paths
    relative to the manifest), a Hugging Face dataset (Hub-layout Parquet with embedded image bytes, a
    `save_to_disk` folder, or `hf:<repo>[:config]`; see `transferlab.data.hf`). With only a source, test and
    validation are carved from it; `val` / `test`
    name explicit folders or manifests instead, and `splits` names split files (one image path per line,
    relative to the source folder, as Caltech-101 course splits are given). Official test sets are used
    as they are (or a fixed stratified subset).

    Splitting: `test_size` / `val_size` (counts or fractions), or `ratios: [train, val, test]` (e.g.
    [50, 20, 30]); `folds: k` turns the run seed into the validation fold (stratified k-fold; seeds 0..k-1
    = k-fold cross-validation). Multi-label data are split by iterative stratification.
    """

    source: str
    name: str | None = None
    val: str | None = None
    test: str | None = None
    splits: dict[Literal["train", "val", "test"], str] | None = Field(
        None, description="split files: {train: file, val: file, test: file}, one image path per line")
    classes: list[str] | None = Field(None, description="the class list (manifests: other labels are errors)")
    tag_files: str | None = Field(None, description="multi-label as one text file per tag: a folder of <tag>.txt, "
                                  "each listing the images (under source) that carry the tag; an image listed "
                                  "nowhere has no tag")
    multi_label: bool | None = Field(None, description="None: decided by the manifest's form")
    label_separator: str = Field(" ", min_length=1, description="between labels in a manifest's labels column")
    train_size: int | None = Field(None, gt=0, description="few-shot: training images, stratified")
    val_size: Size = Field(0.2, gt=0, description="validation carved from train: count or fraction")
    test_size: Size | None = Field(None, gt=0, description="test carved from a single root (default 0.2), "
                                   "or a fixed stratified subset of an official test set")
    ratios: list[float] | None = Field(None, min_length=3, max_length=3,
                                       description="train/val/test proportions carved from one pool, e.g. [50, 20, 30]")
    folds: int | None = Field(None, ge=2, description="stratified k-fold: validation = fold (run seed mod k)")
    official_split: bool = Field(True, description="false: pool a dataset's official train / val / test (a "
                                 "builtin's, or data.val / data.test) and cut all its images by ratios, "
                                 "val_size / test_size or folds")
    limit_per_class: int | dict[str, int] | None = Field(
        None, description="cap on training images per class: one number for every class, or {class: count} to "
        "reproduce an imbalance by subsampling (classes not named keep all their images)")
    select_classes: list[str] | None = Field(None, min_length=2, description="use only these classes, in this "
                                             "order; images of other classes are dropped from every split")
    exclude_classes: list[str] | None = Field(None, min_length=1, description="drop these classes' images from "
                                              "every split (e.g. Caltech-101's BACKGROUND_Google)")
    split_seed: int = Field(0, description="seed of the test split (and of the folds), fixed across run seeds")
    skip_bad: bool = Field(False, description="skip unreadable images, bad manifest rows and empty class folders, "
                           "and list them in the record")
    max_pixels: int = Field(89_478_485, gt=0, description="decompression-bomb guard: larger images are refused")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"source": data} if isinstance(data, str) else data

    @field_validator("limit_per_class")
    @classmethod
    def _positive_limits(cls, limit):
        counts = limit.values() if isinstance(limit, dict) else [] if limit is None else [limit]
        if any(n <= 0 for n in counts):
            raise ValueError("limit_per_class: counts must be positive (a number, or {class: count})")
        return limit

    @model_validator(mode="after")
    def _one_way_to_split(self):
        if self.ratios is not None:
            if any(r <= 0 for r in self.ratios):
                raise ValueError("ratios must be three positive numbers (train, val, test), e.g. [50, 20, 30]")
            if "test_size" in self.model_fields_set or "val_size" in self.model_fields_set:
                raise ValueError("give ratios or val_size/test_size, not both")
        if self.select_classes is not None and self.exclude_classes is not None:
            raise ValueError("give select_classes or exclude_classes, not both")
        if self.folds is not None and ("val_size" in self.model_fields_set or self.ratios is not None):
            raise ValueError("with folds, validation is one fold; drop val_size / ratios' val share")
        return self

    @property
    def label(self) -> str:
        path = Path(self.source.rstrip("/"))
        return self.name or (path.stem if path.suffix.lower() in (".csv", ".parquet") else path.name) or self.source


WeightsChoice = str  # "auto" | "offline" | "hub" | "random" | a file path


class BackboneSpec(Spec):
    """A timm model and where its weights come from.

    weights: `auto` (offline registry if it has the model, else the hub), `offline`, `hub`, `random`
    (timm's default init), or a path to a .safetensors / .pth file.
    """

    name: str
    weights: WeightsChoice = "auto"
    image_size: int | None = Field(None, ge=16, description="override the pretrained input size")
    init_seed: int | None = Field(None, description="random init: its seed (default: the run seed); the "
                                  "untrained reference row fixes it, so every run seed shares one encoding")
    stands_in_for: str | None = Field(None, description="set by `--mini`: the full study's backbone this offline "
                                      "one replaces (shown in its row label)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @property
    def label(self) -> str:
        label = self.name if self.image_size is None else f"{self.name}@{self.image_size}"
        label = f"{label} (random init)" if self.weights == "random" else label
        return f"{label} for {self.stands_in_for}" if self.stands_in_for else label

    @property
    def names(self) -> set[str]:
        """What a spec may call this backbone (`where:`, a paradigm's `backbones:`, a search choice): its name and
        label, and under `--mini` also the full study's backbone it stands in for."""
        names = {self.name, self.label}
        if self.stands_in_for:
            names |= {self.stands_in_for, re.split(r"@| \(", self.stands_in_for)[0]}
        return names


class ParadigmSpec(Spec):
    """A paradigm by registry name plus its hyper-parameters, validated against the paradigm's own model.

    YAML forms: `knn`, or `{name: knn, k: 10, metric: euclidean}`; `label` names the leaderboard row;
    `backbones` restricts the row to some of the study's backbones (names or labels; default: all of them).
    """

    name: str
    label: str | None = None
    backbones: list[str] | None = Field(None, min_length=1, description="only on these study backbones (names "
                                        "or labels); default: every backbone")
    features_from: str | None = Field(None, description="a feature paradigm on the network another row of the "
                                      "study trained (that row's label: a finetune or scratch row listed before "
                                      "this one), same backbone, seed and data, instead of the pretrained one")
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _gather_params(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and "params" not in data:
            reserved = {"name", "label", "backbones", "features_from"}
            params = {k: v for k, v in data.items() if k not in reserved}
            return {**{k: v for k, v in data.items() if k in reserved}, "params": params}
        return data

    @property
    def row_label(self) -> str:
        if self.label:
            return self.label
        base = self.name
        if self.params:
            base += "(" + ",".join(f"{k}={_short(v)}" for k, v in sorted(self.params.items())) + ")"
        return f"{base} on {self.features_from}" if self.features_from else base


def _short(value: Any) -> str:
    """A parameter value for a row label: as written, unless it is a structure (a custom augmentation list),
    which becomes a short content hash so labels and run ids stay readable."""
    if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict | list) for v in value)):
        return "#" + hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]
    return str(value)


Engine = Literal["auto", "torch", "onnx"]


def _device_name(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError(f"'{value}' is not a device: use auto, cpu, cuda, cuda:N (the N-th visible GPU) or mps")
    return value


# auto (CUDA when visible, else CPU), cpu, cuda, cuda:N or mps (Apple silicon); resolved in engines.resolve_device
Device = Annotated[str, AfterValidator(_device_name)]
Threshold = Literal["global", "per_class"]
Calibrate = Literal["none", "temperature"]
Tracking = Literal["none", "mlflow", "tensorboard"]  # where runs are also logged (tracking.py)
REFERENCES = ("majority", "all-negative", "pixels", "untrained")
Reference = Literal["majority", "all-negative", "pixels", "untrained"]


class RunSpec(Spec):
    """One cell of a study: a dataset, a backbone (none for paradigms that need none), a paradigm, a seed."""

    data: DataSpec
    backbone: BackboneSpec | None = None
    paradigm: ParadigmSpec
    seed: int = 0
    device: Device = "auto"
    engine: Engine = "auto"
    batch_size: int = Field(32, gt=0)
    threshold: Threshold = Field("global", description="multi-label: one decision threshold for every class, or "
                                 "one per class, tuned on validation")
    final: bool = Field(False, description="after choosing on validation, retrain the chosen configuration on "
                        "train + val before the one test score")
    calibrate: Calibrate = Field("none", description="single-label: temperature — one temperature fitted on "
                                 "validation rescales the scores so confidences match accuracy (the record keeps "
                                 "ECE and log-loss before and after; predict, export and serve apply it)")
    reference: Reference | None = Field(None, description="set by the study on the reference rows it adds "
                                        "(what transfer buys); shown apart in the leaderboard")
    features_source: RunSpec | None = Field(None, description="set by the study on a `features_from` row: the "
                                            "cell whose trained network gives this one its features")

    @property
    def run_id(self) -> str:
        parts = [self.data.label, self.backbone.label if self.backbone else "none",
                 self.paradigm.row_label, f"seed{self.seed}", *(["final"] if self.final else [])]
        return "__".join(re.sub(r"[^A-Za-z0-9._=,@-]+", "-", p) for p in parts)


class Where(Spec):
    """Selects study cells by their labels; an empty field matches every cell."""

    dataset: str | None = None
    backbone: str | None = None
    paradigm: str | None = None


class Override(Spec):
    """Per-cell override: `set` is a partial run spec merged into every cell that `where` selects."""

    where: Where = Field(default_factory=Where)
    set: dict[str, Any]


class SpaceParam(Spec):
    """One dimension of a search space: `choices` (categorical), or a range `low`..`high` (ints when both
    are ints, unless `type: float`; `log` for a log scale, `step` for a grid). `when` makes it conditional:
    {other dimension: value or [values]}, e.g. `when: {paradigm: finetune}`."""

    choices: list[Any] | None = Field(None, min_length=1)
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    type: Literal["int", "float"] | None = None
    when: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        return {"choices": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _one_kind(self) -> SpaceParam:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None:
                raise ValueError("give choices (a list) or a range (low, high), not both")
            if any(not isinstance(c, str | int | float | bool | list | dict) and c is not None for c in self.choices):
                raise ValueError("choices must be strings, numbers, booleans, or lists / mappings (a head's hidden "
                                 "layers: [[256], [512, 128]])")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give a list of choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        return self

    @property
    def is_int(self) -> bool:
        if self.type is not None:
            return self.type == "int"
        return all(float(v).is_integer() for v in (self.low, self.high, self.step or 1))


class SearchSpec(Spec):
    """A hyper-parameter search over a study's options (`transferlab search`): Optuna explores `space`,
    each trial is one run scored on validation, and the best configuration is retrained and scored once on
    test. Space keys are paths into a run: `paradigm` / `backbone` (names), `paradigm.<param>`,
    `backbone.<field>`, `data.<field>`, or a run field such as `batch_size`."""

    space: dict[str, SpaceParam] = Field(default_factory=dict)
    objective: str | None = Field(None, description="validation metric to optimise (default: accuracy, "
                                  "multi-label micro_f1); direction inferred (log_loss, ece, hamming_loss: lower)")
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="stops hopeless trials that "
                                                          "train for epochs, from their per-epoch validation score")
    trials: int | None = Field(None, gt=0, description="the budget (default 20; grid: every point)")
    timeout: float | None = Field(None, gt=0, description="seconds after which no new trial starts")
    seed: int = Field(0, description="the sampler's seed")
    final: bool | None = Field(None, description="retrain the best configuration on train + val (default: the "
                               "study's final)")
    top: int = Field(10, gt=0, description="trials shown in the report's table")
    heartbeat: int = Field(10, gt=0, description="seconds between a running trial's heartbeats; a trial silent "
                           "for twice this is failed (its worker died) and retried")


class PruneSpec(Spec):
    """After the study: prune the winner (the best non-reference row by mean *validation* score; its first
    seed's run) at each sparsity, and score it on validation and test before and after (`transferlab prune`)."""

    sparsity: list[float] = Field(default_factory=lambda: [0.8])
    scope: Literal["head", "backbone", "all"] = Field("head", description="head: the dense layers the paradigm "
                                                      "added; backbone; all")
    structured: bool = False
    recover_epochs: int = Field(0, ge=0, description="fine-tune with the masks attached after pruning")

    @field_validator("sparsity")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if not values:
            raise ValueError("give at least one fraction in (0, 1), e.g. 0.8 or [0.5, 0.7, 0.9]")
        bad = [v for v in values if not 0 < v < 1]
        if bad:
            raise ValueError(f"{bad[0]:g}: a sparsity is the fraction of weights set to zero, strictly between 0 "
                             "and 1 (e.g. 0.8)")
        return values


class MiniSpec(Spec):
    """`transferlab study SPEC --mini`: the same study in miniature, offline on a laptop CPU. Its datasets
    replace the study's (an offline stand-in of the same shape), `backbones` swaps each backbone that has no
    offline weights for one that has (one line each: `resnet50: tf_efficientnet_lite0`, or a mapping with an
    image_size), `epochs` caps every weight-training paradigm, and the rest replaces (seeds, engine), merges into
    (search, prune) or is appended to (overrides) the study's own."""

    datasets: list[DataSpec] | None = Field(None, min_length=1)
    backbones: dict[str, BackboneSpec] = Field(default_factory=dict, description="full-size backbone (name or "
                                               "label) → its offline stand-in")
    epochs: int | None = Field(None, gt=0, description="cap on the epochs of every paradigm that trains weights")
    seeds: list[int] | None = Field(None, min_length=1)
    engine: Engine | None = Field(None, description="e.g. torch: on a few hundred images an ONNX export (~20 s "
                                  "per backbone) costs more than it saves")
    overrides: list[Override] = Field(default_factory=list)
    search: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None


class StudySpec(Spec):
    """datasets × backbones × paradigms × seeds, with per-cell overrides; `search` tunes options with Optuna
    (after the grid, or alone with `transferlab search`); `prune` prunes the winner; `mini` is the study's
    offline miniature (`--mini`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    datasets: list[DataSpec] = Field(min_length=1)
    backbones: list[BackboneSpec] = Field(default_factory=list)
    paradigms: list[ParadigmSpec] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    overrides: list[Override] = Field(default_factory=list)
    device: Device = "auto"
    engine: Engine = "auto"
    batch_size: int = Field(32, gt=0)
    threshold: Threshold = "global"
    final: bool = False
    calibrate: Calibrate = "none"
    references: bool | list[Reference] = Field(True, description="reference rows added to every dataset: true "
                                               "(all that apply), false, or a list of " + ", ".join(REFERENCES))
    tracking: Tracking = Field("none", description="also log every run to mlflow (the study a parent run, each "
                               "cell a nested run) or tensorboard (event files per run); optional extra `track`; "
                               "`--track` on the command line wins")
    tracking_uri: str | None = Field(None, description="mlflow: the tracking URI [default: $MLFLOW_TRACKING_URI, "
                                     "else sqlite:///OUT/mlflow.db]; tensorboard: the log folder [default: "
                                     "OUT/tensorboard]")
    search: SearchSpec | None = None
    prune: PruneSpec | None = None
    mini: MiniSpec | None = None


def named_entries(spec: Spec, *, datasets: bool = True) -> list[tuple[str, str, str]]:
    """(field, kind, name) for every paradigm and backbone name `spec` gives (kind "paradigm" or "backbone") and,
    with `datasets`, every dataset source that must be a builtin name or an existing path (kind "dataset"): what
    resolve.py checks against the registries and core.names against their remembered names. (`datasets=False`
    for a study run `--mini`: its full-size data may be absent where the miniature runs.)"""
    if isinstance(spec, StudySpec):
        mini = spec.mini.backbones.items() if spec.mini is not None else []
        return [*(_dataset_entries(spec.datasets, "datasets.{}.source") if datasets else []),
                *((f"backbones.{i}.name", "backbone", b.name) for i, b in enumerate(spec.backbones)),
                *((f"paradigms.{i}", "paradigm", p.name) for i, p in enumerate(spec.paradigms)),
                *((f"mini.backbones.{wanted}.name", "backbone", b.name) for wanted, b in mini)]
    if isinstance(spec, RunSpec):
        backbone = [("backbone.name", "backbone", spec.backbone.name)] if spec.backbone is not None else []
        data = _dataset_entries([spec.data], "data.source") if datasets else []
        return [*data, *backbone, ("paradigm", "paradigm", spec.paradigm.name)]
    if isinstance(spec, BackboneSpec):
        return [("name", "backbone", spec.name)]
    if isinstance(spec, ParadigmSpec):
        return [("", "paradigm", spec.name)]
    return []


def _dataset_entries(datasets: list[DataSpec], field: str) -> list[tuple[str, str, str]]:
    """The sources that name a builtin dataset or a path (not those under a tag_files folder)."""
    return [(field.format(i), "dataset", d.source) for i, d in enumerate(datasets) if d.tag_files is None]


def validated(model: type[Spec], data: Any, where: str) -> Any:
    """`model.model_validate(data)`, with pydantic's report turned into one line naming `where` and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise TransferlabError(f"{where}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(problems)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TransferlabError(f"{path}: no such spec file; give the path of a YAML study spec")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise TransferlabError(f"{path}: not valid YAML{at}; fix the syntax") from None
    if not isinstance(data, dict):
        raise TransferlabError(f"{path}: a study spec is a YAML mapping (name, datasets, backbones, ...)")
    data.setdefault("name", path.stem)
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
