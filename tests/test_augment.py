"""Augmentation: presets, custom transform lists (inline and YAML), one-line errors, offline copies, MixUp /
CutMix, and exact resume with all of them on — on real digits images decoded at 32 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from transferlab.config import DataSpec, RunSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import open_pools
from transferlab.data.augment import PRESETS, augmented_copies, make_augment
from transferlab.data.decode import decode_images
from transferlab.paradigms import create_paradigm
from transferlab.resolve import resolved
from transferlab.train.loop import Images, _mix, fit, offline_training_set
from transferlab.train.optim import param_groups
from transferlab.train.params import TrainParams


@pytest.fixture(scope="module")
def digits():
    """300 real digits as uint8 3×32×32 images (what a training paradigm's view gives the loop)."""
    source = open_pools(DataSpec(source="digits")).train
    view = v2.Compose([v2.PILToTensor(), v2.Resize(32, antialias=True), v2.CenterCrop(32)])
    x, _, _ = decode_images(source, np.arange(300), view)
    return x, torch.as_tensor(source.labels[:300])


@pytest.mark.parametrize("preset", [name for name in PRESETS if name != "none"])
def test_every_preset_changes_images_but_keeps_shape_and_dtype(preset, digits):
    x, _ = digits
    augment = make_augment(preset, 32)
    torch.manual_seed(0)
    out = torch.stack([augment(image) for image in x[:40]])
    assert out.shape == x[:40].shape and out.dtype == torch.uint8
    assert (out != x[:40]).flatten(1).any(1).float().mean() > 0.5  # most images changed
    assert make_augment("none", 32) is None


def test_augmentation_draws_from_torchs_global_rng(digits):
    """The loop saves and restores that RNG for exact resume; a reseed must replay the same augmentations."""
    x, _ = digits
    augment = make_augment("keras-style", 32)
    torch.manual_seed(5)
    first = torch.stack([augment(image) for image in x[:20]])
    torch.manual_seed(5)
    assert torch.equal(first, torch.stack([augment(image) for image in x[:20]]))


def test_offline_copies_are_identical_for_a_seed_and_leave_the_callers_rng_alone(digits):
    x, _ = digits
    augment = make_augment("crop-flip-rotate", 32)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = list(augmented_copies(x[:30], augment, 2, seed=7))
    assert torch.equal(torch.get_rng_state(), before)
    b = list(augmented_copies(x[:30], augment, 2, seed=7))
    c = list(augmented_copies(x[:30], augment, 2, seed=8))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])  # copies differ, seeds differ


def test_augment_copies_trains_on_originals_plus_copies(digits):
    x, y = digits
    p = TrainParams(augment="light", augment_copies=2)
    data, notes = offline_training_set(Images(x[:50], y[:50]), p, seed=0, n_classes=10)
    again, _ = offline_training_set(Images(x[:50], y[:50]), p, seed=0, n_classes=10)
    assert len(data) == 150 and notes == {"train_images": 150}
    assert torch.equal(data.x[:50], x[:50]) and torch.equal(data.y, y[:50].repeat(3))
    assert torch.equal(data.x, again.x)  # a rerun builds the same set
    with pytest.raises(ValueError, match="augment_copies needs an augmentation"):
        TrainParams(augment="none", augment_copies=2)


def test_a_custom_list_inline_or_in_a_yaml_file_builds_the_listed_transforms(digits, tmp_path):
    listed = [{"name": "RandomRotation", "degrees": 10}, {"name": "RandomHorizontalFlip"},
              {"name": "RandomApply", "p": 0.5, "transforms": [{"name": "RandomResizedCrop", "scale": [0.6, 1.0]}]}]
    path = tmp_path / "aug.yaml"
    path.write_text("- {name: RandomRotation, degrees: 10}\n- {name: RandomHorizontalFlip}\n"
                    "- {name: RandomApply, p: 0.5, transforms: [{name: RandomResizedCrop, scale: [0.6, 1.0]}]}\n")
    for spec in (listed, str(path)):
        p = TrainParams(augment=spec)
        assert p.augment == listed  # a file is read into the params, so the run keeps what it used
        pipeline = make_augment(p.augment, 32)
        rotate, flip, apply = pipeline.transforms
        assert isinstance(rotate, v2.RandomRotation) and list(rotate.degrees) == [-10, 10]
        assert isinstance(flip, v2.RandomHorizontalFlip)
        (crop,) = apply.transforms
        assert isinstance(crop, v2.RandomResizedCrop) and crop.size == (32, 32)  # the training size, filled in
        out = pipeline(digits[0][0])
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


@pytest.mark.parametrize("augment, message", [
    ("ligth", r"augment: unknown augmentation 'ligth' \(did you mean 'light'\?\); give a preset \(none, light, "),
    ([{"name": "RandomRotaton", "degrees": 5}], r"augment: transform 1: unknown transform 'RandomRotaton' "
                                                r"\(did you mean 'RandomRotation'\?\)"),
    ([{"name": "RandomRotation", "degrez": 5}], r"RandomRotation takes no argument 'degrez' \(did you mean "
                                                r"'degrees'\?\)"),
    ([{"name": "RandomRotation", "degrees": -5}], r"RandomRotation\(degrees=-5\): .*positive"),
    ([{"name": "ToDtype", "dtype": "float32"}], r"augment: transform 1: ToDtype"),
    ([{"name": "Normalize", "mean": [0.5] * 3, "std": [0.2] * 3}], r"augment: the transforms fail on a uint8"),
    ("missing.yaml", r"augmentation file 'missing.yaml' does not exist"),
])
def test_a_bad_augmentation_is_one_line_naming_the_field_and_the_fix(augment, message):
    spec = {"data": "digits", "paradigm": {"name": "simple-cnn", "augment": augment}}
    with pytest.raises(TransferlabError, match=message) as caught:
        resolved(RunSpec, spec, "study.yaml")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("study.yaml: paradigm: ")


def test_cutmix_pastes_a_box_from_the_partner_and_lambda_is_the_kept_area(digits):
    x, _ = digits
    torch.manual_seed(0)
    for _ in range(5):
        mixed, (lam, partner) = _mix(x[:16], mixup=0.0, cutmix=1.0)
        from_self = (mixed == x[:16].float()).all(1)  # per pixel: unchanged (partners differ there)
        from_partner = (mixed == x[:16][partner].float()).all(1)
        assert (from_self | from_partner).all()
        pasted = ~from_self[0] & from_partner[0]
        assert 1 - pasted.float().mean() == pytest.approx(lam, abs=0.05)  # equal pixels may count as kept


def test_mixup_blends_each_image_with_its_partner_by_lambda(digits):
    x, _ = digits
    torch.manual_seed(1)
    mixed, (lam, partner) = _mix(x[:8], mixup=0.4, cutmix=0.0)
    assert torch.allclose(mixed, lam * x[:8].float() + (1 - lam) * x[:8][partner].float(), atol=1e-3)
    unmixed, mix = _mix(x[:8], 0.0, 0.0)
    assert unmixed is x[:8] or torch.equal(unmixed, x[:8]) and mix is None


def test_head_refuses_mixing_and_bit_refuses_offline_copies():
    with pytest.raises(ValueError, match="mixup and cutmix are not available for head"):
        create_paradigm("head", {"cutmix": 1.0}, n_classes=3, seed=0)
    with pytest.raises(ValueError, match="bit crops every step by its rule"):
        create_paradigm("bit", {"augment_copies": 1}, n_classes=3, seed=0)


def test_a_run_with_augmentation_mixup_and_cutmix_resumes_exactly_after_a_crash(digits, tmp_path):
    """Checkpoint after epoch 1, crash in epoch 2, resume: the same history as an uninterrupted run."""
    x, y = digits
    small = torch.nn.functional.interpolate(x.float(), size=16).to(torch.uint8)
    train, val = Images(small[:120], y[:120]), Images(small[200:240], y[200:240])
    p = TrainParams(epochs=3, lr=0.01, optimizer="adamw", schedule="cosine", augment="keras-style", mixup=0.4,
                    cutmix=1.0, sampler="weighted", batch_size=40)

    def go(folder, resume=False, crash_at_call=None):
        steps = iter(range(10**6))

        def penalty():  # adds 0.0 (bit-identical loss); raises at a chosen step to simulate a kill
            if next(steps) == crash_at_call:
                raise KeyboardInterrupt
            return 0.0

        model = create_paradigm("simple-cnn", {"image_size": 16}, n_classes=10, seed=0).build_model((16, 16))
        return fit(model, param_groups([(list(model.parameters()), p.lr)], 0.0), train, val, p, n_classes=10,
                   seed=0, device=torch.device("cpu"), checkpoints=folder, resume=resume, penalty=penalty)

    straight = go(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        go(tmp_path / "killed", crash_at_call=8)  # 3 steps per epoch, 2 loss calls per mixed step: in epoch 2
    resumed = go(tmp_path / "killed", resume=True)
    assert resumed.resumed_from == 1

    def strip(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert strip(resumed.history) == strip(straight.history)
