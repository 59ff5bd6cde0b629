"""Fitted paradigms as torch modules: uint8 images → class scores, one `nn.Module` per run.

Every module here is rebuilt from a JSON description (`describe` / `build`) and then given its tensors
from a safetensors file, so loading a run never unpickles anything: `MODULES` (a `core.registry.Registry`)
finds each class by name, and a new one is one `@rebuildable` class. scikit-learn has no torch (or ONNX)
conversion for the pipelines the feature paradigms fit (skl2onnx covers ONNX only, and the parity
check, pruning and TorchScript need torch), so the few operations they use are written out here:
standardisation, an affine map, random Fourier features and a k-NN vote — each checked against
scikit-learn's own `predict_proba` in tests/test_deploy.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.kernel_approximation import RBFSampler
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..core.registry import Registry
from .backbones import Normalized, create_model
from .heads import ClassifierHead, HeadSpec, attach_head, make_head, strip_classifier
from .small_cnn import MEAN, STD, simple_cnn

NEVER = -1e4  # the logit of a class the fitted model cannot predict (softmax / sigmoid give exactly 0)

MODULES: Registry[type[nn.Module]] = Registry("deploy module")
rebuildable = MODULES.register  # class decorator: `build` finds the class by its name


def describe(module: nn.Module) -> dict[str, Any]:
    """{kind, config}: what `build` needs to make an empty module of the same shape."""
    return {"kind": type(module).__name__, **module.config}


def build(description: dict[str, Any]) -> nn.Module:
    description = dict(description)
    kind = description.pop("kind")
    if kind not in MODULES:
        raise ValueError(f"unknown module kind '{kind}' (this model needs a newer transferlab)")
    return MODULES.create(kind, **description)


@rebuildable
class Pipeline(nn.Module):
    """Steps applied in order; `frozen_features` marks a first step filled from the backbone's own weights."""

    def __init__(self, steps: list[dict[str, Any]] | list[nn.Module], frozen_features: bool = False):
        super().__init__()
        modules = [step if isinstance(step, nn.Module) else build(step) for step in steps]
        self.steps = nn.ModuleList(modules)
        self.frozen_features = frozen_features
        self.config = {"steps": [describe(m) for m in modules], "frozen_features": frozen_features}

    @property
    def needs_feature_map(self) -> bool:
        """Do the frozen features have to be the backbone's last feature map (a head that pools itself)?"""
        return self.frozen_features and getattr(self.steps[0], "needs_feature_map", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


@rebuildable
class TimmModel(nn.Module):
    """A timm architecture behind uint8 → normalised input (the layout of `Backbone.with_normalization`).

    `head`: {spec, in_shape} of a `HeadSpec` head in the classifier's place (none: timm's own classifier);
    `feature_map`: with num_classes 0, the last feature map instead of pooled features (a head that pools)."""

    def __init__(self, name: str, num_classes: int, mean: list[float], std: list[float],
                 head: dict[str, Any] | None = None, feature_map: bool = False):
        super().__init__()
        self.config = {"name": name, "num_classes": num_classes, "mean": list(mean), "std": list(std),
                       **({"head": head} if head else {}), **({"feature_map": True} if feature_map else {})}
        net = create_model(name, num_classes)
        if feature_map:
            net.reset_classifier(0, global_pool="")
        if head:
            spec = HeadSpec.model_validate(head["spec"])
            strip_classifier(net, spec)
            attach_head(net, spec, num_classes, tuple(head["in_shape"]))
        self.net = Normalized(net, mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


@rebuildable
class SimpleCnnModel(nn.Module):
    """simple-cnn / small-resnet (models/small_cnn.py); `architecture` is simple_cnn's keywords (a model saved
    before they existed has none: the default VGG-style blocks)."""

    def __init__(self, widths: list[int], num_classes: int, dropout: float, architecture: dict[str, Any] | None = None):
        super().__init__()
        self.config = {"widths": list(widths), "num_classes": num_classes, "dropout": dropout,
                       "architecture": dict(architecture or {})}
        self.net = Normalized(simple_cnn(widths, num_classes, dropout, **(architecture or {})), MEAN, STD)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


@rebuildable
class Standardize(nn.Module):
    """(x − mean) / scale, as scikit-learn's StandardScaler.transform."""

    def __init__(self, dim: int, mean: np.ndarray | None = None, scale: np.ndarray | None = None):
        super().__init__()
        self.config = {"dim": dim}
        self.register_buffer("mean", _tensor(mean, (dim,)))
        self.register_buffer("scale", _tensor(scale, (dim,), fill=1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


@rebuildable
class Affine(nn.Module):
    """x Wᵀ + b: the decision function of a fitted (multinomial, binary or one-vs-rest) logistic regression."""

    def __init__(self, dim: int, outputs: int, weight: np.ndarray | None = None, bias: np.ndarray | None = None):
        super().__init__()
        self.config = {"dim": dim, "outputs": outputs}
        # Parameters, not buffers: pruning (torch.nn.utils.prune) and a recovery fine-tune act on parameters.
        self.weight = nn.Parameter(_tensor(weight, (outputs, dim)))
        self.bias = nn.Parameter(_tensor(bias, (outputs,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias


@rebuildable
class RandomFourier(nn.Module):
    """√(2/n) · cos(x W + b): scikit-learn's RBFSampler.transform."""

    def __init__(self, dim: int, components: int, weights: np.ndarray | None = None,
                 offset: np.ndarray | None = None):
        super().__init__()
        self.config = {"dim": dim, "components": components}
        self.register_buffer("weights", _tensor(weights, (dim, components)))
        self.register_buffer("offset", _tensor(offset, (components,)))
        self.factor = math.sqrt(2.0 / components)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x @ self.weights + self.offset) * self.factor


@rebuildable
class Head(nn.Module):
    """The head of `mlp` / `head` models saved before head specs (models/heads.make_head); new ones are `SpecHead`."""

    def __init__(self, features: int, classes: int, hidden: int, dropout: float):
        super().__init__()
        self.config = {"features": features, "classes": classes, "hidden": hidden, "dropout": dropout}
        self.net = make_head(features, classes, hidden=hidden, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@rebuildable
class SpecHead(nn.Module):
    """A `HeadSpec` head (models/heads.py) on frozen features: pooled (`head`, `mlp`) or a feature map (`head`
    with a pool of its own)."""

    def __init__(self, in_shape: list[int], classes: int, spec: dict[str, Any]):
        super().__init__()
        self.config = {"in_shape": list(in_shape), "classes": classes, "spec": dict(spec)}
        self.net = ClassifierHead(HeadSpec.model_validate(spec), tuple(in_shape), classes)

    @property
    def needs_feature_map(self) -> bool:
        return self.net.spec.needs_feature_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


TTA_VIEWS = {"flip": 2, "five-crop": 5}
FIVE_CROP_SHARE = 0.875  # of each side: the crops timm's and torchvision's eval transforms take from a resize


@rebuildable
class TtaViews(nn.Module):
    """`tta:`'s first step: N images → k·N views (view-major): flip = the image and its mirror; five-crop = the four
    corners and the centre at 87.5 % of each side, each resized back (bilinear, antialiased). `TtaMean` after the
    network averages their logits back to N rows."""

    def __init__(self, mode: str):
        super().__init__()
        self.config = {"mode": mode}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.config["mode"] == "flip":
            return torch.cat([images, images.flip(-1)])
        height, width = images.shape[-2:]
        h, w = round(height * FIVE_CROP_SHARE), round(width * FIVE_CROP_SHARE)
        tops_lefts = [(0, 0), (0, width - w), (height - h, 0), (height - h, width - w),
                      ((height - h) // 2, (width - w) // 2)]
        crops = torch.cat([images[..., top:top + h, left:left + w] for top, left in tops_lefts]).float()
        return nn.functional.interpolate(crops, size=(height, width), mode="bilinear", antialias=True,
                                         align_corners=False)


@rebuildable
class TtaMean(nn.Module):
    """k·N rows of logits (view-major, `TtaViews`'s order) → the N rows' mean over the k views."""

    def __init__(self, views: int):
        super().__init__()
        self.config = {"views": views}

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.reshape(self.config["views"], -1, logits.shape[-1]).mean(dim=0)


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """`model` (uint8 images → logits) behind test-time views and their mean; `model` itself for tta: none."""
    if mode == "none":
        return model
    return nn.Sequential(TtaViews(mode), model, TtaMean(TTA_VIEWS[mode]))


@rebuildable
class Temperature(nn.Module):
    """`calibrate: temperature`'s last step: scores → β · log(p + ε), the calibrated logits whose softmax is what the
    run scored (`calibration.py`'s formula). `scores` says what comes in: logits (softmax gives p) or
    probabilities (a kNN's vote shares)."""

    def __init__(self, beta: float, scores: str, eps: float = 1e-12):
        super().__init__()
        self.config = {"beta": float(beta), "scores": scores, "eps": float(eps)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_p = x.double().log_softmax(dim=1) if self.config["scores"] == "logits" else x.double().log()
        # log(p + eps) as logaddexp(log p, log eps): written as a sum, torch.onnx's optimiser drops the "+ 1e-12"
        # as a no-op, and the exported scores then differ by 1e-2 where p is near 1e-11 (measured)
        eps = torch.full_like(log_p, math.log(self.config["eps"]))
        return (self.config["beta"] * torch.logaddexp(log_p, eps)).float()


@rebuildable
class KnnVote(nn.Module):
    """k-nearest-neighbour vote over reference features shipped inside the model (KNeighborsClassifier's
    brute-force predict_proba: the share of the k nearest, optionally weighted by 1/distance, per class)."""

    def __init__(self, references: int, dim: int, classes: int, k: int, metric: str, weights: str,
                 features: np.ndarray | None = None, targets: np.ndarray | None = None):
        super().__init__()
        self.config = {"references": references, "dim": dim, "classes": classes, "k": k, "metric": metric,
                       "weights": weights}
        self.k, self.metric, self.weighting = k, metric, weights
        if features is not None and metric == "cosine":
            features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        self.register_buffer("features", _tensor(features, (references, dim)))
        self.register_buffer("targets", _tensor(targets, (references, classes)))  # one-hot or 0/1 labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.metric == "cosine":
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
            distances = (1 - x @ self.features.T).clamp(0, 2)
        else:  # euclidean, written out (cdist has no ONNX export)
            squared = (x * x).sum(1, keepdim=True) - 2 * x @ self.features.T + (self.features ** 2).sum(1)
            distances = squared.clamp_min(0).sqrt()
        nearest, index = distances.topk(self.k, dim=1, largest=False)
        if self.weighting == "distance":  # 1/d; an exact match (d = 0) takes the whole vote, as in scikit-learn
            exact = nearest == 0
            weights = torch.where(exact.any(1, keepdim=True), exact.float(), 1 / nearest.clamp_min(1e-30))
        else:
            weights = torch.ones_like(nearest)
        votes = (self.targets[index] * weights.unsqueeze(-1)).sum(1)  # multi-label: per label, the share with it
        return votes / weights.sum(1, keepdim=True)


def _tensor(value, shape: tuple[int, ...], fill: float = 0.0) -> torch.Tensor:
    if value is None:
        return torch.full(shape, fill, dtype=torch.float32)
    return torch.as_tensor(np.asarray(value, dtype=np.float32).reshape(shape))


# ---------------------------------------------------------------- scikit-learn → modules


def from_sklearn_pipeline(pipeline, n_classes: int, multi_label: bool) -> list[nn.Module]:
    """The steps of a fitted StandardScaler → [RBFSampler →] logistic regression pipeline (linear, rff)."""
    steps: list[nn.Module] = []
    for _, step in pipeline.steps[:-1]:
        if isinstance(step, StandardScaler):
            steps.append(Standardize(len(step.mean_), step.mean_, step.scale_))
        elif isinstance(step, RBFSampler):
            steps.append(RandomFourier(*step.random_weights_.shape, step.random_weights_, step.random_offset_))
        else:
            raise ValueError(f"no torch form for {type(step).__name__}")
    steps.append(logistic_affine(pipeline.steps[-1][1], n_classes, multi_label))
    return steps


def logistic_affine(model, n_classes: int, multi_label: bool) -> Affine:
    """Logits over all n_classes whose softmax (sigmoid, multi-label) is the model's predict_proba."""
    if multi_label:  # OneVsRestClassifier: a binary model per label (constant for a label never / always seen)
        rows = [_binary_logit(e) for e in model.estimators_]
        weight, bias = np.stack([w for w, _ in rows]), np.array([b for _, b in rows])
        return Affine(weight.shape[1], n_classes, weight, bias)
    coef, intercept, seen = model.coef_, model.intercept_, model.classes_.astype(int)
    weight = np.zeros((n_classes, coef.shape[1]))
    bias = np.full(n_classes, NEVER)
    if len(seen) == 2:  # binary: predict_proba = [1 − σ(z), σ(z)] = softmax([0, z])
        weight[seen[1]], bias[seen[0]], bias[seen[1]] = coef[0], 0.0, intercept[0]
    else:
        weight[seen], bias[seen] = coef, intercept
    return Affine(coef.shape[1], n_classes, weight, bias)


def _binary_logit(estimator) -> tuple[np.ndarray, float]:
    if hasattr(estimator, "coef_"):
        return estimator.coef_[0], float(estimator.intercept_[0])
    constant = float(np.asarray(estimator.y_).ravel()[0])  # scikit-learn's _ConstantPredictor
    return np.zeros(estimator.n_features_in_), -NEVER if constant else NEVER


def from_knn(model, n_classes: int, multi_label: bool) -> KnnVote:
    # KNeighborsClassifier keeps its training set only in private attributes (_fit_X, _y); there is no public one.
    features = np.asarray(model._fit_X, dtype=np.float32)
    y = np.asarray(model._y)
    if multi_label:  # scikit-learn encodes each output's classes; map back to the 0/1 label
        targets = np.column_stack([np.asarray(classes)[y[:, j]] == 1 for j, classes in enumerate(model.classes_)])
    else:
        targets = np.eye(n_classes)[np.asarray(model.classes_)[y].astype(int)]
    return KnnVote(len(features), features.shape[1], n_classes, model.n_neighbors, model.metric, model.weights,
                   features, targets.astype(np.float32))
