"""The command line as a user meets it: real processes, exit codes, one-line errors on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transferlab.core.errors import TransferlabError

from .conftest import SMALL_SIZE

QUICKSTART = Path(__file__).parents[1] / "examples" / "quickstart.yaml"


def transferlab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "transferlab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def one_error_line(result) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("transferlab: error: ")
    return lines[0]


def test_run_on_a_folder_prints_metrics_and_writes_the_record(image_folder, tmp_path):
    train, test = image_folder
    result = transferlab("run", "--data", train, "--test", test, "--backbone", "tf_efficientnet_lite0",
                         "--image-size", SMALL_SIZE, "--paradigm", "knn", "-p", "k=3", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "accuracy=" in result.stdout
    (record_file,) = (tmp_path / "runs").glob("*.json")
    record = json.loads(record_file.read_text())
    assert record["spec"]["paradigm"]["params"] == {"k": 3} and record["metrics"]["accuracy"] > 0.8


def test_data_options_reach_the_split_and_the_record(tmp_path):
    for seed in (0, 2):
        result = transferlab("run", "--data", "digits", "--paradigm", "pixels", "-d", "folds=3", "--seed", seed,
                             "--out", tmp_path)
        assert result.returncode == 0, result.stderr
    records = {r["seed"]: r for r in (json.loads(f.read_text()) for f in (tmp_path / "runs").glob("*.json"))}
    assert {s: r["fold"] for s, r in records.items()} == {0: 0, 2: 2}
    assert records[0]["split_indices"]["test"] == records[2]["split_indices"]["test"]
    assert not set(records[0]["split_indices"]["val"]["indices"]) & set(records[2]["split_indices"]["val"]["indices"])


def test_backbone_none_runs_a_paradigm_without_backbone_as_help_says(tmp_path):
    result = transferlab("run", "--data", "digits", "--backbone", "none", "--paradigm", "pixels", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    (record,) = (tmp_path / "runs").glob("*.json")
    assert json.loads(record.read_text())["backbone"]["name"] is None
    assert "drop --weights" in one_error_line(transferlab("run", "--data", "digits", "--backbone", "none",
                                                          "--weights", "random", "--paradigm", "pixels"))


def test_a_separator_given_on_the_command_line_is_the_character_itself():
    from transferlab.cli import _parse_params

    assert _parse_params(["label_separator=|", "x=>", "k=3", "C=[0.1, 1]"], "-d") == {
        "label_separator": "|", "x": ">", "k": 3, "C": [0.1, 1]}


@pytest.mark.parametrize("args, names", [
    (["run", "--data", "/no/such/folder", "--paradigm", "pixels"], "/no/such/folder"),
    (["run", "--data", "digits", "--backbone", "resnet_fifty", "--paradigm", "knn"], "resnet_fifty"),
    (["run", "--data", "digits", "--paradigm", "pixels", "-p", "C"], "--param C"),
    (["study", "/no/spec.yaml"], "/no/spec.yaml"),
    (["study", QUICKSTART, "--worker"], "worker needs storage"),
    (["report", "/no/study"], "/no/study/runs"),
])
def test_bad_input_exits_non_zero_with_one_line_naming_the_thing(args, names):
    assert names in one_error_line(transferlab(*args))


def test_bad_yaml_names_the_file_and_line(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\ndatasets: [digits\n")
    assert "broken.yaml: not valid YAML (line" in one_error_line(transferlab("study", spec))


def test_unreadable_image_fails_naming_it_and_skip_bad_lists_it_in_the_record(copy_folder, tmp_path):
    victim = sorted(copy_folder.glob("Trouser/*.png"))[0]
    victim.write_bytes(b"")
    args = ["run", "--data", copy_folder, "--paradigm", "pixels", "--out", tmp_path]
    assert victim.name in one_error_line(transferlab(*args))
    result = transferlab(*args, "--skip-bad")
    assert result.returncode == 0, result.stderr
    (record_file,) = (tmp_path / "runs").glob("*.json")
    record = json.loads(record_file.read_text())
    assert len(record["skipped"]) == 1 and victim.name in record["skipped"][0]
    assert sum(record["splits"].values()) == 119  # 120 images, one skipped, none else lost


def test_run_final_refits_on_train_and_val_and_says_so_in_the_record(tmp_path):
    result = transferlab("run", "--data", "digits", "--paradigm", "pixels", "-p", "C=[0.01, 1]", "--final",
                         "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    (record_file,) = (tmp_path / "runs").glob("*__final.json")
    record = json.loads(record_file.read_text())
    assert record["final"]["params"]["C"] == record["selected"]["C"]  # the choice made on validation, fixed
    assert record["final"]["train_images"] == record["splits"]["train"] + record["splits"]["val"]


@pytest.mark.slow  # two CLI starts (~20 s); the same errors are checked in-process in test_search.py
def test_search_with_a_misspelt_parameter_or_an_unreachable_storage_is_one_line(tmp_path):
    spec = tmp_path / "search.yaml"
    spec.write_text("name: s\ndatasets: [digits]\nbackbones: [tf_efficientnet_lite0]\nparadigms: [mlp]\n"
                    "search: {space: {paradigm.hiden: [32, 64]}}\n")
    assert "did you mean paradigm.hidden" in one_error_line(transferlab("search", spec, "--out", tmp_path))
    spec.write_text(spec.read_text().replace("hiden", "hidden"))
    line = one_error_line(transferlab("search", spec, "--out", tmp_path, "--storage", "postgresql://u@127.0.0.1:1/d"))
    assert "127.0.0.1:1" in line


HEAVY = ("torch", "timm", "sklearn", "optuna", "onnxruntime")


def modules_loaded_by(*args, env=None) -> tuple[list[str], subprocess.CompletedProcess]:
    """The heavy libraries a CLI call imported, read in the same process after the command returned."""
    code = ("import sys\nfrom transferlab.cli import main\n"
            f"sys.argv = ['transferlab', *{[str(a) for a in args]!r}]\n"
            "code = 0\ntry:\n    main()\nexcept SystemExit as exc:\n    code = exc.code or 0\n"
            f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    loaded = next(line for line in result.stdout.splitlines() if line.startswith("LOADED"))
    return eval(loaded.removeprefix("LOADED "), {}), result  # a list literal printed by the child above


@pytest.mark.parametrize("spec", ["missing", "bad_yaml", "unknown_key"])
def test_help_version_and_spec_errors_answer_without_importing_torch(tmp_path, spec):
    for args in (["--help"], ["study", "--help"], ["--version"]):
        loaded, result = modules_loaded_by(*args)
        assert loaded == [] and result.returncode == 0, (args, loaded)
    (tmp_path / "bad_yaml.yaml").write_text("name: x\ndatasets: [\n")
    (tmp_path / "unknown_key.yaml").write_text("name: x\ndatsets: []\n")
    loaded, result = modules_loaded_by("study", tmp_path / f"{spec}.yaml")
    assert loaded == [], loaded
    assert one_error_line(result).count(f"{spec}.yaml") == 1


def test_an_unknown_paradigm_or_backbone_answers_without_torch_once_a_process_has_seen_the_registries(tmp_path):
    env = {**os.environ, "TRANSFERLAB_CACHE": str(tmp_path / "cache")}  # no names remembered yet
    spec = tmp_path / "names.yaml"
    spec.write_text("name: x\ndatasets: [digits]\nbackbones: [tf_efficientnet_lite0]\nparadigms: [linaer]\n")
    loaded, first = modules_loaded_by("study", spec, env=env)
    assert "torch" in loaded  # the first process asks the registries themselves, and leaves their names
    assert list((tmp_path / "cache" / "names").glob("*.json"))
    loaded, second = modules_loaded_by("study", spec, env=env)
    assert loaded == [], loaded
    assert one_error_line(second) == one_error_line(first)
    assert "paradigms.0: unknown paradigm 'linaer' (did you mean 'linear'?)" in one_error_line(second)
    spec.write_text(spec.read_text().replace("linaer", "linear").replace("lite0", "lit0"))
    loaded, result = modules_loaded_by("study", spec, env=env)
    assert loaded == [], loaded
    assert "backbones.0.name: unknown timm model 'tf_efficientnet_lit0'; did you mean tf_efficientnet_lite0" in \
        one_error_line(result)
    loaded, result = modules_loaded_by("run", "--data", "digits", "--backbone", "torchvision/resnet5",
                                       "--paradigm", "knn", env=env)
    assert loaded == [], loaded
    assert "unknown torchvision model 'torchvision/resnet5'; did you mean torchvision/resnet50" in \
        one_error_line(result)
    loaded, result = modules_loaded_by("run", "--data", "fashon-mnist", "--paradigm", "pixels", env=env)
    assert loaded == [], loaded
    assert "data.source: fashon-mnist: no such dataset folder or manifest, and not a builtin dataset " \
           "(fashion-mnist," in one_error_line(result)


def test_remembered_names_are_not_trusted_once_torch_is_imported(tmp_path, monkeypatch):
    from transferlab.core import names

    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path))
    names.remember(["linear"], ["resnet50"], [], ["digits"])  # a stale list: code in this process may register more
    names.refuse_unknown([("paradigms.0", "paradigm", "knn")], "spec.yaml")  # torch is imported here: no answer
    monkeypatch.delitem(sys.modules, "torch")
    with pytest.raises(TransferlabError, match="spec.yaml: paradigms.0: unknown paradigm 'knn'"):
        names.refuse_unknown([("paradigms.0", "paradigm", "knn")], "spec.yaml")
    names.refuse_unknown([("backbones.0.name", "backbone", "resnet50.a1_in1k")], "spec.yaml")  # timm's tag rule


def test_remembered_names_accept_every_name_timm_accepts(tmp_path, monkeypatch):
    import timm

    from transferlab.config import BackboneSpec
    from transferlab.core import names
    from transferlab.resolve import checked

    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path))
    deprecated = "tf_efficientnet_b0_ns"  # renamed by timm, still created under this name
    assert timm.is_model(deprecated) and deprecated not in timm.list_models()
    checked(BackboneSpec(name=deprecated), "spec.yaml")  # the registries accept it, and leave their names
    monkeypatch.delitem(sys.modules, "torch")
    names.refuse_unknown([("backbones.0.name", "backbone", deprecated)], "spec.yaml")
    names.refuse_unknown([("datasets.0.source", "dataset", str(tmp_path))], "spec.yaml")  # a folder that exists
    with pytest.raises(TransferlabError, match="datasets.0.source: flowers: no such dataset folder"):
        names.refuse_unknown([("datasets.0.source", "dataset", "flowers")], "spec.yaml")


def test_version_prints_the_package_version():
    from transferlab import __version__

    result = transferlab("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"transferlab {__version__}"


def test_shell_completion_completes_commands_and_subcommands(monkeypatch):
    script = transferlab("--show-completion", "bash")
    assert script.returncode == 0 and "_TRANSFERLAB_COMPLETE=complete_bash" in script.stdout
    monkeypatch.setenv("_TRANSFERLAB_COMPLETE", "complete_bash")
    for words, cword, expected in (("transferlab ca", 1, "cache"), ("transferlab cache cl", 2, "clear"),
                                   ("transferlab qu", 1, "quantize")):
        monkeypatch.setenv("COMP_WORDS", words)
        monkeypatch.setenv("COMP_CWORD", str(cword))
        assert transferlab().stdout.split() == [expected]


def test_quiet_and_verbose_set_what_a_study_says_on_stderr(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text("name: small\ndatasets: [{source: digits}]\nparadigms: [pixels]\nseeds: [0]\nreferences: []\n")
    said = {flag: transferlab(*([flag] if flag else []), "study", spec, "--out", tmp_path / (flag or "plain"))
            for flag in ("", "-q", "-v")}
    assert all(result.returncode == 0 for result in said.values()), said
    assert all("pixels" in result.stdout for result in said.values())  # the leaderboard is a result: always shown
    assert "runs computed" in said[""].stderr and "features" not in said[""].stderr
    assert said["-q"].stderr.strip() == ""  # no notes, no progress bars
    assert "runs computed" in said["-v"].stderr and "images' features cached" in said["-v"].stderr
    assert "give one of them" in one_error_line(transferlab("-q", "-v", "cache", "info"))


def test_a_python_user_silences_the_messages_through_logging(tmp_path, capsys):
    import logging

    import transferlab as tl

    logger = logging.getLogger("transferlab")
    spec = {"name": "quiet", "datasets": [{"source": "digits"}], "paradigms": ["pixels"], "seeds": [0],
            "references": []}
    tl.study(spec, tmp_path / "loud")
    assert "runs computed" in capsys.readouterr().err
    logger.setLevel(logging.WARNING)
    try:
        tl.study(spec, tmp_path / "quiet")
    finally:
        logger.setLevel(logging.INFO)
    assert "runs computed" not in capsys.readouterr().err
