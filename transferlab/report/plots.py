"""Figures for the report, as PNG bytes (matplotlib, headless)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def accuracy_bars(rows: list[dict[str, Any]], dataset: str) -> bytes:
    """Test accuracy per backbone × paradigm (mean, with ± std over seeds), best on top."""
    rows = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["accuracy_mean"])
    backbones = sorted({r["backbone"] for r in rows})
    colours = {b: plt.cm.tab10(i % 10) for i, b in enumerate(backbones)}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    means = [r["accuracy_mean"] for r in rows]
    stds = [0 if np.isnan(r["accuracy_std"]) else r["accuracy_std"] for r in rows]
    ax.barh(range(len(rows)), means, xerr=stds, color=[colours[r["backbone"]] for r in rows], capsize=3)
    ax.set_yticks(range(len(rows)), [f"{r['paradigm']}  ({r['backbone']})" for r in rows])
    for y, (m, s) in enumerate(zip(means, stds, strict=True)):
        ax.text(m + s + 0.005, y, f"{m:.3f}", va="center", fontsize=8)
    low = max(0.0, min(means) - 0.1)
    ax.set_xlim(low, min(1.0, max(m + s for m, s in zip(means, stds, strict=True)) + 0.06))
    ax.set_xlabel("test accuracy (mean ± std over seeds)")
    ax.set_title(f"{dataset}: accuracy per backbone × paradigm")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def confusion(matrix: list[list[int]], classes: list[str], title: str) -> bytes:
    """Row-normalised confusion matrix (recall on the diagonal), counts in the cells."""
    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 25:
        for (i, j), n in np.ndenumerate(counts):
            if n:
                ax.text(j, i, int(n), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_title(title)
    return _png(fig)


def learning_curves(records: list[dict[str, Any]]) -> bytes:
    """Train loss and validation accuracy per epoch, one line per run that trained weights."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for record in records:
        history = record["history"]
        epochs = range(1, len(history) + 1)
        label = f"{record['labels']['paradigm']} ({record['labels']['backbone']}) s{record['seed']}"
        line, = loss_ax.plot(epochs, [h["train_loss"] for h in history], label=label)
        acc_ax.plot(epochs, [h["val_accuracy"] for h in history], color=line.get_color(), label=label)
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


# ---------------------------------------------------------------- dataset inspection (`transferlab inspect`)

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
_DPI = 110  # the resolution `_png` saves at


def class_counts(counts: dict[str, dict[str, int]]) -> bytes:
    """Images per class, one panel per split (classes share the y axis), the count at each bar's end."""
    splits = list(counts)
    classes = list(counts[splits[0]])
    fig, axes = plt.subplots(1, len(splits), figsize=(3.4 * len(splits) + 1.6, 0.26 * len(classes) + 1.3),
                             sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        values = [counts[split][c] for c in classes]
        ax.barh(range(len(classes)), values, color=SPLIT_COLOURS.get(split, "tab:gray"))
        for y, value in enumerate(values):
            ax.text(value, y, f" {value}", va="center", fontsize=7)
        ax.set_xlim(0, max(max(values, default=0) * 1.22, 1))
        ax.set_title(split)
        ax.set_xlabel("images", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(classes)), classes, fontsize=8 if len(classes) <= 40 else 6)
    axes[0][0].invert_yaxis()  # the first class on top, as in the tables
    return _png(fig)


def image_sizes(sizes: dict[str, np.ndarray], max_bars: int = 12) -> bytes:
    """Width × height per split (arrays of N × 2): one bar per distinct size when there are few, else a scatter."""
    keys = {split: [f"{w}×{h}" for w, h in wh] for split, wh in sizes.items()}
    distinct = sorted({k for ks in keys.values() for k in ks}, key=lambda k: tuple(map(int, k.split("×"))))
    fig, ax = plt.subplots(figsize=(5.2, 0.32 * min(len(distinct), max_bars) + 1.6))
    if len(distinct) <= max_bars:
        _grouped_bars(ax, distinct, {split: [ks.count(k) for k in distinct] for split, ks in keys.items()})
        ax.set_xlabel("images")
        ax.set_title("image sizes (width × height)")
    else:
        for split, wh in sizes.items():
            if len(wh):
                ax.scatter(wh[:, 0], wh[:, 1], s=6, alpha=0.35, label=split, color=SPLIT_COLOURS.get(split))
        ax.set(xlabel="width (px)", ylabel="height (px)", title=f"image sizes ({len(distinct)} distinct)")
        ax.legend(fontsize=8, markerscale=2)
        ax.grid(alpha=0.3)
    return _png(fig)


def image_modes(modes: dict[str, dict[str, int]]) -> bytes:
    """Images per PIL mode as stored (L, RGB, RGBA, P, ...) per split."""
    distinct = sorted({m for per_split in modes.values() for m in per_split})
    fig, ax = plt.subplots(figsize=(4.2, 0.32 * len(distinct) + 1.6))
    _grouped_bars(ax, distinct, {split: [per_split.get(m, 0) for m in distinct] for split, per_split in modes.items()})
    ax.set_xlabel("images")
    ax.set_title("image modes (as stored)")
    return _png(fig)


def _grouped_bars(ax, labels: list[str], values: dict[str, list[int]]) -> None:
    """Horizontal bars, one group per label and one bar per split inside it, counts at the bar ends."""
    height = 0.8 / max(len(values), 1)
    for k, (split, counts) in enumerate(values.items()):
        ys = np.arange(len(labels)) + (k - (len(values) - 1) / 2) * height
        ax.barh(ys, counts, height=height, label=split, color=SPLIT_COLOURS.get(split, "tab:gray"))
        for y, n in zip(ys, counts, strict=True):
            if n:
                ax.text(n, y, f" {n}", va="center", fontsize=7)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max((max(c, default=0) for c in values.values()), default=0) * 1.25 or 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)


def image_rows(rows: list[tuple[str, list[np.ndarray]]], title: str | None = None) -> bytes:
    """Labelled rows of equally sized H × W × 3 uint8 tiles (sample grids, augmentation previews).

    Laid out in pixels so that one tile pixel is one PNG pixel: matplotlib resampling the tiles again would
    blur them or make the pixels of tiny images uneven. Each row is one strip image (one axes per row).
    """
    tile = next((t for _, tiles in rows for t in tiles), np.zeros((8, 8, 3), np.uint8))
    (tile_h, tile_w), gap = tile.shape[:2], 4
    columns = max(max((len(tiles) for _, tiles in rows), default=1), 1)
    width, title_h = columns * (tile_w + gap) - gap, 28 if title else 0
    height = len(rows) * (tile_h + gap) + title_h
    fig = plt.figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    for r, (label, tiles) in enumerate(rows):
        strip = np.full((tile_h, width, 3), 255, np.uint8)
        for j, image in enumerate(tiles):
            strip[:, j * (tile_w + gap):j * (tile_w + gap) + tile_w] = image
        ax = fig.add_axes((0, 1 - (title_h + r * (tile_h + gap) + tile_h) / height, 1, tile_h / height))
        ax.imshow(strip, interpolation="nearest")
        ax.set_axis_off()
        ax.text(-6, tile_h / 2, label, ha="right", va="center", fontsize=8)  # left of the strip (tight bbox keeps it)
    if title:
        fig.text(0, 1, title, ha="left", va="top", fontsize=9)
    return _png(fig)
