"""A real multi-label dataset for tests: 2×2 mosaics of Fashion-MNIST garments, some tiles left empty.

Each tile holds a garment of one of `MOSAIC_CLASSES` with probability 1 − `empty`, else stays black; an
image's labels are the classes of its garments, so many images have one, several or no label at all.
The mosaics are built by `transferlab.data.mosaics` (the `fashion-mnist-mosaics` builtin uses it too);
these four classes, renamed, are the tests' own smaller version.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.data.mosaics import garment_mosaics

MOSAIC_CLASSES = {0: "tshirt", 1: "trouser", 5: "sandal", 8: "bag"}  # Fashion-MNIST label → class name


def fashion_mosaics(source, n: int, seed: int, *, empty: float = 0.65) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`n` 56×56 grayscale mosaics built from `source` (a Fashion-MNIST ArraySource) and their N×C labels."""
    images, labels = garment_mosaics(source, n, seed, classes=list(MOSAIC_CLASSES), empty=empty)
    return images, labels, list(MOSAIC_CLASSES.values())


def write_mosaic_manifest(source, folder: Path, n: int, seed: int, *, empty: float = 0.65,
                          name: str = "manifest.csv") -> Path:
    """PNG mosaics under `folder/images/` and a `path,labels` CSV (labels joined by spaces, empty = none)."""
    images, labels, classes = fashion_mosaics(source, n, seed, empty=empty)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    manifest = folder / name
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        for i, (image, row) in enumerate(zip(images, labels, strict=True)):
            path = f"images/{Path(name).stem}_{i:05d}.png"
            Image.fromarray(image).save(folder / path)
            writer.writerow([path, " ".join(c for c, on in zip(classes, row, strict=True) if on)])
    return manifest
