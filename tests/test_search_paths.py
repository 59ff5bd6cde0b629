"""Search spaces reach inside a paradigm's options: `paradigm.head.dropout`, an item of a list
(`paradigm.betas.0`), and choices that are lists (a head's hidden layers), as study 003 and 002 searched."""

from __future__ import annotations

import optuna
import pytest

from transferlab.config import StudySpec, validated
from transferlab.core.errors import TransferlabError
from transferlab.search import parse_space, trial_spec


def study(space, **paradigm) -> StudySpec:
    row = {"name": "finetune", "label": "ft", "optimizer": "adam", "schedule": "constant", "betas": [0.9, 0.999],
           "head": {"pool": "avg", "hidden": [128], "dropout": 0.5}, **paradigm}
    return validated(StudySpec, {"name": "s", "datasets": ["digits"], "backbones": ["tf_efficientnet_lite0"],
                                 "paradigms": [row], "references": False, "search": {"space": space}}, "t")


def test_nested_paths_and_list_choices_become_the_runs_options():
    spec = study({"paradigm.head.dropout": {"low": 0.0, "high": 0.6}, "paradigm.betas.0": {"low": 0.8, "high": 0.95},
                  "paradigm.head.hidden": [[256], [512, 128]], "paradigm.lr": {"low": 1e-5, "high": 1e-3, "log": True}})
    dims = {d.path: d for d in parse_space(spec)}
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = {path: dim.suggest(trial) for path, dim in dims.items()}
    assert isinstance(values["paradigm.head.hidden"], str)  # Optuna stores a list choice as its JSON text
    run = trial_spec(spec, values, seed=0)
    params = run.paradigm.params
    assert params["head"]["dropout"] == values["paradigm.head.dropout"]
    assert params["head"]["hidden"] in ([256], [512, 128]) and params["head"]["pool"] == "avg"  # the rest is kept
    assert params["betas"] == [values["paradigm.betas.0"], 0.999]
    assert dims["paradigm.head.hidden"].grid_values() == ["[256]", "[512, 128]"]


def test_a_nested_path_that_cannot_apply_is_refused_in_one_line():
    with pytest.raises(TransferlabError, match=r"search.space.paradigm.betas.1: the value .* an item of betas is "
                                               r"searched, but the run has no betas list with item 1; give betas"):
        parse_space(study({"paradigm.betas.1": {"low": 0.9, "high": 0.999}}, betas=None))
    with pytest.raises(TransferlabError, match=r"search.space.paradigm.head.units: the value 64 makes an invalid "
                                               r"run: .*unknown key 'units'"):
        parse_space(study({"paradigm.head.units": [64, 128]}))
    with pytest.raises(TransferlabError, match="has no parameter 'head'|unknown parameter"):
        parse_space(validated(StudySpec, {"name": "s", "datasets": ["digits"], "backbones": ["tf_efficientnet_lite0"],
                                          "paradigms": ["knn"], "search": {"space": {"paradigm.head.dropout": [0.1]}}},
                              "t"))


def test_a_condition_on_a_list_choice():
    """A per-layer dropout searched only where the head has two hidden layers."""
    spec = study({"paradigm.head.hidden": [[128], [256, 128]],
                  "paradigm.head.dropout": {"low": 0.0, "high": 0.5, "when": {"paradigm.head.hidden": [[128]]}}})
    dropout = next(d for d in parse_space(spec) if d.path == "paradigm.head.dropout")
    assert dropout.active({"paradigm.head.hidden": "[128]"})
    assert not dropout.active({"paradigm.head.hidden": "[256, 128]"})
