"""Image augmentation: presets by name, or a user's list of torchvision.transforms.v2 transforms.

`make_augment(spec, size)` is the one factory. An augmenter maps one uint8 3×H×W tensor to another of the
same shape and dtype, and draws from torch's global RNG: the training loop saves and restores that RNG
with every checkpoint, so augmented epochs resume exactly. `augmented_copies` materialises augmented
copies once (offline augmentation), each copy from its own seed, leaving the caller's RNG untouched.

A spec (the `augment` field of the training params) is a preset name (`PRESETS`), a list of transforms
by class name with their keyword arguments (`[{name: RandomRotation, degrees: 10}]`), or the path of a
YAML file holding such a list. `check_augment` validates one, dry-running it on a small image. Adding a
preset is one `@PRESETS.register(name)` function of the training images' size.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torchvision.transforms import v2

from ..core.errors import TransferlabError
from ..core.registry import Registry, did_you_mean
from ..core.seeding import derived_seed

Augment = Callable[[torch.Tensor], torch.Tensor]
AugmentSpec = str | list[dict[str, Any]]
Size = int | tuple[int, int]

PRESETS: Registry[Callable[[Size], v2.Transform | None]] = Registry("augmentation")


@PRESETS.register("none")
def _no_augmentation(size: Size) -> None:
    return None


@PRESETS.register("light")
def _light(size: Size) -> v2.Transform:
    """Random resized crop (scale 0.5–1) + horizontal flip."""
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()])


@PRESETS.register("keras-style")
def _keras_style(size: Size) -> v2.Transform:
    """The Keras ImageDataGenerator settings tutorials copy (rotation_range=50, shear_range=0.2,
    zoom_range=[0.75, 1.25], brightness_range=[0.5, 1.5], width/height_shift_range=0.1, horizontal_flip).

    Mapping to torchvision: Keras's shear_range is an angle in degrees (keras-preprocessing ≥ 1.0.6, so
    every tf.keras), the same unit as RandomAffine's `shear`, so 0.2 stays 0.2° — nearly no shear. Keras 1
    read it in radians (0.2 rad ≈ 11.5°), which is what the copied snippet first meant; a custom list with
    `{name: RandomAffine, degrees: 0, shear: 11.5}` gives that. Keras draws the x and y zoom independently
    and fills with the nearest edge pixel; RandomAffine zooms both axes alike and fills with black.
    Shifts are fractions of the side in both libraries; brightness is PIL's enhance factor in both.
    """
    return v2.Compose([
        v2.RandomAffine(degrees=50, translate=(0.1, 0.1), scale=(0.75, 1.25), shear=0.2),
        v2.ColorJitter(brightness=(0.5, 1.5)),
        v2.RandomHorizontalFlip(),
    ])


@PRESETS.register("crop-flip-rotate")
def _crop_flip_rotate(size: Size) -> v2.Transform:
    """Inception-style crop (scale 0.08–1) + horizontal flip + rotation ±25°."""
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
                       v2.RandomHorizontalFlip(), v2.RandomRotation(25)])


@PRESETS.register("randaugment")
def _randaugment(size: Size) -> v2.Transform:
    return v2.RandAugment()  # torchvision's defaults: 2 ops at magnitude 9 of 31


# Transforms that wrap other transforms: their `transforms` argument is itself a list of specs.
_CONTAINERS = {"Compose", "RandomApply", "RandomChoice", "RandomOrder"}
_DRY_RUN_SIZE = 32


def make_augment(spec: AugmentSpec, size: Size) -> Augment | None:
    """uint8 3×H×W → uint8 3×H×W for a preset name, a custom list, or a YAML file; None for "none".

    `size` is the training images' size: presets that crop resize back to it, and custom transforms that
    take a `size` (RandomResizedCrop, RandomCrop, ...) get it.
    """
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS.create(spec, size)
    try:
        return v2.Compose(_build_all(custom_transforms(spec), size))
    except TransferlabError as exc:
        raise TransferlabError(f"augment: {exc}") from None


def custom_transforms(spec: AugmentSpec) -> list[dict[str, Any]]:
    """A custom spec as its list of transform specs (reading the YAML file when `spec` is a path)."""
    if isinstance(spec, list):
        return spec
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml") and not path.is_file():
        raise TransferlabError(
            f"unknown augmentation '{spec}'{did_you_mean(spec, PRESETS)}; give a preset ({', '.join(PRESETS)}), "
            "a list of torchvision.transforms.v2 transforms like [{name: RandomRotation, degrees: 10}], or a YAML "
            "file holding one")
    if not path.is_file():
        raise TransferlabError(f"augmentation file '{spec}' does not exist; give the path of a YAML list of "
                               "transforms (relative paths start from the working directory)")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise TransferlabError(f"augmentation file '{spec}' is not valid YAML; fix the syntax") from None
    if not isinstance(loaded, list):
        raise TransferlabError(f"augmentation file '{spec}' must hold a YAML list of transforms, like "
                               "[{name: RandomRotation, degrees: 10}]")
    return loaded


def check_augment(spec: Any) -> AugmentSpec:
    """A valid spec, with a YAML file read into its list (so a run keeps what it used); TransferlabError if not.

    Custom lists are built and dry-run on a small black image: what a transform's constructor refuses, and
    any transform that does not return a uint8 image of the input's size, is reported here, before a run.
    """
    if isinstance(spec, str) and spec in PRESETS:
        return spec
    if not isinstance(spec, str | list):
        raise TransferlabError(f"give a preset name ({', '.join(PRESETS)}), a list of transforms or "
                               f"a YAML file; got {type(spec).__name__}")
    transforms = custom_transforms(spec)
    if not transforms:
        raise TransferlabError("an empty list of transforms; give at least one, or 'none'")
    size = (_DRY_RUN_SIZE, _DRY_RUN_SIZE)
    pipeline = v2.Compose(_build_all(transforms, size))
    image = torch.zeros(3, *size, dtype=torch.uint8)
    with torch.random.fork_rng(devices=[]):  # validating must not move anyone's random stream
        try:
            out = pipeline(image)
        except Exception as exc:  # noqa: BLE001 - whatever a transform raises, the user's list is at fault
            raise TransferlabError(f"the transforms fail on a uint8 image: {_first_line(exc)}") from None
    if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or tuple(out.shape) != tuple(image.shape):
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise TransferlabError(f"the transforms must return a uint8 image of the input's size (3×H×W), "
                               f"got {got}; drop ToDtype/Normalize/Resize (the model scales and normalises) and "
                               "leave `size` out")
    return list(transforms)


def augment_batch(images: torch.Tensor, augment: Augment) -> torch.Tensor:
    """Each image of a batch through `augment`, on one intra-op thread.

    One image's transform is too small to split across threads: the fork/join overhead made keras-style
    cost 6.1 ms per 64 px image with 2 threads against 1.2 ms with 1 (2-core machine under load, measured).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.stack([augment(image) for image in images])
    finally:
        torch.set_num_threads(threads)


def augmented_copies(x: torch.Tensor, augment: Augment, copies: int, seed: int) -> Iterator[torch.Tensor]:
    """`copies` augmented versions of the images `x`, one N×3×H×W tensor per copy.

    Copy k draws from a seed derived from (seed, k) inside a forked RNG: reruns (and resumed runs) make the
    same copies, and the caller's random stream is left where it was.
    """
    for k in range(copies):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derived_seed(seed, "copy", k))  # CPU only: fork_rng restores CPU
            batch = augment_batch(x, augment)
        yield batch


# ---------------------------------------------------------------- custom lists


def _transform_classes() -> dict[str, type]:
    return {name: cls for name, cls in vars(v2).items()
            if inspect.isclass(cls) and issubclass(cls, v2.Transform) and cls is not v2.Transform}


def _build_all(specs: list[Any], size: Size, where: str = "") -> list[v2.Transform]:
    return [_build(spec, size, f"{where}transform {i + 1}") for i, spec in enumerate(specs)]


def _build(spec: Any, size: Size, where: str) -> v2.Transform:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise TransferlabError(f"{where}: each transform is a mapping with a `name`, like "
                               "{name: RandomRotation, degrees: 10}")
    classes = _transform_classes()
    name, kwargs = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    if name not in classes:
        raise TransferlabError(f"{where}: unknown transform '{name}'{did_you_mean(name, classes)}; use a "
                               f"torchvision.transforms.v2 class name, or a preset ({', '.join(PRESETS)})")
    cls = classes[name]
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    for key in kwargs:
        if key not in accepted:
            raise TransferlabError(f"{where}: {name} takes no argument '{key}'{did_you_mean(key, accepted)}; "
                                   f"it takes: {', '.join(accepted) or 'none'}")
    if name in _CONTAINERS and isinstance(kwargs.get("transforms"), list):
        kwargs["transforms"] = _build_all(kwargs["transforms"], size, f"{where}, ")
    if "size" in accepted:
        if "size" in kwargs:
            raise TransferlabError(f"{where}: {name}: leave `size` out; it is the training images' size")
        kwargs["size"] = size
    try:
        return cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a constructor's complaint is about the user's arguments
        raise TransferlabError(f"{where}: {name}({_shown(kwargs)}): {_first_line(exc)}") from None


def _shown(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in ("size", "transforms"))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
