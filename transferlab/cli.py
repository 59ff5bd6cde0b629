"""The command line: a thin typer layer over the Python API. Input errors exit 2 with one line on stderr."""

from __future__ import annotations

import inspect
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.filesize import decimal
from rich.table import Table

from . import __version__
from .api import DEFAULT_RUN_DIR, NEAR_DUPLICATE_BITS
from .core.errors import TransferlabError
from .core.progress import set_verbosity

app = typer.Typer(help="Find the pretrained backbone and adaptation paradigm that work best on your images.",
                  no_args_is_help=True, pretty_exceptions_enable=False)  # typer's --install-completion too

TRACK_HELP = ("also log the runs to mlflow or tensorboard (needs pip install 'transferlab[track]'); none turns "
              "the spec's tracking off [default: the spec's tracking]")
TRACKING_URI_HELP = ("mlflow: tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db]; "
                     "tensorboard: log folder [default: OUT/tensorboard]")


def _print_version(given: bool) -> None:
    if given:
        print(f"transferlab {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="print transferlab's version and exit"),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="only warnings, errors and results: no progress "
                                        "bars or notes"),
             verbose: bool = typer.Option(False, "--verbose", "-v", help="also what was reused, measured and "
                                          "cached (DEBUG)")) -> None:
    """The app's own options; the commands' are theirs."""
    if quiet and verbose:
        raise TransferlabError("-q and -v: give one of them")
    set_verbosity(quiet=quiet, verbose=verbose)


@app.command()
def study(spec: Path = typer.Argument(..., help="YAML study spec (datasets × backbones × paradigms × seeds)"),
          out: Path | None = typer.Option(None, help="output folder [default: runs/<spec name>]"),
          skip_bad: bool = typer.Option(False, help="skip unreadable images and list them in the run records"),
          force: bool = typer.Option(False, help="recompute cells whose records are up to date"),
          resume: bool = typer.Option(False, help="continue interrupted training runs from their last epoch"),
          mini: bool = typer.Option(False, help="run the spec's offline miniature (its mini: block: stand-in data "
                                    "and backbones, few epochs) [default out: runs/<spec name>-mini]"),
          storage: str | None = typer.Option(None, help="Optuna storage URL (e.g. postgresql://user@host/db): spread "
                                             "the cells over every process started with it; OUT and "
                                             "$TRANSFERLAB_CACHE on a shared file system"),
          worker: bool = typer.Option(False, help="with --storage: run cells until none is left, then exit; the "
                                      "command without --worker waits for the last and writes the report"),
          study_name: str | None = typer.Option(None, help="the cell queue's name in the storage [default: <spec "
                                                "name>-cells]"),
          track: str | None = typer.Option(None, help=TRACK_HELP),
          tracking_uri: str | None = typer.Option(None, help=TRACKING_URI_HELP)):
    """Run every cell of a study, then its search: and prune: steps if any; print the leaderboard; write
    records, leaderboard.csv and report.html."""
    from .api import study as run_study

    run_study(spec, out, skip_bad=skip_bad, force=force, resume=resume, mini=mini, storage=storage, worker=worker,
              study_name=study_name, track=track, tracking_uri=tracking_uri)


@app.command()
def search(spec: Path = typer.Argument(..., help="YAML study spec with a search: block (space, objective, sampler)"),
           trials: int | None = typer.Option(None, help="the budget, shared by every worker [default: the spec's, "
                                             "else 20; grid: every point]"),
           timeout: float | None = typer.Option(None, help="seconds after which this process starts no new trial"),
           storage: str | None = typer.Option(None, help="Optuna storage URL, e.g. postgresql://user@host/db "
                                              "[default: sqlite file OUT/search.db]"),
           study_name: str | None = typer.Option(None, help="the search's name in the storage [default: the spec's "
                                                 "name]"),
           out: Path | None = typer.Option(None, help="output folder [default: runs/<spec name>]"),
           worker: bool = typer.Option(False, help="only run trials of the (existing or new) search, then exit; the "
                                       "command without --worker retrains the best and writes the report"),
           resume: bool = typer.Option(False, help="continue a stored search even though its space differs"),
           track: str | None = typer.Option(None, help=TRACK_HELP),
           tracking_uri: str | None = typer.Option(None, help=TRACKING_URI_HELP)):
    """Tune a study's options with Optuna on validation, then retrain the best and score it once on test."""
    from .api import search as run_search

    run_search(spec, out, trials=trials, timeout=timeout, storage=storage, study_name=study_name, worker=worker,
               resume=resume, track=track, tracking_uri=tracking_uri)


@app.command()
def run(data: str = typer.Option(..., help="image folder (root/<class>/<image>) or builtin: fashion-mnist, digits"),
        test: str | None = typer.Option(None, help="explicit test folder (else carved from --data)"),
        val: str | None = typer.Option(None, help="explicit validation folder (else carved from training)"),
        backbone: str | None = typer.Option(None, help="timm model name (none for the pixels paradigm)"),
        weights: str | None = typer.Option(None, help="auto | offline | hub | random | path to .safetensors/.pth "
                                            "[default: auto]"),
        image_size: int | None = typer.Option(None, help="override the backbone's pretrained input size"),
        paradigm: str = typer.Option("linear", help="knn | linear | rff | mlp | pixels | head | finetune | "
                                     "scratch | bit | simple-cnn | majority | all-negative"),
        param: list[str] = typer.Option([], "--param", "-p", help="paradigm hyper-parameter KEY=VALUE (YAML)"),
        train_size: int | None = typer.Option(None, help="few-shot: training images (stratified)"),
        data_option: list[str] = typer.Option([], "--data-option", "-d",
                                              help="any data field KEY=VALUE (YAML), e.g. -d folds=5 -d 'ratios=[50, "
                                              "20, 30]' -d multi_label=true"),
        seed: int = typer.Option(0, help="seed for the val/train draw and the paradigm"),
        # Run options default to None: the spec's schema (config.RunSpec) holds the one default of each.
        engine: str | None = typer.Option(None, help="frozen-pass engine: auto | onnx | torch [default: auto]"),
        device: str | None = typer.Option(None, help="auto | cpu | cuda | cuda:N | mps [default: auto]"),
        threshold: str | None = typer.Option(None, help="multi-label: global | per_class decision thresholds, "
                                             "tuned on validation [default: global]"),
        final: bool | None = typer.Option(None, "--final/--no-final", help="retrain the configuration chosen on "
                                          "validation on train + val before the one test score [default: no]"),
        out: Path = typer.Option(DEFAULT_RUN_DIR, help="output folder; the record goes to OUT/runs/<run id>.json"),
        skip_bad: bool = typer.Option(False, help="skip unreadable images and list them in the record"),
        force: bool = typer.Option(False, help="recompute even if the record is up to date"),
        resume: bool = typer.Option(False, help="continue an interrupted training run from its last epoch"),
        track: str | None = typer.Option(None, help="also log the run to mlflow (experiment transferlab-runs) or "
                                         "tensorboard (needs pip install 'transferlab[track]')"),
        tracking_uri: str | None = typer.Option(None, help=TRACKING_URI_HELP)):
    """Run one dataset × backbone × paradigm cell and write its record."""
    from .api import run as run_one
    from .core.progress import results

    cell = _cell_specs(data, test, val, backbone, weights, image_size, paradigm, param, train_size, data_option,
                       skip_bad)
    options = _given({"engine": engine, "device": device, "threshold": threshold, "final": final})
    record = run_one(*cell, seed=seed, out=out, force=force, resume=resume, track=track, tracking_uri=tracking_uri,
                     **options)
    from .runner import headline  # after the run: a bad spec answers before torch is imported

    results.print(f"{record['run_id']}: {headline(record)}")
    results.print(f"record: {Path(out) / 'runs' / (record['run_id'] + '.json')}")


def _cell_specs(data, test, val, backbone, weights, image_size, paradigm, param, train_size, data_option,
                skip_bad) -> tuple[dict, dict | None, dict]:
    """`run`'s and `lr-find`'s options → the (data, backbone, paradigm) specs of one cell."""
    data_spec: dict[str, Any] = {"source": data, "test": test, "val": val, "train_size": train_size,
                                 "skip_bad": skip_bad or None, **_parse_params(data_option, "--data-option")}
    if backbone == "none":  # what --help offers for paradigms that use no backbone (pixels, simple-cnn, ...)
        if weights or image_size:
            raise TransferlabError("--backbone none uses no backbone; drop --weights / --image-size")
        backbone = None
    backbone_spec = _given({"name": backbone, "weights": weights, "image_size": image_size}) if backbone else None
    return _given(data_spec), backbone_spec, {"name": paradigm, **_parse_params(param)}


def lr_find(data, test, val, backbone, weights, image_size, paradigm, param, train_size, data_option, seed, engine,
            device, out, skip_bad) -> None:
    """The learning-rate range test for one cell (fastai's lr_find): loss against an exponentially growing lr over
    training batches, the suggested lr and the rule that chose it, and the plot. Trains nothing; use the
    suggestion as the paradigm's lr, or give lr: find to run the test inside a run."""
    from .api import lr_find as find_lr
    from .core.progress import results

    cell = _cell_specs(data, test, val, backbone, weights, image_size, paradigm, param, train_size, data_option,
                       skip_bad)
    found = find_lr(*cell, seed=seed, out=out, **_given({"engine": engine, "device": device}))
    results.print(f"{found['run_id']}: suggested lr {found['suggested_lr']:.2e} ({found['rule']})")
    results.print(f"curve: {found['plot_path']} (data: {found['json_path']})")


# lr-find takes run's options (the same help), less those about scoring and reuse, and defaults to a paradigm that
# has an lr: typer reads the signature.
lr_find.__signature__ = inspect.signature(run).replace(parameters=[
    option.replace(default=typer.Option("finetune", help="finetune | head | scratch | simple-cnn: a paradigm that "
                                        "trains with lr")) if name == "paradigm" else option
    for name, option in inspect.signature(run).parameters.items()
    if name not in ("threshold", "final", "force", "resume", "track", "tracking_uri")])
lr_find.__annotations__ = {name: hint for name, hint in typing.get_type_hints(run).items()
                           if name in lr_find.__signature__.parameters}
app.command("lr-find")(lr_find)


@app.command()
def report(study_dir: Path = typer.Argument(..., help="a study's output folder (holds runs/*.json)")):
    """Rebuild report.html from the run records alone."""
    from .api import report as build

    print(build(study_dir))


@app.command()
def inspect(data: str = typer.Argument(..., help="image folder (root/<class>/<image>) or builtin: fashion-mnist, "
                                       "digits"),
            val: str | None = typer.Option(None, help="explicit validation folder (else carved from training)"),
            test: str | None = typer.Option(None, help="explicit test folder (else carved from DATA)"),
            seed: int = typer.Option(0, help="seed of the val draw (as in `run`) and of the samples shown"),
            out: Path | None = typer.Option(None, help="output folder [default: inspect/<dataset name>]"),
            limit: int | None = typer.Option(None, help="analyse at most this many images per split (seeded sample)"),
            augment: list[str] = typer.Option(["light"], help="augmentation preset (or YAML file of transforms) "
                                              "to preview; repeat for several"),
            threshold: int = typer.Option(NEAR_DUPLICATE_BITS, help="near-duplicates: at most this many of 256 "
                                          "perceptual-hash bits apart")):
    """Look at a dataset: counts per class and split, sizes, modes, samples, augmentations, unreadable files,
    and near-duplicates across splits; write inspect.html and inspect.json."""
    from .api import inspect as inspect_data
    from .core.progress import results

    summary = inspect_data(data, val=val, test=test, seed=seed, out=out, limit=limit, augment=augment,
                           threshold=threshold)
    for name, split in summary["splits"].items():
        results.print(f"{name}: {split['images']} images, {split['analysed']} analysed, "
                      f"{split['unreadable']} unreadable")
    for finding in summary["findings"]:
        results.print(f"- {finding}")
    results.print(f"page: {summary['files']['html']}\nsummary: {summary['files']['json']}")


RUN_HELP = "a run: its record (OUT/runs/<id>.json), model file (OUT/models/<id>.safetensors), or run id"
RUNS_HELP = "where run ids are looked up (every study folder under it)"


@app.command()
def predict(run: str = typer.Argument(..., help=RUN_HELP),
            images: list[str] = typer.Argument(..., help="image files, folders (searched recursively) or globs"),
            top_k: int = typer.Option(5, help="classes listed per image, most probable first"),
            out: Path | None = typer.Option(None, help="write the predictions to this .csv or .json file"),
            runs: Path = typer.Option(Path("runs"), help=RUNS_HELP),
            explain: bool = typer.Option(False, help="also write a Grad-CAM overlay per image, <stem>.gradcam.png, "
                                         "to explain/ beside --out (else OUT/deploy/<run id>/explain/), its path in "
                                         "the predictions (needs transferlab[explain])"),
            explain_dir: Path | None = typer.Option(None, help="--explain, with the overlays in this folder")):
    """Classify new images with a run's model, preprocessed exactly as the run was."""
    from .api import predict as predict_images
    from .core.progress import results

    if top_k < 1:
        raise TransferlabError(f"--top-k {top_k}: give at least 1")
    # typer has no option with an optional value, so the folder is its own option
    predictions = predict_images(run, images, top_k=top_k, out=out, runs=runs, explain=explain_dir or explain)
    shown = 20
    for row in predictions.rows[:shown]:
        answer = ", ".join(row["labels"]) or "(no label)" if "labels" in row else row["prediction"]
        top = "  ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"])
        results.print(f"{row['path']}: [bold]{answer}[/]   {top}")
    if len(predictions.rows) > shown:
        results.print(f"… {len(predictions.rows) - shown} more{'' if out else ' (write them all with --out FILE)'}")
    for problem in predictions.unreadable:
        results.print(f"[yellow]unreadable[/] {problem}")
    results.print(f"{len(predictions.rows)} predicted, {len(predictions.unreadable)} unreadable"
                  + (f"; written to {out}" if out else ""))
    overlays = [row["gradcam"] for row in predictions.rows if "gradcam" in row]
    if overlays:
        results.print(f"{len(overlays)} Grad-CAM overlays in {Path(overlays[0]).parent}")


@app.command()
def export(run: str = typer.Argument(..., help=RUN_HELP),
           format: str = typer.Option("onnx", "--format", "-f", help="onnx | torchscript | safetensors | timm (a "
                                       "trained timm network in timm's own Hub layout)"),
           out: Path | None = typer.Option(None, help="output folder [default: OUT/deploy/<run id>]"),
           runs: Path = typer.Option(Path("runs"), help=RUNS_HELP)):
    """Export a run's model (uint8 images → class scores) with a model card and a parity check on test images."""
    from .api import export as export_run
    from .core.progress import results

    card = export_run(run, format, out=out, runs=runs)
    parity = card["parity"]
    results.print(f"parity on {parity['images']} test images: max |Δscore| {parity['max_abs_diff']:.1e} "
                  f"(limit {parity['limit']:g}), top-1 agreement {parity['top1_agreement']:.0%}")
    results.print(f"{format}: {card['path']}\ncard: {card['card_path']} (and {card['readme_path']}, for a person)")


@app.command()
def prune(run: str = typer.Argument(..., help=RUN_HELP),
          sparsity: str = typer.Option("0.8", help="fraction of weights zeroed; a list 0.5,0.7,0.9 draws the curve"),
          scope: str = typer.Option("head", help="head | backbone | all"),
          structured: bool = typer.Option(False, help="remove whole channels / rows (L2 norm) instead of weights"),
          recover_epochs: int = typer.Option(0, help="fine-tune this many epochs after pruning, masks kept"),
          out: Path | None = typer.Option(None, help="output folder [default: OUT/deploy/<run id>]"),
          runs: Path = typer.Option(Path("runs"), help=RUNS_HELP)):
    """Magnitude-prune a run's model; accuracy, non-zero parameters and compressed size before and after."""
    from .api import prune as prune_run
    from .core.progress import results

    try:
        sparsities = [float(s) for s in sparsity.split(",") if s.strip()]
    except ValueError:
        raise TransferlabError(f"--sparsity {sparsity}: give fractions, e.g. 0.8 or 0.5,0.7,0.9") from None
    summary = prune_run(run, sparsities, scope=scope, structured=structured, recover_epochs=recover_epochs,
                        out=out, runs=runs)
    metric, dense = summary["metric"], summary["dense"]
    results.print(f"{summary['method']}, scope {scope}: {metric} val / test, non-zero parameters in scope, gzip size "
                  "in scope / whole model")
    for name, row in [("dense", dense), *((f"{r['sparsity']:.2f}", r) for r in summary["results"])]:
        size = row["size"]
        results.print(f"  {name}: {_pair(row)}   {row['nonzero_scope']:,}   {size['scope_gzip'] / 1e6:.3f} / "
                      f"{size['gzip'] / 1e6:.2f} MB   {row.get('file', '')}")
    results.print(f"{summary['note']}\nsummary: {summary['path']}")


def _pair(row: dict[str, Any]) -> str:
    return " / ".join("–" if row.get(k) is None else f"{row[k]:.4f}" for k in ("val", "test"))


@app.command()
def quantize(run: str = typer.Argument(..., help=RUN_HELP),
             mode: str = typer.Option("dynamic", help="dynamic (weights int8) | static (calibrated on train images)"),
             calibration: int = typer.Option(200, help="static: training images used for calibration"),
             out: Path | None = typer.Option(None, help="output folder [default: OUT/deploy/<run id>]"),
             runs: Path = typer.Option(Path("runs"), help=RUNS_HELP)):
    """int8 ONNX through ONNX Runtime; accuracy and latency before and after."""
    from .api import quantize as quantize_run
    from .core.progress import results

    summary = quantize_run(run, mode=mode, calibration=calibration, out=out, runs=runs)
    results.print(summary.get("text") or summary)


@app.command()
def serve(run: str = typer.Argument(..., help=RUN_HELP),
          host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
          port: int = typer.Option(8000, help="TCP port"),
          max_upload_mb: float = typer.Option(20.0, help="larger uploads get HTTP 413"),
          max_pixels: int = typer.Option(25_000_000, help="larger images (width × height) get HTTP 400"),
          allowed_host: list[str] = typer.Option([], help="a Host header to accept (repeatable; default: the "
                                                 "address bound, or any when bound to 0.0.0.0)"),
          runs: Path = typer.Option(Path("runs"), help=RUNS_HELP)):
    """Answer over HTTP: POST /predict (an image → top-k JSON), GET / (a page to drop an image on), GET /health."""
    try:
        from .deploy.serve import serve as serve_run
    except ImportError as exc:
        raise TransferlabError(f"serve needs {exc.name}: pip install 'transferlab[serve]'") from None

    serve_run(run, host=host, port=port, runs=runs, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
              allowed_hosts=allowed_host or None)


cache_app = typer.Typer(help="Show and trim the caches under $TRANSFERLAB_CACHE (features, decoded images, "
                        "exports, engine choices, downloads); everything there is rebuilt when needed.",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info():
    """Each kind of cache: its folder, files, size and last write."""
    from .api import cache_info as usage
    from .core.progress import results

    table = Table("kind", "files", "size", "last written", "folder")
    rows = usage()
    for row in rows:
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["newest"])) if row["newest"] else "-"
        table.add_row(row["kind"], str(row["files"]), decimal(row["bytes"]), written, str(row["path"]))
    table.add_row("all", str(sum(r["files"] for r in rows)), decimal(sum(r["bytes"] for r in rows)), "", "")
    results.print(table)


@cache_app.command("clear")
def cache_clear(kinds: list[str] | None = typer.Argument(None, help="kinds to clear (features, decoded, onnx, "
                                                         "engines, torchvision) [default: all]"),
                older_than: float | None = typer.Option(None, "--older-than", help="only files last written more "
                                                         "than this many days ago")):
    """Remove cached files; the next run that needs them rebuilds them."""
    from .api import cache_clear as clear
    from .core.progress import results

    removed = clear(kinds, older_than_days=older_than)
    results.print(f"removed {removed['files']} files, {decimal(removed['bytes'])}")


def _given(fields: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave: the others are left to the spec's defaults (config.py), stated there once."""
    return {k: v for k, v in fields.items() if v is not None}


def _parse_params(pairs: list[str], option: str = "--param") -> dict[str, Any]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TransferlabError(f"{option} {pair}: write KEY=VALUE, e.g. {option} k=10 or {option} 'C=[0.1, 1]'")
        try:
            parsed = yaml.safe_load(value)
            # '|' and '>' are YAML's block-scalar marks and parse to "": a separator such as -d label_separator=|
            # means the character itself
            params[key.strip()] = value.strip() if parsed == "" and value.strip() else parsed
        except yaml.YAMLError:
            raise TransferlabError(f"{option} {pair}: the value is not valid YAML; e.g. {option} 'C=[0.1, 1]'") \
                from None
    return params


def main() -> None:
    # torch (core.distributed's) is imported here only under torchrun, so that --help, --version and a bad spec
    # answer in a fraction of a second (benchmarks/cli_startup.py); a command imports what it needs when it runs.
    distributed = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from .core import distributed

    try:
        if distributed:
            distributed.init_from_env()
        app(prog_name="transferlab")  # the same name whether started as `transferlab` or `python -m transferlab`
    except TransferlabError as exc:
        print(f"transferlab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("transferlab: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if distributed:
            distributed.shutdown()
