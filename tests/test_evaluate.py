"""Metrics agree with their definitions on small cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.evaluate import classification_metrics


def test_metrics_of_a_small_worked_example():
    y = np.array([0, 0, 1, 1, 2, 3])
    proba = np.array([[.7, .1, .1, .1], [.05, .6, .2, .15], [.1, .8, .05, .05],
                      [.1, .2, .3, .4], [.2, .1, .6, .1], [.25, .25, .2, .3]], dtype=np.float32)
    m = classification_metrics(y, proba, ["a", "b", "c", "d"])
    assert m["accuracy"] == 4 / 6  # rows 0, 2, 4, 5 right
    assert m["top3_accuracy"] == 5 / 6  # only row 1 misses: its true class ranks 4th; row 3's ranks 3rd
    assert np.isclose(m["log_loss"], -np.mean(np.log([.7, .05, .8, .2, .6, .3])), atol=1e-6)
    assert [c["support"] for c in m["per_class"]] == [2, 2, 1, 1]
    assert m["confusion_matrix"][0] == [1, 1, 0, 0]
    assert np.isclose(m["macro_f1"], np.mean([c["f1"] for c in m["per_class"]]))


def test_single_label_extras_agree_with_their_definitions():
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    logits = rng.normal(size=(100, 4)) + 2.0 * np.eye(4)[y]  # informative but imperfect scores
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, proba, list("abcd"))
    pred = proba.argmax(1)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["roc_auc_ovr"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    rows = np.asarray(m["confusion_normalized"])
    assert np.allclose(rows.sum(1), 1) and np.allclose(np.diag(rows), [c["recall"] for c in m["per_class"]])
    assert m["top5_accuracy"] == 1.0  # 4 classes: the true one is always in the top 5


def test_expected_calibration_error_of_a_worked_example():
    from transferlab.evaluate import expected_calibration_error

    # confidences 0.9, 0.9 (one right) fall in one bin: |0.5 − 0.9|; 0.6, 0.6 (both right) in another: |1 − 0.6|
    proba = np.array([[.9, .1], [.9, .1], [.4, .6], [.4, .6]])
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(y, proba) == pytest.approx((2 * 0.4 + 2 * 0.4) / 4)
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_most_confused_pairs_are_the_largest_off_diagonal_cells():
    from transferlab.evaluate import most_confused_pairs

    confusion = [[5, 3, 0], [1, 6, 1], [0, 3, 2]]
    pairs = most_confused_pairs(confusion, ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs[:2]] == [("c", "b", 3), ("a", "b", 3)]
    assert pairs[0]["rate"] == pytest.approx(3 / 5) and len(pairs) == 4  # ties by rate; zeros left out


def test_multilabel_metrics_of_a_worked_example():
    from transferlab.evaluate import multilabel_metrics

    Y = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
    proba = np.array([[.9, .2, .4], [.1, .8, .6], [.3, .1, .2], [.7, .3, .1]])
    m = multilabel_metrics(Y, proba, ["a", "b", "c"], 0.5)
    # predicted at 0.5: [1,0,0], [0,1,1], [0,0,0], [1,0,0] → TP 3, FP 1, FN 2
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert m["hamming_loss"] == pytest.approx(3 / 12)
    assert m["subset_accuracy"] == pytest.approx(1 / 4)  # only the empty image is exactly right
    assert m["n_images_without_label"] == 1
    # samples F1: 2/3, 2/3, 1 (nothing to find, nothing said), 2/3
    assert m["samples_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 2 / 3) / 4)
    lower = multilabel_metrics(Y, proba, ["a", "b", "c"], [0.5, 0.25, 0.5])  # class b at 0.25 also finds image 3
    assert lower["micro_f1"] > m["micro_f1"] and lower["per_class"][1]["threshold"] == 0.25


def test_thresholds_are_tuned_on_validation_globally_or_per_class():
    from transferlab.evaluate import multilabel_metrics, tune_thresholds

    rng = np.random.default_rng(1)
    Y = (rng.random((400, 3)) < [0.5, 0.2, 0.1]).astype(int)
    # class 0 is confident, class 2 scores its positives only ~0.3: it needs a low threshold
    proba = np.clip(Y * np.array([0.8, 0.6, 0.3]) + rng.random((400, 3)) * 0.2, 0, 1)
    global_t = tune_thresholds(Y, proba, "global")
    per_class = tune_thresholds(Y, proba, "per_class")
    assert isinstance(global_t, float) and len(per_class) == 3 and per_class[2] < 0.35
    best = max(multilabel_metrics(Y, proba, list("abc"), t)["micro_f1"] for t in (0.3, 0.5, 0.7, global_t))
    assert multilabel_metrics(Y, proba, list("abc"), global_t)["micro_f1"] == best
    assert (multilabel_metrics(Y, proba, list("abc"), per_class)["macro_f1"]
            >= multilabel_metrics(Y, proba, list("abc"), global_t)["macro_f1"])


def test_paired_comparison_sees_a_real_difference_and_not_a_fake_one():
    from transferlab.evaluate import image_outcomes
    from transferlab.stats import encode_outcomes, interval95, paired_comparison

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 500)
    test = {"test": {"source": "t", "indices": list(range(500))}}

    def runs(accuracy: float, seeds=(0, 1, 2)):
        out = []
        for seed in seeds:
            pred = np.where(rng.random(500) < accuracy, y, (y + 1) % 3)
            out.append({"seed": seed, "metrics": {"accuracy": float((pred == y).mean())}, "split_indices": test,
                        "test_outcomes": encode_outcomes(image_outcomes(y, pred, multi_label=False))})
        return out

    strong, weak = runs(0.9), runs(0.75)
    better = paired_comparison(strong, weak, "accuracy")
    assert better["difference"] == pytest.approx(np.mean([r["metrics"]["accuracy"] for r in strong])
                                                 - np.mean([r["metrics"]["accuracy"] for r in weak]))
    assert better["ci95"][0] > 0 and better["p_better"] > 0.99 and better["seeds_t_test"]["p_value"] < 0.05
    same = paired_comparison(strong, strong, "accuracy")
    assert same["difference"] == 0 and same["ci95"] == [0, 0] and same["p_better"] == 0.5
    other_test = [{**r, "split_indices": {"test": {"source": "t", "indices": list(range(1, 501))}}} for r in weak]
    assert paired_comparison(strong, other_test, "accuracy") is None  # not scored on the same images
    assert np.isnan(interval95([0.5])) and interval95([0.5, 0.5]) == 0.0
