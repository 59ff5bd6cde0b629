"""One suite every registered paradigm must pass (scikit-learn's check_estimator idea): a paradigm added to the
registry is picked up by every test here, with no list to extend.

Inputs are real (scikit-learn's digits): feature paradigms see the pixel vectors, training paradigms see
the images as uint8 tensors through their own view (tf_efficientnet_lite0 at 32 px for the ones that
need a backbone), trained for a few epochs. Each paradigm is fitted once per module (`fitted`) and every
property of the fitted paradigm is checked on that fit: probabilities, beating chance, a JSON-safe
`selected_`, `final_params` that validate and refit, and the torch form (`deploy_steps`) giving the same
probabilities as `predict_proba`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transferlab.config import BackboneSpec, DataSpec
from transferlab.data import open_pools
from transferlab.data.decode import decode_images
from transferlab.data.views import make_view
from transferlab.deploy.artifact import to_probabilities
from transferlab.models import load_backbone
from transferlab.models.modules import Pipeline
from transferlab.paradigms import PARADIGMS, create_paradigm
from transferlab.paradigms.base import NotDeployable, validate_params
from transferlab.paradigms.trained import TrainingContext

FAST = {"mlp": {"max_epochs": 30}, "rff": {"n_components": 512},
        "finetune": {"epochs": 2, "lr": 0.05, "augment": "none", "from_stage": -1},
        "scratch": {"epochs": 2, "lr": 0.05, "augment": "none"},
        "simple-cnn": {"epochs": 4, "image_size": 16, "augment": "none"},
        "head": {"epochs": 3, "lr": 0.01, "augment": "none"}, "bit": {"max_resolution": 32, "batch_size": 32}}
# A few epochs (chance: 0.1): from random init, a linear head on 32 px features, BiT's first 20 steps; others > 0.85
ACCURACY_FLOOR = {"scratch": 0.2, "simple-cnn": 0.5, "head": 0.5, "bit": 0.2}
CASES = sorted(PARADIGMS)
BASELINES = {"majority", "all-negative"}  # reference rows that look at no image: they are not meant to beat chance
SINGLE_LABEL = [name for name in CASES if name != "all-negative"]  # all-negative exists for multi-label data only
MULTI_LABEL = [name for name in CASES if PARADIGMS[name].input != "images"]  # training paradigms: test_train
# The costliest repeats (~15–30 s each) are slow checks: their training loop is the one finetune and simple-cnn
# already check for determinism and class columns in the default suite.
HEAVY = {"bit", "scratch"}
SINGLE_LABEL_LIGHT = [pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name for name in SINGLE_LABEL]


@pytest.fixture(autouse=True)
def short_hyperrule(monkeypatch):
    """BiT's smallest schedule is 500 steps; the contract tests need 20 (the rule has its own tests)."""
    monkeypatch.setattr("transferlab.train.hyperrule.schedule_supports", lambda n: [4, 8, 12, 16, 20])


@pytest.fixture(scope="module")
def digits():
    source = open_pools(DataSpec(source="digits")).train
    order = np.random.default_rng(0).permutation(len(source))
    return source, {"train": order[:600], "val": order[600:900], "test": order[900:]}


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=32))


def make(name, seed=0, backbone=None, **params):
    paradigm = create_paradigm(name, {**FAST.get(name, {}), **params}, n_classes=10, seed=seed)
    if paradigm.input == "images":
        paradigm.bind(TrainingContext(backbone if paradigm.needs_backbone else None, torch.device("cpu")))
    return paradigm


def inputs(paradigm, digits, keep=None):
    """(X, y) per split in the form the paradigm takes; `keep(labels)` filters train and val."""
    source, splits = digits
    out = {}
    for split, idx in splits.items():
        if keep is not None and split != "test":
            idx = idx[keep(source.labels[idx])]
        if paradigm.input == "images":
            x, _, _ = decode_images(source, idx, paradigm.view())
        else:
            x = source.images[idx].reshape(len(idx), -1).astype(np.float32)
        out[split] = (x, source.labels[idx])
    return out


def fit(paradigm, data):
    return paradigm.fit(*data["train"], *data["val"])


@pytest.fixture(scope="module")
def fitted(digits, backbone):
    """name → (paradigm fitted on the digits with its FAST params, the inputs it saw); each fit happens once."""
    done = {}

    def get(name):
        if name not in done:
            paradigm = make(name, backbone=backbone)
            data = inputs(paradigm, digits)
            done[name] = fit(paradigm, data), data
        return done[name]

    return get


@pytest.mark.parametrize("name", CASES)
def test_params_have_a_default_for_every_field(name):
    defaults = PARADIGMS[name].Params()
    assert validate_params(name, {}) == defaults
    assert json.loads(defaults.model_dump_json()) == defaults.model_dump(mode="json")


@pytest.mark.parametrize("name", SINGLE_LABEL)
def test_fits_predicts_probabilities_and_beats_chance(name, fitted):
    paradigm, data = fitted(name)
    X_test, y_test = data["test"]
    proba = paradigm.predict_proba(X_test)
    assert proba.shape == (len(y_test), 10)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-6) and (proba >= 0).all()
    if name in BASELINES:
        assert (proba == proba[0]).all()  # the same answer for every image: it never looked at one
        return
    assert (proba.argmax(1) == y_test).mean() > ACCURACY_FLOOR.get(name, 0.85)
    assert isinstance(paradigm.selected_, dict) and paradigm.selected_


@pytest.mark.parametrize("name", SINGLE_LABEL)
def test_what_it_selected_and_its_final_params_are_json_and_valid(name, fitted):
    paradigm, _ = fitted(name)
    assert json.loads(json.dumps(paradigm.selected_)) == paradigm.selected_  # the record stores it as it is
    final = paradigm.final_params()
    assert json.loads(json.dumps(final)) == final
    chosen = validate_params(name, final)  # what `final: true` refits with is a valid configuration
    for key, value in paradigm.selected_.items():  # every choice made on validation is fixed in it
        if key in type(chosen).model_fields and key in paradigm.params.model_fields_set | set(final):
            assert getattr(chosen, key) == value or key in ("max_epochs", "epochs"), key


@pytest.mark.parametrize("name", SINGLE_LABEL_LIGHT)
def test_the_final_refit_on_train_and_val_predicts(name, fitted, backbone):
    paradigm, data = fitted(name)
    refit = make(name, backbone=backbone, **{k: v for k, v in paradigm.final_params().items()})
    X = np.concatenate([data["train"][0], data["val"][0]]) if isinstance(data["train"][0], np.ndarray) else \
        torch.cat([data["train"][0], data["val"][0]])
    refit.fit(X, np.concatenate([data["train"][1], data["val"][1]]), *data["val"])
    proba = refit.predict_proba(data["test"][0])
    assert proba.shape == (len(data["test"][1]), 10) and np.allclose(proba.sum(axis=1), 1, atol=1e-6)


def torch_probabilities(paradigm, X, backbone) -> np.ndarray:
    """What the paradigm's saved model (its `deploy_steps`) gives for X, as the deploy path computes it."""
    steps, frozen_features = paradigm.deploy_steps()
    pipeline = Pipeline(steps, frozen_features=frozen_features).eval()
    x = torch.as_tensor(X)
    with torch.no_grad():
        if frozen_features and paradigm.input == "images":  # the steps start at the frozen backbone's features
            x = backbone.feature_model()(x)
        scores = pipeline(x)
    activation = "none" if paradigm.scores == "probabilities" else "sigmoid" if paradigm.multi_label else "softmax"
    return to_probabilities(scores, activation).double().numpy()


@pytest.mark.parametrize("name", SINGLE_LABEL)
def test_the_torch_form_gives_the_paradigms_probabilities(name, fitted, digits, backbone):
    paradigm, data = fitted(name)
    if name in BASELINES or name == "pixels":  # reference rows: nothing a model file could hold
        with pytest.raises(NotDeployable):
            paradigm.deploy_steps()
        return
    X_test = data["test"][0]
    deployed = X_test
    if paradigm.input == "images":  # the saved model sees the images as deployment decodes them (bit: its crop)
        source, splits = digits
        deployed, _, _ = decode_images(source, splits["test"], make_view(paradigm.deploy_view(backbone))[0])
    np.testing.assert_allclose(torch_probabilities(paradigm, deployed, backbone), paradigm.predict_proba(X_test),
                               atol=1e-4)
