"""The command line: a thin typer layer over the Python API. Input errors exit 2 with one line on stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
import yaml

from .api import DEFAULT_RUN_DIR
from .errors import TransferlabError

app = typer.Typer(help="Find the pretrained backbone and adaptation paradigm that work best on your images.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command()
def study(spec: Path = typer.Argument(..., help="YAML study spec (datasets × backbones × paradigms × seeds)"),
          out: Path | None = typer.Option(None, help="output folder [default: runs/<spec name>]"),
          skip_bad: bool = typer.Option(False, help="skip unreadable images and list them in the run records"),
          force: bool = typer.Option(False, help="recompute cells whose records are up to date"),
          resume: bool = typer.Option(False, help="continue interrupted training runs from their last epoch")):
    """Run every cell of a study; print the leaderboard; write records, leaderboard.csv and report.html."""
    from .api import study as run_study

    run_study(spec, out, skip_bad=skip_bad, force=force, resume=resume)


@app.command()
def run(data: str = typer.Option(..., help="image folder (root/<class>/<image>) or builtin: fashion-mnist, digits"),
        test: str | None = typer.Option(None, help="explicit test folder (else carved from --data)"),
        val: str | None = typer.Option(None, help="explicit validation folder (else carved from training)"),
        backbone: str | None = typer.Option(None, help="timm model name (none for the pixels paradigm)"),
        weights: str = typer.Option("auto", help="auto | offline | hub | random | path to .safetensors/.pth"),
        image_size: int | None = typer.Option(None, help="override the backbone's pretrained input size"),
        paradigm: str = typer.Option("linear", help="knn | linear | rff | mlp | pixels | finetune | scratch | "
                                     "simple-cnn"),
        param: list[str] = typer.Option([], "--param", "-p", help="paradigm hyper-parameter KEY=VALUE (YAML)"),
        train_size: int | None = typer.Option(None, help="few-shot: training images (stratified)"),
        seed: int = typer.Option(0, help="seed for the val/train draw and the paradigm"),
        engine: str = typer.Option("auto", help="frozen-pass engine: auto | onnx | torch"),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        out: Path = typer.Option(DEFAULT_RUN_DIR, help="output folder; the record goes to OUT/runs/<run id>.json"),
        skip_bad: bool = typer.Option(False, help="skip unreadable images and list them in the record"),
        force: bool = typer.Option(False, help="recompute even if the record is up to date"),
        resume: bool = typer.Option(False, help="continue an interrupted training run from its last epoch")):
    """Run one dataset × backbone × paradigm cell and write its record."""
    from .api import run as run_one
    from .progress import results
    from .runner import headline

    data_spec: dict[str, Any] = {"source": data, "test": test, "val": val, "train_size": train_size,
                                 "skip_bad": skip_bad}
    backbone_spec = {"name": backbone, "weights": weights, "image_size": image_size} if backbone else None
    paradigm_spec = {"name": paradigm, **_parse_params(param)}
    record = run_one({k: v for k, v in data_spec.items() if v is not None}, backbone_spec, paradigm_spec,
                     seed=seed, out=out, force=force, resume=resume, engine=engine,
                     device=device)
    results.print(f"{record['run_id']}: {headline(record)}")
    results.print(f"record: {Path(out) / 'runs' / (record['run_id'] + '.json')}")


@app.command()
def report(study_dir: Path = typer.Argument(..., help="a study's output folder (holds runs/*.json)")):
    """Rebuild report.html from the run records alone."""
    from .api import report as build

    print(build(study_dir))


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TransferlabError(f"--param {pair}: write KEY=VALUE, e.g. --param k=10 or --param 'C=[0.1, 1]'")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise TransferlabError(f"--param {pair}: the value is not valid YAML; e.g. --param 'C=[0.1, 1]'") from None
    return params


def main() -> None:
    from . import distributed

    try:
        distributed.init_from_env()  # a no-op unless launched by torchrun
        app()
    except TransferlabError as exc:
        print(f"transferlab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("transferlab: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        distributed.shutdown()
