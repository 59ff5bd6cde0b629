"""One suite every registered paradigm must pass (scikit-learn's check_estimator idea).

Inputs are real: scikit-learn's digits as feature vectors (a paradigm sees only vectors).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from transferlab.paradigms import PARADIGMS, create_paradigm

FAST = {"mlp": {"max_epochs": 30}, "rff": {"n_components": 512}}


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X, y = d.data.astype(np.float32), d.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, val, test = order[:600], order[600:900], order[900:]
    return X[train], y[train], X[val], y[val], X[test], y[test]


def fit(name, digits, seed=0, **params):
    X, y, Xv, yv, _, _ = digits
    return create_paradigm(name, {**FAST.get(name, {}), **params}, n_classes=10, seed=seed).fit(X, y, Xv, yv)


@pytest.mark.parametrize("name", sorted(PARADIGMS))
def test_fits_predicts_probabilities_and_beats_chance_by_far(name, digits):
    model = fit(name, digits)
    proba = model.predict_proba(digits[4])
    assert proba.shape == (len(digits[4]), 10)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-6) and (proba >= 0).all()
    assert (model.predict(digits[4]) == digits[5]).mean() > 0.85
    assert isinstance(model.selected_, dict) and model.selected_


@pytest.mark.parametrize("name", sorted(PARADIGMS))
def test_same_seed_same_predictions(name, digits):
    a = fit(name, digits, seed=3).predict_proba(digits[4])
    b = fit(name, digits, seed=3).predict_proba(digits[4])
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", sorted(PARADIGMS))
def test_a_class_missing_from_training_still_gets_a_column(name, digits):
    X, y, Xv, yv, Xt, _ = digits
    keep, keep_val = y != 9, yv != 9
    model = create_paradigm(name, FAST.get(name, {}), n_classes=10, seed=0).fit(X[keep], y[keep], Xv[keep_val],
                                                                                 yv[keep_val])
    proba = model.predict_proba(Xt)
    assert proba.shape[1] == 10 and np.allclose(proba.sum(axis=1), 1, atol=1e-6)


def test_hyper_parameters_are_chosen_on_validation_from_the_given_grid(digits):
    assert fit("linear", digits, C=[0.0001, 1.0]).selected_ == {"C": 1.0}  # 1e-4 underfits badly
    assert fit("knn", digits, k=[1, 3, 50]).selected_["k"] in (1, 3)
    mlp = fit("mlp", digits, max_epochs=200, patience=3)
    assert mlp.selected_["epochs_run"] < 200 and mlp.selected_["best_epoch"] <= mlp.selected_["epochs_run"]


def test_unknown_or_out_of_range_params_are_rejected_with_the_allowed_keys():
    with pytest.raises(ValueError, match="unknown key 'hiden' \\(did you mean 'hidden'\\?\\); allowed: hidden"):
        create_paradigm("mlp", {"hiden": 3}, n_classes=2, seed=0)
    with pytest.raises(ValueError, match="metric"):
        create_paradigm("knn", {"metric": "manhattan-ish"}, n_classes=2, seed=0)
