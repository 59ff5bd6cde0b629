"""A real multi-label dataset made offline: 2×2 mosaics of Fashion-MNIST garments, some tiles left empty.

Each tile holds, with probability 1 − `empty`, a garment drawn from the chosen classes, else stays black;
an image's labels are the classes of its garments, so an image has one, several or no label at all. The
pixels are real photographs of garments, and the labels are exactly what the image shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .sources import ArraySource

TILE = 28  # Fashion-MNIST's side; a mosaic is 2 × 2 tiles


def garment_mosaics(garments: ArraySource, n: int, seed: int, *, classes: Sequence[int],
                    empty: float) -> tuple[np.ndarray, np.ndarray]:
    """`n` 56×56 uint8 mosaics of `garments` images and their N × len(classes) 0/1 labels (column j: a
    garment of class `classes[j]` is in the image). Only garments of `classes` are drawn."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(np.isin(garments.labels, classes))
    column = np.full(len(garments.classes), -1)
    column[list(classes)] = np.arange(len(classes))
    # Drawn one tile at a time, in this order, so a seed keeps giving the same mosaics (tests depend on them);
    # only the pasting below is vectorised.
    where, chosen = [], []
    for i in range(n):
        for tile in range(4):
            if rng.random() < empty:
                continue
            where.append((i, tile))
            chosen.append(int(rng.choice(pool)))
    images = np.zeros((n, 4, TILE, TILE), dtype=np.uint8)
    labels = np.zeros((n, len(classes)), dtype=np.uint8)
    if chosen:
        image, tile = np.asarray(where).T
        images[image, tile] = garments.images[chosen]
        labels[image, column[garments.labels[chosen]]] = 1
    # (n, row, col, y, x) → (n, row·y, col·x)
    images = images.reshape(n, 2, 2, TILE, TILE).transpose(0, 1, 3, 2, 4).reshape(n, 2 * TILE, 2 * TILE)
    return images, labels
