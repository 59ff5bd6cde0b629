"""The inspect page (`transferlab inspect` → inspect.html): class counts, sizes and modes, a sample grid per class,
augmentation previews and the near-duplicate pairs with thumbnails, drawn from `inspect.Inspection`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2 import Environment, PackageLoader
from PIL import Image, ImageOps
from torchvision.transforms.v2.functional import pil_to_tensor

from ..core.paths import atomic_write_text
from ..data.augment import check_augment, make_augment
from ..inspect import (
    Inspection,
    Pair,
    SplitScan,
    pair_summary,
)
from . import plots
from .plots import data_uri

GRID_CLASSES = 40  # rows of the sample grid; more classes are named, not drawn
PAIRS_SHOWN = 60  # with thumbnails on the page
PREVIEW_DRAWS = 7
PREVIEW_IMAGES = 4
PREVIEW_SIZE = 112
SAMPLES_PER_CLASS = 8
THUMB = 64  # px per image in the table of duplicates
TILE = 80  # px per sample in the grid
UNREADABLE_SHOWN = 200


def write_page(inspection: Inspection, out: str | Path, augment: tuple[str, ...], seed: int) -> Path:
    """OUT/inspect.html: one self-contained page drawn from the analysis."""
    page = render_page(inspection.summary, inspection.scans, inspection.pairs, augment, seed)
    return atomic_write_text(Path(out) / "inspect.html", page)


def render_page(summary: dict[str, Any], scans: dict[str, SplitScan], pairs: list[Pair], augment: tuple[str, ...],
                seed: int) -> str:
    splits = summary["splits"]
    samples = _samples(scans["train"], seed)
    # autoescape on for every value: class names, paths and notes come from users (select_autoescape() would
    # not match *.html.j2 and left it off)
    env = Environment(loader=PackageLoader("transferlab", "report"), autoescape=True)
    return env.get_template("inspect.html.j2").render(
        s=summary,
        counts=data_uri(plots.class_counts({n: s["per_class"] for n, s in splits.items()})),
        sizes=data_uri(plots.image_sizes({n: np.asarray(scan.sizes).reshape(-1, 2) for n, scan in scans.items()})),
        modes=data_uri(plots.image_modes({n: s["modes"] for n, s in splits.items()})),
        grid=data_uri(plots.image_rows(_grid_rows(scans["train"], samples))) if samples else None,
        grid_hidden=summary["classes"][GRID_CLASSES:],
        previews={name: data_uri(plots.image_rows(_preview_rows(scans["train"], samples, name, seed),
                                                   title=f"augmentation '{name}': the image as evaluated, then "
                                                   f"{PREVIEW_DRAWS} random draws"))
                  for name in augment if name != "none" and samples},
        pairs=[{**pair_summary(p), "thumb_a": _thumbnail(p.a, p.i), "thumb_b": _thumbnail(p.b, p.j),
                "short_a": _short(p.a, p.i), "short_b": _short(p.b, p.j)} for p in pairs[:PAIRS_SHOWN]],
        unreadable=summary["unreadable"][:UNREADABLE_SHOWN],
        preview_size=PREVIEW_SIZE,
    )


def _samples(scan: SplitScan, seed: int) -> dict[str, list[int]]:
    """Up to SAMPLES_PER_CLASS readable training images per class (source indices), drawn with the seed."""
    if not scan.indices:
        return {}
    rng = np.random.default_rng(seed)
    analysed = np.asarray(scan.indices)
    matrix = scan.source.label_matrix(analysed)
    chosen = {}
    for c, name in enumerate(scan.source.classes[:GRID_CLASSES]):
        members = analysed[matrix[:, c] == 1]
        take = min(SAMPLES_PER_CLASS, len(members))
        chosen[name] = sorted(rng.choice(members, size=take, replace=False).tolist()) if take else []
    return chosen


def _grid_rows(scan: SplitScan, samples: dict[str, list[int]]) -> list[tuple[str, list[np.ndarray]]]:
    return [(name, [_tile(scan.source.load(i), TILE) for i in indices]) for name, indices in samples.items()]


def _preview_rows(scan: SplitScan, samples: dict[str, list[int]], preset: str,
                  seed: int) -> list[tuple[str, list[np.ndarray]]]:
    """The first sample of the first PREVIEW_IMAGES classes: as evaluated, then PREVIEW_DRAWS augmentations."""
    augment = make_augment(check_augment(preset), PREVIEW_SIZE)
    rows = []
    with torch.random.fork_rng(devices=[]):  # the preview draws must not disturb anyone's RNG, and repeat by seed
        torch.default_generator.manual_seed(seed)  # CPU only: fork_rng(devices=[]) restores the CPU RNG alone
        for name, indices in [(n, i) for n, i in samples.items() if i][:PREVIEW_IMAGES]:
            view = ImageOps.fit(scan.source.load(indices[0]), (PREVIEW_SIZE, PREVIEW_SIZE))
            pixels = pil_to_tensor(view)
            draws = [augment(pixels).permute(1, 2, 0).numpy() for _ in range(PREVIEW_DRAWS)]
            rows.append((name, [np.asarray(view), *draws]))
    return rows


def _tile(image: Image.Image, size: int) -> np.ndarray:
    """A size × size RGB tile, centre-cropped to square; images a quarter of the tile or smaller are scaled up
    as blocks of pixels (smoothing 8-px digits would show detail that is not there)."""
    resample = Image.Resampling.NEAREST if 4 * max(image.size) <= size else Image.Resampling.LANCZOS
    return np.asarray(ImageOps.fit(image, (size, size), method=resample))


def _thumbnail(scan: SplitScan, position: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(_tile(scan.source.load(scan.indices[position]), THUMB)).save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


def _short(scan: SplitScan, position: int) -> str:
    """The file relative to its dataset root (the page is narrow; the JSON keeps full paths)."""
    name = scan.source.describe(scan.indices[position])
    root = getattr(scan.source, "root", None)
    return str(Path(name).relative_to(root)) if root is not None and Path(name).is_relative_to(root) else name
