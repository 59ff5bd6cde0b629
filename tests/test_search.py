"""The hyper-parameter search (transferlab search): its space, its budget, its use of the feature cache,
pruning, failed trials, continuing a stored search, and the one-line errors."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest

from transferlab import features
from transferlab.config import StudySpec, validated
from transferlab.core.errors import TransferlabError
from transferlab.search import grid_points, parse_space, run_search, workers

from .conftest import needs_fashion_mnist, search_spec

SEARCH = importlib.import_module("transferlab.search")  # the package: `transferlab.search` is the API function


def space_spec(space, paradigms=("mlp",), **search):
    return validated(StudySpec, {"name": "s", "datasets": ["digits"], "backbones": ["tf_efficientnet_lite0"],
                                 "paradigms": list(paradigms), "search": {"space": space, **search}}, "test")


# ------------------------------------------------------------------------------------------- the space

@pytest.mark.parametrize("space, paradigms, sampler, message", [
    ({}, ("mlp",), "tpe", "search.space is empty"),
    ({"paradigm.hiden": [32, 64]}, ("mlp",), "tpe", "did you mean paradigm.hidden"),
    ({"lr": {"low": 1e-4, "high": 1e-2}}, ("mlp",), "tpe", "paradigm.lr"),
    ({"paradigm.from_fraction": {"low": 0.1, "high": 1.0}, "paradigm": ["mlp", "finetune"]}, ("mlp",), "tpe",
     "mlp has no parameter 'from_fraction'; add when: {paradigm: finetune}"),
    ({"paradigm.dropout": {"low": 0.0, "high": 1.5}}, ("mlp",), "tpe", "the value 1.5 makes an invalid run"),
    ({"paradigm.hidden": {"choices": [32], "when": {"paradigm": "knn"}}, "paradigm": ["mlp", "linear"]}, ("mlp",),
     "tpe", "when: paradigm = 'knn' is not one of its choices"),
    ({"paradigm.hidden": {"choices": [32], "when": {"backbone": "x"}}}, ("mlp",), "tpe",
     "when: backbone must name another categorical dimension"),
    ({"paradigm.lr": {"low": 1e-4, "high": 1e-2}}, ("mlp",), "grid", "a grid needs a finite set"),
    # anything that moves test images is fixed before any choice
    ({"data.split_seed": [0, 1]}, ("mlp",), "grid", "data.split_seed: this would move images in or out of the test"),
    ({"data.test_size": [0.2, 0.3]}, ("mlp",), "grid", "data.test_size: this would move images in or out of"),
    ({"data.ratios": [[60, 20, 20]]}, ("mlp",), "grid", "data.ratios: this would move images in or out of"),
])
def test_bad_space_is_one_line_naming_the_key(space, paradigms, sampler, message):
    with pytest.raises(TransferlabError) as err:
        parse_space(space_spec(space, paradigms, sampler=sampler))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("param, message", [
    ({"low": 1, "high": 1}, "low (1) must be below high (1)"),
    ({"low": 0, "high": 1, "log": True}, "log scale needs low > 0"),
    ({"low": 1}, "needs both low and high"),
    ({"choices": [32], "low": 1, "high": 2}, "not both"),
])
def test_contradictory_range_is_refused_with_its_path(param, message):
    with pytest.raises(TransferlabError, match="search.space.paradigm.hidden") as err:
        space_spec({"paradigm.hidden": param})
    assert message in str(err.value)


def test_study_paradigms_become_a_categorical_and_conditions_prune_the_grid():
    spec = space_spec({"paradigm.hidden": {"choices": [0, 32, 128], "when": {"paradigm": "mlp"}},
                       "paradigm.C": {"choices": [0.1, 1.0], "when": {"paradigm": "linear"}}},
                      paradigms=("mlp", "linear"), sampler="grid")
    dims = parse_space(spec)
    assert dims[0].path == "paradigm" and dims[0].param.choices == ["mlp", "linear"]
    points = grid_points(dims)
    assert len(points) == 5  # 3 mlp widths + 2 linear Cs: no width on a linear point, no duplicates
    assert {json.dumps(p, sort_keys=True) for p in points} == {json.dumps(p, sort_keys=True) for p in [
        {"paradigm": "mlp", "paradigm.hidden": h} for h in (0, 32, 128)] + [
        {"paradigm": "linear", "paradigm.C": c} for c in (0.1, 1.0)]}


def test_an_unknown_objective_is_one_line_with_close_matches(image_folder, tmp_path):
    spec = validated(StudySpec, search_spec(image_folder, objective="acuracy"), "test")
    with pytest.raises(TransferlabError, match="search.objective 'acuracy' is not a single-label validation "
                                               "metric \\(did you mean 'accuracy'\\?\\)"):
        run_search(spec, tmp_path)


def test_the_objective_lists_are_the_scalar_metrics_score_gives():
    import numpy as np

    from transferlab.evaluate import SCALAR_METRICS, score

    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(6), 60)
    single = score(np.arange(60) % 6, proba, list("abcdef"), multi_label=False, detailed=False)
    multi = score((rng.random((60, 6)) < 0.3).astype(int), proba, list("abcdef"), multi_label=True,
                  thresholds=0.3, detailed=False)
    for metrics, multi_label in ((single, False), (multi, True)):
        scalars = {k for k, v in metrics.items() if isinstance(v, float) or v is None} - {"thresholds"}
        assert scalars == set(SCALAR_METRICS[multi_label])


def test_unreachable_storage_is_one_line_with_host_and_port(image_folder, tmp_path):
    spec = validated(StudySpec, search_spec(image_folder), "test")
    with pytest.raises(TransferlabError) as err:
        run_search(spec, tmp_path, storage="postgresql://nobody@127.0.0.1:1/db")
    assert "127.0.0.1:1" in str(err.value) and "check the server is running" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(TransferlabError, match="not a database URL"):
        run_search(spec, tmp_path, storage="no-such-scheme")


# ----------------------------------------------------------------------------------- a search, for real

@needs_fashion_mnist
def test_a_search_never_encodes_test_before_its_final_retrain(image_folder, tmp_path, monkeypatch):
    """The honesty check of every search, in a fast form (3 linear trials; the slow test below runs 20 mlp
    trials): no trial reads a test image; the retrained best is the first to."""
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    spec = search_spec(image_folder, sampler="grid", pruner="none", objective="accuracy",
                       space={"paradigm.C": [0.01, 0.1, 1.0]})
    spec["paradigms"] = ["linear"]
    seen, phase = [], {"now": "search"}
    real_get, real_retrain = features.FeatureStore.get, SEARCH.retrain
    monkeypatch.setattr(features.FeatureStore, "get", lambda self, source, *a, **k: (
        seen.append((phase["now"], Path(source.root))), real_get(self, source, *a, **k))[1])
    monkeypatch.setattr(SEARCH, "retrain", lambda *a, **k: (phase.update(now="final"), real_retrain(*a, **k))[1])
    summary = run_search(validated(StudySpec, spec, "test"), tmp_path / "out")
    assert len(summary["trials"]) == 3 and all("test" not in t["backbone_passes"] for t in summary["trials"])
    train_folder, test_folder = image_folder
    assert {root for p, root in seen if p == "search"} == {train_folder}  # train and val come from it
    assert test_folder in {root for p, root in seen if p == "final"}


@pytest.mark.slow  # ~40 s: in `pytest -m slow`, which .ci/run runs
@needs_fashion_mnist
def test_twenty_mlp_trials_extract_each_split_once_and_never_touch_test(image_folder, tmp_path, monkeypatch,
                                                                        session_cache):
    """20 trials over width × dropout × L2 × lr: the first trial encodes train and val, the other 19 read the
    cache; test is encoded once, by the retrained best, after the search."""
    cache = tmp_path / "cache"  # no features yet; the session's ONNX export comes along (it is not what's counted)
    if (session_cache / "onnx").is_dir():
        shutil.copytree(session_cache / "onnx", cache / "onnx")
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(cache))
    spec = search_spec(image_folder, trials=20, sampler="random", pruner="none", objective="accuracy",
                       space={"paradigm.hidden": [16, 64, 256], "paradigm.dropout": {"low": 0.0, "high": 0.6},
                              "paradigm.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
                              "paradigm.lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    spec["paradigms"] = [{"name": "mlp", "max_epochs": 15, "patience": 5}]
    seen, phase = [], {"now": "search"}
    real_get, real_retrain = features.FeatureStore.get, SEARCH.retrain
    monkeypatch.setattr(features.FeatureStore, "get", lambda self, source, *a, **k: (
        seen.append((phase["now"], source)), real_get(self, source, *a, **k))[1])
    monkeypatch.setattr(SEARCH, "retrain", lambda *a, **k: (phase.update(now="final"), real_retrain(*a, **k))[1])

    summary = run_search(validated(StudySpec, spec, "test"), tmp_path / "out")

    trials = summary["trials"]
    assert len(trials) == 20 and all(t["state"] == "complete" for t in trials)
    train, val = (sum(t["backbone_passes"][split] for t in trials) for split in ("train", "val"))
    assert (train, val) == (96, 24)  # one extraction of each split, whatever the 20 configurations
    assert all("test" not in t["backbone_passes"] for t in trials)
    test_sources = {id(s) for p, s in seen if p == "final"} - {id(s) for p, s in seen if p == "search"}
    assert test_sources, "the final retrain reads a split the search never read (test)"
    assert {len(t["params"]) for t in trials} == {4}

    record = json.loads((tmp_path / "out" / "runs" / f"{summary['final_run_ids'][0]}.json").read_text())
    assert record["backbone_passes"] == {"train": 0, "val": 0, "test": 60}
    assert record["labels"]["paradigm"] == "mlp-searched"
    best = max(t["value"] for t in trials if t["state"] == "complete")
    assert record["search"]["value"] == best == summary["best"]["value"]
    assert record["params"]["hidden"] == summary["best"]["params"]["paradigm.hidden"]
    assert summary["importances"] and set(summary["importances"]) == set(trials[0]["params"])


@pytest.mark.slow  # ~40 s: in `pytest -m slow`, which .ci/run runs
@needs_fashion_mnist
def test_median_pruner_stops_a_hopeless_trial_and_it_counts_toward_the_budget(image_folder, tmp_path):
    """A grid whose last point has a learning rate too small to learn: after 5 startup trials the median
    pruner stops it at an early epoch, from its per-epoch validation loss."""
    spec = search_spec(image_folder, sampler="grid", pruner="median", objective="log_loss",
                       space={"paradigm.hidden": [16, 32, 64], "paradigm.lr": [1e-2, 1e-7]})
    spec["paradigms"] = [{"name": "mlp", "max_epochs": 20, "patience": None}]
    summary = run_search(validated(StudySpec, spec, "test"), tmp_path)
    by_number = {t["number"]: t for t in summary["trials"]}
    assert len(by_number) == summary["budget"] == 6
    last = by_number[5]
    assert last["params"] == {"paradigm.hidden": 64, "paradigm.lr": 1e-7}
    assert last["state"] == "pruned" and 1 <= len(last["intermediate"]) < 20
    assert summary["best"]["params"]["paradigm.lr"] == 1e-2


@needs_fashion_mnist
def test_a_failing_configuration_is_a_failed_trial_with_its_reason(image_folder, tmp_path):
    spec = search_spec(image_folder, sampler="grid", objective="accuracy", pruner="hyperband",
                       space={"data.train_size": [30, 100_000]})
    spec["paradigms"] = ["linear"]
    summary = run_search(validated(StudySpec, spec, "test"), tmp_path)
    states = {t["params"]["data.train_size"]: t for t in summary["trials"]}
    assert states[30]["state"] == "complete"
    assert states[100_000]["state"] == "fail" and "train_size" in states[100_000]["fail_reason"]
    assert summary["best"]["params"] == {"data.train_size": 30}


@needs_fashion_mnist
def test_a_stopped_search_continues_with_the_same_command_and_refuses_a_changed_space(image_folder, tmp_path):
    spec = search_spec(image_folder, trials=4, sampler="random", pruner="none")
    run_search(validated(StudySpec, spec, "test"), tmp_path, timeout=0.01)  # stops after its first trial
    first = json.loads((tmp_path / "search" / "tiny-search.json").read_text())["trials"]
    assert len(first) == 1
    # a second worker with another --trials counts to the budget the study stored (4), not its own
    summary = run_search(validated(StudySpec, spec, "test"), tmp_path, trials=6)
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2, 3]
    assert summary["trials"][0]["params"] == first[0]["params"]  # trial 0 kept, not rerun

    changed = search_spec(image_folder, trials=4, sampler="random",
                          space={"paradigm.C": {"low": 0.1, "high": 1.0, "when": {"paradigm": "linear"}}})
    with pytest.raises(TransferlabError, match="already exists in this storage with a different space.*--resume"):
        run_search(validated(StudySpec, changed, "test"), tmp_path)
    resumed = run_search(validated(StudySpec, changed, "test"), tmp_path, resume=True)
    assert len(resumed["trials"]) == 4


def test_search_spec_needs_one_dataset_and_a_search_block():
    with pytest.raises(TransferlabError, match="no search: block"):
        parse_space(validated(StudySpec, {"name": "s", "datasets": ["digits"], "paradigms": ["pixels"]}, "t"))
    two = validated(StudySpec, {"name": "s", "datasets": ["digits", {"source": "digits", "name": "d2"}],
                                "paradigms": ["pixels"], "search": {"space": {"paradigm.C": [1.0]}}}, "t")
    with pytest.raises(TransferlabError, match="one dataset"):
        parse_space(two)



@needs_fashion_mnist
def test_an_interrupted_trial_is_queued_again_and_the_rerun_completes_the_grid(image_folder, tmp_path, monkeypatch):
    spec = search_spec(image_folder, sampler="grid", objective="accuracy", space={"paradigm.C": [0.1, 1.0]})
    spec["paradigms"] = ["linear"]
    real, calls = workers.execute_run, []

    def interrupted_at_the_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(workers, "execute_run", interrupted_at_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        run_search(validated(StudySpec, spec, "test"), tmp_path)
    monkeypatch.setattr(workers, "execute_run", real)
    summary = run_search(validated(StudySpec, spec, "test"), tmp_path)
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    assert sorted(t["params"]["paradigm.C"] for t in complete) == [0.1, 1.0] == sorted(
        t["params"]["paradigm.C"] for t in summary["trials"][:2])
    assert [t["fail_reason"] for t in summary["trials"] if t["state"] == "fail"] == ["interrupted; queued again"]


def test_train_and_validation_sizes_stay_tunable():
    dims = parse_space(space_spec({"data.val_size": [0.2, 0.3], "data.train_size": [50, 100]}, ("mlp",),
                                  sampler="grid"))
    assert {d.path for d in dims} >= {"data.val_size", "data.train_size"}


@pytest.mark.parametrize("url", ["postgresql://ann:s3cret@db.example:5432/searches",
                                 "postgresql://ann:s3cret@db.example:notaport/searches",  # unparsable
                                 "postgres ql://ann:s3cret@host/x"])
def test_a_storage_url_is_never_shown_with_its_password(url):
    from transferlab.search.storage import _storage_problem, redact

    assert "s3cret" not in redact(url) and "ann" in redact(url)
    assert "s3cret" not in _storage_problem(url, ValueError("bad"))
