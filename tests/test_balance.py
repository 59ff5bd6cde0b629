"""Class imbalance on real (imbalanced subsets of) scikit-learn digits: loss weights, balancing samplers and
their torchrun shards, offline oversampling, multi-label weights, and class_weight for the linear probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import recall_score
from sklearn.utils.class_weight import compute_class_weight
from torchvision.transforms import v2

from transferlab.config import BackboneSpec, DataSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import open_pools
from transferlab.data.balance import (
    class_weights,
    epoch_length,
    label_frequency_sample_weights,
    oversample_plan,
    pos_weight,
    sampled_order,
)
from transferlab.data.decode import decode_images
from transferlab.models import load_backbone
from transferlab.paradigms import create_paradigm
from transferlab.paradigms.trained import TrainingContext
from transferlab.train import loop
from transferlab.train.loop import Images, fit, offline_training_set
from transferlab.train.optim import make_loss, param_groups
from transferlab.train.params import TrainParams


@pytest.fixture(scope="module")
def source():
    return open_pools(DataSpec(source="digits")).train


@pytest.fixture(scope="module")
def imbalanced(source):
    """Indices of an imbalanced digits subset: class c keeps 5 + 15·c images (5 … 140)."""
    return np.concatenate([np.flatnonzero(source.labels == c)[:5 + 15 * c] for c in range(10)])


def test_weighted_sampler_draws_classes_about_equally_and_reproducibly(source, imbalanced):
    labels = source.labels[imbalanced]
    orders = [sampled_order(labels, "weighted", seed=0, epoch=e) for e in range(10)]
    assert all(len(order) == len(labels) == epoch_length(labels, "weighted") for order in orders)
    share = np.bincount(labels[torch.cat(orders).numpy()], minlength=10) / (10 * len(labels))
    assert np.abs(share - 0.1).max() < 0.02  # the raw subset ranges from 0.7 % to 19 %
    assert torch.equal(orders[3], sampled_order(labels, "weighted", seed=0, epoch=3))
    assert not torch.equal(orders[3], orders[4]) and not torch.equal(orders[3], sampled_order(labels, "weighted", 1, 3))


def test_undersample_draws_the_smallest_class_count_from_every_class(source, imbalanced):
    labels = source.labels[imbalanced]
    first, second = (sampled_order(labels, "undersample", seed=0, epoch=e).numpy() for e in (0, 1))
    assert epoch_length(labels, "undersample") == len(first) == 50
    assert np.bincount(labels[first]).tolist() == [5] * 10
    assert len(set(first.tolist())) == 50  # without replacement
    assert set(first.tolist()) != set(second.tolist())  # each epoch its own draw from the big classes


def test_under_torchrun_each_rank_takes_an_equal_shard_of_the_same_full_order(source, imbalanced, monkeypatch):
    labels = source.labels[imbalanced]
    full = sampled_order(labels, "weighted", seed=0, epoch=2)
    shards = []
    for r in range(3):
        monkeypatch.setattr(loop, "world_size", lambda: 3)
        monkeypatch.setattr(loop, "rank", lambda r=r: r)
        shards.append(loop.epoch_order(len(labels), 0, 2, labels=torch.as_tensor(labels), sampler="weighted"))
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-len(full) // 3)
    dealt = torch.stack(shards, 1).flatten()  # rank r holds positions r, r + 3, ... of the (padded) order
    assert torch.equal(dealt[:len(full)], full)


def test_effective_number_weights_follow_cui_et_al(source, imbalanced):
    labels = source.labels[imbalanced]
    counts = np.bincount(labels)
    for beta in (0.9, 0.99, 0.999):
        raw = (1 - beta) / (1 - beta ** counts)
        expected = raw / raw.sum() * 10
        assert np.allclose(class_weights(labels, 10, "effective", beta), expected, rtol=1e-5)
    assert np.allclose(class_weights(labels, 10, "balanced"),
                       compute_class_weight("balanced", classes=np.arange(10), y=labels))
    assert class_weights(labels, 12, "balanced")[10:].tolist() == [1.0, 1.0]  # classes absent from training
    assert class_weights(labels, 10, "none") is None
    loss = make_loss(TrainParams(class_weights="effective", effective_beta=0.99), labels, 10)
    assert np.allclose(loss.weight.numpy(), class_weights(labels, 10, "effective", 0.99))


@pytest.fixture(scope="module")
def imbalanced_images(source, imbalanced):
    view = v2.Compose([v2.PILToTensor(), v2.Resize(16, antialias=True), v2.CenterCrop(16)])
    x, _, _ = decode_images(source, imbalanced, view)
    return x, torch.as_tensor(source.labels[imbalanced])


def test_oversample_to_gives_exactly_n_per_small_class_and_leaves_large_ones_alone(imbalanced_images):
    x, y = imbalanced_images
    p = TrainParams(oversample_to=60, augment="none")  # copies then use light
    data, notes = offline_training_set(Images(x, y), p, seed=0, n_classes=10)
    counts = np.bincount(data.y.numpy(), minlength=10)
    before = np.bincount(y.numpy(), minlength=10)
    assert counts.tolist() == [max(60, n) for n in before] == notes["train_images_per_class"]
    assert torch.equal(data.x[:len(x)], x) and torch.equal(data.y[:len(y)], y)  # originals kept, first
    copies, sources = data.x[len(x):], oversample_plan(y.numpy(), 60)
    assert torch.equal(data.y[len(y):], y[sources])
    assert (copies != x[sources]).flatten(1).any(1).float().mean() > 0.5  # augmented, not duplicated
    again, _ = offline_training_set(Images(x, y), p, seed=0, n_classes=10)
    assert torch.equal(again.x, data.x)  # seeded: a rerun gets the same copies
    times = np.bincount(sources)[np.flatnonzero(y.numpy() == 0)]  # class 0: 55 copies of 5 originals
    assert times.tolist() == [11] * 5  # spread evenly over the originals, not piled onto a few


def test_balancing_in_the_loop_is_reported_in_its_notes(imbalanced_images):
    x, y = imbalanced_images
    p = TrainParams(epochs=1, sampler="undersample", oversample_to=20, class_weights="effective", augment="none",
                    lr=0.01, optimizer="adamw", batch_size=100)
    model = create_paradigm("simple-cnn", {"image_size": 16}, n_classes=10, seed=0).build_model((16, 16))
    result = fit(model, param_groups([(list(model.parameters()), p.lr)], 0.0), Images(x, y), Images(x[:50], y[:50]),
                 p, n_classes=10, seed=0, device=torch.device("cpu"))
    assert result.notes["train_images_per_class"][0] == 20 and result.notes["images_per_epoch"] == 200


def test_multi_label_pos_weight_and_sample_weights(source):
    """Labels per image: 'even', 'at least 7', 'zero' — real, overlapping, and of very different frequency."""
    d = source.labels
    Y = np.stack([d % 2 == 0, d >= 7, d == 0], axis=1).astype(np.uint8)
    positives = Y.sum(0)
    assert np.allclose(pos_weight(Y), (len(Y) - positives) / positives)
    assert pos_weight(np.zeros((4, 2), np.uint8)).tolist() == [1.0, 1.0]  # no positives: no reweighting
    w = label_frequency_sample_weights(Y)
    assert w.mean() == pytest.approx(1.0) and w.dtype == np.float32
    only_even = (Y == [1, 0, 0]).all(1)
    zero = (Y == [1, 0, 1]).all(1)
    assert w[zero].min() > w[only_even].max()  # the rare label weighs an image up
    unlabelled = ~Y.any(1)  # odd digits below 7
    assert np.allclose(w[unlabelled], w[unlabelled][0])


def test_linear_class_weight_balanced_raises_minority_recall(source):
    X = source.images.reshape(len(source.labels), -1).astype(np.float32)
    y = source.labels
    order = np.random.default_rng(0).permutation(len(y))
    minority = (3, 8)

    def imbalanced_part(idx):  # the minority classes keep 4 images each
        return np.concatenate([idx[~np.isin(y[idx], minority)], *(idx[y[idx] == c][:4] for c in minority)])

    train, val, test = imbalanced_part(order[:900]), imbalanced_part(order[900:1300]), order[1300:]
    recalls = {}
    for weighting in ("none", "balanced"):
        linear = create_paradigm("linear", {"class_weight": weighting, "C": 1.0}, n_classes=10, seed=0)
        linear.fit(X[train], y[train], X[val], y[val])
        recalls[weighting] = recall_score(y[test], linear.predict(X[test]), labels=list(minority), average="macro")
    assert recalls["balanced"] > recalls["none"] + 0.05


def test_bce_class_weighting_weighs_positives_against_negatives():
    labels = np.array([0] * 90 + [1] * 10)
    loss = make_loss(TrainParams(loss="bce", class_weights="balanced"), labels, 2)
    plain = make_loss(TrainParams(loss="bce"), labels, 2)
    logits = torch.zeros(2, 2)
    y = torch.tensor([0, 1])
    # with pos_weight = negatives / positives (10/90 for class 0, 90/10 for class 1), the rare class's
    # positive costs 9x, the common class's positive 1/9 of the unweighted loss
    per_class = torch.nn.functional.softplus(-logits)[0, 0]
    expected = (per_class * (10 / 90) + per_class + per_class + per_class * 9) / 4
    assert float(loss(logits, y)) == pytest.approx(float(expected), rel=1e-5)
    assert float(plain(logits, y)) == pytest.approx(float(per_class), rel=1e-5)


def test_inconsistent_balance_params_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="effective_beta applies to class_weights: effective only"):
        TrainParams(effective_beta=0.9)
    with pytest.raises(ValueError, match="class_weights work with loss ce or bce, not mse"):
        TrainParams(class_weights="balanced", loss="mse")
    with pytest.raises(ValueError, match="sampler"):
        TrainParams(sampler="oversample")


def test_head_with_views_tops_up_short_classes_before_encoding_its_views(source, imbalanced):
    backbone = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=32))
    x, _, _ = decode_images(source, imbalanced[:100], backbone.eval_transform())  # classes 0–3: 5, 20, 35, 40
    y = source.labels[imbalanced[:100]]
    head = create_paradigm("head", {"epochs": 1, "views": 2, "oversample_to": 15}, n_classes=10, seed=0)
    head.bind(TrainingContext(backbone, torch.device("cpu"), engine="torch")).fit(x, y, x[:20], y[:20])
    assert head.selected_["train_images_per_class"] == [15, 20, 35, 40] + [0] * 6
    assert head.passes_["train"] == 2 * 110  # 2 views of the topped-up set


# ---------------------------------------------------------------- resample: on cached features (imbalanced-learn)


@pytest.fixture(scope="module")
def skewed_digits():
    """scikit-learn's digits as 64-pixel vectors, digit 0 cut to 12 training rows (the others keep ~100)."""
    digits = open_pools(DataSpec(source="digits")).train
    X = digits.images.reshape(len(digits), -1).astype(np.float32) / 16
    y = digits.labels
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, val = order[:1000], order[1000:1400]
    train = np.concatenate([train[y[train] != 0], train[y[train] == 0][:12]])
    return X[train], y[train], X[val], y[val]


@pytest.mark.parametrize("name", ["knn", "linear", "rff", "mlp"])
def test_smote_tops_every_class_up_to_the_largest_and_the_record_counts_the_new_rows(skewed_digits, name):
    X, y, X_val, y_val = skewed_digits
    extra = {"mlp": {"max_epochs": 5}, "rff": {"n_components": 256, "C": [1.0], "gamma_scale": [1.0]},
             "linear": {"C": [1.0]}}.get(name, {})
    paradigm = create_paradigm(name, {"resample": "smote", **extra}, n_classes=10, seed=0)
    done = paradigm.fit(X, y, X_val, y_val).selected_["resampled"]
    counts = np.bincount(y, minlength=10)
    assert done["added_per_class"] == (counts.max() - counts).tolist() and done["added_per_class"][0] > 80
    assert done["rows_before"] == len(y) and done["rows_after"] == 10 * counts.max()
    assert paradigm.predict_proba(X_val).shape == (len(y_val), 10)


def test_smote_lifts_the_short_class_recall_and_each_method_is_seeded(skewed_digits):
    X, y, X_val, y_val = skewed_digits
    recall = {}
    for resample in (None, "smote", "random-over", "svm-smote"):
        params = {"C": [0.01]} | ({"resample": resample} if resample else {})
        proba = create_paradigm("linear", params, n_classes=10, seed=0).fit(X, y, X_val, y_val).predict_proba(X_val)
        recall[resample] = recall_score(y_val == 0, proba.argmax(1) == 0)
    assert recall["smote"] > recall[None]  # 12 zeros against ~100 of every other digit
    with pytest.raises(TransferlabError, match="adasyn failed .*ADASYN is not suited") as caught:  # no hard rows
        create_paradigm("linear", {"resample": "adasyn"}, n_classes=10, seed=0).fit(X, y, X_val, y_val)
    assert "\n" not in str(caught.value)
    under = create_paradigm("knn", {"resample": "random-under"}, n_classes=10, seed=0).fit(X, y, X_val, y_val)
    assert under.selected_["resampled"]["rows_after"] == 10 * 12
    again = create_paradigm("knn", {"resample": "random-under"}, n_classes=10, seed=0).fit(X, y, X_val, y_val)
    assert np.array_equal(under.model_._fit_X, again.model_._fit_X)


def test_resample_refuses_multi_label_data_options_it_ignores_and_too_few_neighbours(skewed_digits):
    X, y, X_val, y_val = skewed_digits
    matrix = np.eye(10, dtype=np.uint8)[y]
    with pytest.raises(TransferlabError, match="resample: smote needs one label per image"):
        create_paradigm("knn", {"resample": "smote"}, n_classes=10, seed=0, multi_label=True).fit(
            X, matrix, X_val, np.eye(10, dtype=np.uint8)[y_val])
    with pytest.raises(ValueError, match="k_neighbors applies to smote / svm-smote / adasyn, not random-over"):
        create_paradigm("knn", {"resample": {"method": "random-over", "k_neighbors": 3}}, n_classes=10, seed=0)
    with pytest.raises(TransferlabError, match="resample: smote failed on these training data .*lower k_neighbors"):
        create_paradigm("knn", {"resample": {"method": "smote", "k_neighbors": 20}}, n_classes=10, seed=0).fit(
            X, y, X_val, y_val)
