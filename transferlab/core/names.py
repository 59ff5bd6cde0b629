"""Which paradigm, model and builtin dataset names exist, answered before torch is imported.

The paradigm and dataset registries and timm's / torchvision's model lists live in modules that import torch
(about 2 s on 2 cores), so a misspelt name in a spec used to cost that wait before its one-line error (issue
21). Every process that has imported them leaves their names in `$TRANSFERLAB_CACHE/names/<key>.json` (`remember`), the
key a hash of transferlab's code and timm's and torchvision's versions; a later process that has not imported
torch yet refuses an unknown name from that file (`refuse_unknown`) and never imports it.

The file only ever *refuses*: a name it knows still goes through the full registry check. It is not read once
torch is imported, since code that imports transferlab may register its own paradigms or timm models that no
file lists; there the registries answer, as they would anyway.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from .errors import TransferlabError
from .paths import atomic_write_text, cache_root
from .registry import unknown_name_message

TORCHVISION_PREFIX = "torchvision/"  # a backbone name of torchvision's (models/torchvision_nets.py)
HUB_DATASET_PREFIX = "hf:"  # a dataset source on the Hugging Face Hub (data/hf.py)
KINDS = ("paradigm", "timm", "torchvision", "dataset")  # what the file lists


@functools.cache
def code_digest() -> str:
    """A hash of transferlab's own code (every .py file under the package). Records use it too: a change to a
    paradigm or the loop makes old records stale. (The version number would not: it stays 0.1.0 across every
    edit of an editable install.)"""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parents[1].rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _index_path() -> Path:
    versions = [code_digest(), *(_version(package) for package in ("timm", "torchvision"))]
    return cache_root() / "names" / f"{hashlib.sha256('|'.join(versions).encode()).hexdigest()[:16]}.json"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def remembered() -> bool:
    """Whether this code's and these versions' names are on disk already."""
    return _index_path().exists()


def remember(paradigms: Iterable[str], timm_models: Iterable[str], torchvision_models: Iterable[str],
             datasets: Iterable[str]) -> None:
    """Write the names this process's registries know (`remembered()` says whether that is still needed)."""
    names = {"paradigm": sorted(paradigms), "timm": sorted(timm_models), "torchvision": sorted(torchvision_models),
             "dataset": list(datasets)}  # in registration order, as the error lists them
    atomic_write_text(_index_path(), json.dumps(names))


def _known() -> dict[str, list[str]] | None:
    """The remembered names, or None: torch is imported already (the registries answer), or no file yet."""
    if "torch" in sys.modules:
        return None
    try:
        known = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return None
    return known if isinstance(known, dict) and set(known) == set(KINDS) else None


def refuse_unknown(entries: Iterable[tuple[str, str, str]], where: str) -> None:
    """For (field, kind, name) entries (kind: paradigm, backbone or dataset), raise the registries' one line
    `where: field: unknown ...` for the first name the remembered names lack; do nothing without them."""
    known = _known()
    if known is None:
        return
    for field, kind, name in entries:
        problem = _problem(kind, name, known)
        if problem:
            raise TransferlabError(": ".join(part for part in (where, field, problem) if part))


def _problem(kind: str, name: str, known: dict[str, list[str]]) -> str | None:
    if kind == "paradigm":
        return unknown_name_message("paradigm", name, known["paradigm"])
    if kind == "backbone":
        return unknown_model_message(name, known["timm"], known["torchvision"])
    return unknown_dataset_message(name, known["dataset"])


def unknown_model_message(name: str, timm_models: list[str], torchvision_models: list[str]) -> str | None:
    """The one line for a model name neither timm nor torchvision has, else None: `name` is a timm architecture
    with an optional `.tag` (timm.is_model's rule), or `torchvision/<architecture>[.WEIGHTS]`."""
    if name.startswith(TORCHVISION_PREFIX):
        architecture = name.removeprefix(TORCHVISION_PREFIX).partition(".")[0]
        if architecture in torchvision_models:
            return None
        close = difflib.get_close_matches(architecture, torchvision_models, n=3, cutoff=0.6)
        hint = (f"; did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}?" if close
                else "; see torchvision.models.list_models(module=torchvision.models)")
        return f"unknown torchvision model '{name}'{hint}"
    if name.partition(".")[0] in timm_models:
        return None
    close = difflib.get_close_matches(name, timm_models, n=3, cutoff=0.6)
    if name in torchvision_models:  # timm lacks it (alexnet, vgg16_bn, ...), torchvision has it
        close = [TORCHVISION_PREFIX + name, *close]
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    return f"unknown timm model '{name}'{hint}"


def unknown_dataset_message(source: str, builtins: list[str]) -> str | None:
    """The one line for a dataset source that is no builtin dataset, no Hub dataset and no existing folder or
    file, else None."""
    if source in builtins or source.startswith(HUB_DATASET_PREFIX) or Path(source).exists():
        return None
    return f"{source}: no such dataset folder or manifest, and not a builtin dataset ({', '.join(builtins)}); " \
           "check the path"
