"""New classification heads: one spec (`HeadSpec`) for every paradigm that trains a head (head, finetune, scratch,
bit on a network; mlp on cached features).

A head is pool → (dense → activation → dropout) per hidden layer → the classifier (dropout first when there is
no hidden layer). `pool: avg` takes the backbone's own pooled features (what timm's `reset_classifier(0)`
leaves); the other pools take its last feature map (`global_pool=""`): `max` is global max pooling,
`max-flatten` Keras's MaxPool2D(2) → Flatten (study 003's "extended head"), `flatten` the whole map
flattened. `l1` / `l2` are Keras's kernel regularisers: penalties on the dense layers' weights added to the
loss. `attach_head` puts a head where a timm (or adopted torchvision) network keeps its classifier, so its
parameter names stay under the classifier's (unfreeze plans, lr groups, pruning's head scope find it there).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..config import Spec
from ..core.errors import TransferlabError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh}
Pool = Literal["avg", "max", "max-flatten", "flatten"]


class HeadSpec(Spec):
    """The new head: pooling, hidden dense layers, their activation and dropout, penalties, initialisation."""

    pool: Pool = Field("avg", description="avg: the backbone's own pooled features; max: global max pooling of the "
                       "last feature map; max-flatten: MaxPool2D(2) then Flatten (Keras); flatten: the whole map")
    hidden: list[int] = Field(default_factory=list, description="units of each hidden dense layer, input to output")
    activation: Literal[tuple(ACTIVATIONS)] = Field("relu", description="after each hidden dense layer")
    dropout: float | list[float] = Field(0.0, description="after each hidden layer (a list: one rate per hidden "
                                         "layer); before the classifier when there is none")
    l1: float = Field(0.0, ge=0, description="L1 penalty on the dense layers' weights, added to the loss")
    l2: float = Field(0.0, ge=0, description="L2 penalty (λ·Σw², Keras's kernel_regularizer) on the dense "
                      "layers' weights, added to the loss")
    init: Literal["default", "glorot", "he", "zeros"] = Field(
        "default", description="the dense layers' weights: torch's default, Glorot-uniform (Keras's), He-normal, or "
        "zeros (BiT's head); biases 0")

    @model_validator(mode="after")
    def _rates(self):
        rates = self.dropout if isinstance(self.dropout, list) else [self.dropout]
        if any(not 0 <= rate < 1 for rate in rates):
            raise ValueError(f"dropout rates are in [0, 1), not {self.dropout}")
        if isinstance(self.dropout, list) and len(self.dropout) != len(self.hidden):
            raise ValueError(f"dropout: a list gives one rate per hidden layer ({len(self.hidden)}), not "
                             f"{len(self.dropout)}; or give one rate for all")
        return self

    def rates(self) -> list[float]:
        """The dropout after each hidden layer (with none: the one before the classifier)."""
        if isinstance(self.dropout, list):
            return self.dropout
        return [self.dropout] * max(1, len(self.hidden))

    @property
    def needs_feature_map(self) -> bool:
        return self.pool != "avg"


class ClassifierHead(nn.Module):
    """`spec` on inputs of `in_shape` (C for pooled features, C×H×W for a feature map) → n_classes logits."""

    def __init__(self, spec: HeadSpec, in_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.spec, self.in_shape = spec, tuple(in_shape)
        if spec.needs_feature_map and len(self.in_shape) != 3:
            raise TransferlabError(f"head.pool: {spec.pool} needs a C×H×W feature map, but the network gives "
                                   f"features of shape {list(self.in_shape)}; use pool: avg")
        self.dense = dense_layers(pooled_size(spec.pool, self.in_shape), n_classes, spec)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.pool == "max":
            return x.amax(dim=(2, 3))
        if self.spec.pool == "max-flatten":
            return nn.functional.max_pool2d(x, 2).flatten(1)
        if self.spec.pool == "flatten":
            return x.flatten(1)
        return x.flatten(1)  # avg: pooled by the backbone already (N×C, or N×C×1×1 before a conv-style classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.pool(x))

    def penalty(self) -> torch.Tensor | None:
        """l1·Σ|w| + l2·Σw² over the dense weights, or None when both are 0."""
        weights = [m.weight for m in self.dense if isinstance(m, nn.Linear)]
        terms = []
        if self.spec.l1:
            terms.append(self.spec.l1 * sum(w.abs().sum() for w in weights))
        if self.spec.l2:
            terms.append(self.spec.l2 * sum((w * w).sum() for w in weights))
        return sum(terms) if terms else None


def pooled_size(pool: str, in_shape: tuple[int, ...]) -> int:
    if pool == "avg":
        return math.prod(in_shape)
    channels, height, width = in_shape
    if pool == "max":
        return channels
    if pool == "max-flatten":
        if height < 2 or width < 2:
            raise TransferlabError(f"head.pool: max-flatten halves the {height}×{width} feature map, which is too "
                                   "small; use a larger image_size or pool: flatten")
        return channels * (height // 2) * (width // 2)
    return channels * height * width


def dense_layers(n_in: int, n_classes: int, spec: HeadSpec) -> nn.Sequential:
    """(dense → activation → dropout) per hidden layer, then the classifier; with no hidden layer, dropout →
    classifier. Layers are drawn from torch's global RNG in order (seed it around the call)."""
    layers: list[nn.Module] = []
    for units, rate in zip(spec.hidden, spec.rates(), strict=False):
        layers += [nn.Linear(n_in, units), ACTIVATIONS[spec.activation](), nn.Dropout(rate)]
        n_in = units
    if not spec.hidden:
        layers.append(nn.Dropout(spec.rates()[0]))
    head = nn.Sequential(*layers, nn.Linear(n_in, n_classes))
    initialize_dense(head, spec.init)
    return head


def initialize_dense(head: nn.Module, init: str) -> None:
    if init == "default":
        return
    for module in head.modules():
        if isinstance(module, nn.Linear):
            if init == "zeros":
                nn.init.zeros_(module.weight)
            elif init == "glorot":
                nn.init.xavier_uniform_(module.weight)
            else:  # Keras's he_normal: fan-in, for ReLU
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)


def make_head(n_features: int, n_classes: int, *, hidden: int = 0, dropout: float = 0.0) -> nn.Sequential:
    """The dense part of a head on pooled features: dropout → linear when `hidden` is 0, else linear → ReLU →
    dropout → linear (the shape of models saved before head specs existed; `modules.Head` rebuilds them)."""
    return dense_layers(n_features, n_classes, HeadSpec(hidden=[hidden] if hidden else [], dropout=dropout))


def classifier_path(net: nn.Module) -> str:
    """Where the network keeps its classifier (timm's pretrained config says; adopted torchvision nets too)."""
    return net.default_cfg.get("classifier", "classifier")


def classifier_input_shape(net: nn.Module, input_hw: tuple[int, int]) -> tuple[int, ...]:
    """The shape of what one image gives the (stripped) classifier's place, from a forward pass of one blank
    image: what the network itself outputs may differ (timm's ResNetV2 flattens after its 1×1-conv classifier)."""
    seen: list[tuple[int, ...]] = []
    hook = net.get_submodule(classifier_path(net)).register_forward_pre_hook(
        lambda _module, args: seen.append(tuple(args[0].shape[1:])))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, *input_hw, device=next(net.parameters()).device))
    finally:
        hook.remove()
        net.train(was_training)
    return seen[0]


def strip_classifier(net: nn.Module, spec: HeadSpec) -> None:
    """Remove the classifier (timm's `reset_classifier(0)`); a head that pools itself also removes the pooling."""
    if not spec.needs_feature_map:
        net.reset_classifier(0)
        return
    if getattr(net, "torchvision_class", None) is not None:  # torchvision's forward pools and flattens in place
        raise TransferlabError(f"head.pool: {spec.pool} needs the last feature map, which transferlab takes from "
                               f"timm models only ({type(net).__name__} is torchvision's); use pool: avg or a timm "
                               "model")
    net.reset_classifier(0, global_pool="")


def attach_head(net: nn.Module, spec: HeadSpec, n_classes: int, in_shape: tuple[int, ...]) -> ClassifierHead:
    """Put a new `ClassifierHead` where `net` keeps its classifier (after `strip_classifier`); returns it."""
    head = ClassifierHead(spec, in_shape, n_classes).to(next(net.parameters()).device)
    net.set_submodule(classifier_path(net), head)
    net.num_classes = n_classes
    return head


def with_head(net: nn.Module, spec: HeadSpec, n_classes: int, input_hw: tuple[int, int]) -> nn.Module:
    """`net` (changed in place) with its classifier replaced by `spec`'s head for `n_classes`, sized by a dry run
    at `input_hw`. The head's weights come from torch's global RNG: seed it around the call."""
    strip_classifier(net, spec)
    attach_head(net, spec, n_classes, classifier_input_shape(net, input_hw))
    return net


def head_penalty(model: nn.Module):
    """`() → tensor`: the penalties of every `ClassifierHead` inside `model`; None when none has one."""
    heads = [m for m in model.modules() if isinstance(m, ClassifierHead) and (m.spec.l1 or m.spec.l2)]
    if not heads:
        return None
    return lambda: sum(head.penalty() for head in heads)


class WithHead(Spec):
    """Params of a paradigm that trains a new head: `head:` its spec (none: the paradigm's own default)."""

    head: HeadSpec | None = Field(None, description="the new head: {pool: avg | max | max-flatten | flatten, hidden: "
                                  "[units, ...], activation, dropout, l1, l2, init: default | glorot | he}; none: "
                                  "one linear layer on the backbone's pooled features")


def shorthand_head(params: Spec, hidden: int, dropout: float, l1: float = 0.0) -> HeadSpec:
    """`params.head`, or the head that the shorthands `hidden: N` / `dropout` / `l1` describe; both given is refused
    by `check_one_head_form`."""
    if params.head is not None:
        return params.head
    return HeadSpec(hidden=[hidden] if hidden else [], dropout=dropout, l1=l1)


def check_one_head_form(params: Spec, shorthands: tuple[str, ...]) -> None:
    given = sorted(params.model_fields_set & set(shorthands))
    if params.head is not None and given:
        raise ValueError(f"give head: {{...}} or the shorthand {', '.join(given)}, not both; put "
                         f"{', '.join(given)} inside head")
