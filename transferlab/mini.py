"""`transferlab study SPEC --mini`: a study's offline miniature, derived from its `mini:` block.

A reference study names datasets that download and backbones whose weights come from the hub; its
miniature keeps every row of the grid but swaps in what this machine has (config.MiniSpec): stand-in
datasets of the same shape, offline backbones for those without offline weights (one line each, and the
row labels say which backbone each one stands in for), a cap on training epochs, fewer seeds and trials.
"""

from __future__ import annotations

from typing import Any

from .config import BackboneSpec, MiniSpec, StudySpec, deep_merge, validated
from .core.errors import TransferlabError
from .models.backbones import resolve_weights_choice
from .paradigms import get_paradigm_class


def miniature(spec: StudySpec) -> tuple[StudySpec, list[str]]:
    """The miniature of `spec` (named `<name>-mini`) and one line per swapped backbone."""
    if spec.mini is None:
        raise TransferlabError(f"study '{spec.name}': no mini: block, so there is no miniature; add one (see "
                               "docs/studies/index.md) or run the study without --mini")
    mini = spec.mini
    data = spec.model_dump(mode="json", exclude_defaults=True, exclude={"mini"})
    data["name"] = f"{spec.name}-mini"
    if mini.datasets:
        data["datasets"] = [d.model_dump(mode="json", exclude_defaults=True) for d in mini.datasets]
    for key in ("seeds", "engine"):
        if getattr(mini, key) is not None:
            data[key] = getattr(mini, key)
    data["overrides"] = data.get("overrides", []) + [o.model_dump(mode="json", exclude_defaults=True)
                                                     for o in mini.overrides]
    for key in ("search", "prune"):
        if getattr(mini, key) is not None:
            if key not in data:
                raise TransferlabError(f"study '{spec.name}': mini.{key} changes a {key}: block the study lacks")
            data[key] = deep_merge(data[key], getattr(mini, key))
    swaps = [stand_in(spec, mini, b) for b in spec.backbones]
    data["backbones"] = [b.model_dump(mode="json", exclude_defaults=True) for b, _ in swaps]
    if mini.epochs is not None:
        data["paradigms"] = [capped(p, mini.epochs) for p in data["paradigms"]]
    return validated(StudySpec, data, f"study '{spec.name}' --mini"), [line for _, line in swaps if line]


def stand_in(spec: StudySpec, mini: MiniSpec, backbone: BackboneSpec) -> tuple[BackboneSpec, str | None]:
    """The backbone the miniature uses instead of `backbone`, and the line that says so (None: kept)."""
    entry = mini.backbones.get(backbone.label) or mini.backbones.get(backbone.name)
    if entry is None:
        if resolve_weights_choice(backbone) == "hub":
            raise TransferlabError(f"study '{spec.name}' --mini: backbone {backbone.label} has no offline weights; "
                                   f"add a stand-in under mini.backbones, e.g. {backbone.name}: tf_efficientnet_lite0")
        return backbone, None  # offline, random or a local file: runs here as it is
    fields = entry.model_dump(exclude_defaults=True)
    if "weights" not in fields and backbone.weights == "random":
        fields["weights"] = "random"  # a from-scratch row stays from scratch
    if "image_size" not in fields and backbone.image_size:
        fields["image_size"] = backbone.image_size
    swapped = BackboneSpec(**fields, stands_in_for=backbone.label)
    why = "no offline weights" if resolve_weights_choice(backbone) == "hub" else "smaller for this machine"
    return swapped, f"--mini: {backbone.label} → {swapped.label.removesuffix(f' for {backbone.label}')} ({why})"


def capped(paradigm: dict[str, Any], epochs: int) -> dict[str, Any]:
    """A paradigm entry with its training epochs capped (paradigms that train no weights are unchanged)."""
    cls = get_paradigm_class(paradigm["name"])
    if cls.input != "images":
        return paradigm
    fields = cls.Params.model_fields
    params = dict(paradigm.get("params", {}))
    for field in cls.epoch_fields:  # the paradigm says which of its params count epochs
        current = params.get(field, fields[field].default)
        if current == 0:  # e.g. finetune's head_epochs: 0 is "no such phase", not a count to cap
            continue
        params[field] = epochs if current is None else min(current, epochs)
    return {**paradigm, "params": params}
