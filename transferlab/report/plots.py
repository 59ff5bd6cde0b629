"""Figures for the report, as PNG bytes (matplotlib, headless)."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def data_uri(png: bytes) -> str:
    """A PNG inline in the page (the report is one self-contained file)."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


REFERENCE_GREY = "#9a9a9a"


def cost_scatter(points: list[dict[str, Any]], metric: str, title: str) -> bytes:
    """`metric` (mean over seeds) against fit seconds (log x) and against forward GFLOPs per image.

    One point per leaderboard row, numbered as in the leaderboard and named in a key beside the panels
    (names beside the points would overlap where rows cost the same); `points` hold label, score, fit_s,
    gflops (or None) and reference (bool). Reference rows are grey; a row without GFLOPs is left out of the
    right panel only.
    """
    fig, (time_ax, flops_ax) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    seconds = [max(p["fit_s"] or 0.0, 1e-3) for p in points]
    for ax, xs in ((time_ax, seconds), (flops_ax, [p["gflops"] for p in points])):
        at: dict[tuple, list[int]] = {}  # rows drawn on one spot share one label ("1,2")
        for number, (p, x) in enumerate(zip(points, xs, strict=True), 1):
            if x is None or p["score"] is None:
                continue
            ax.scatter(x, p["score"], color=REFERENCE_GREY if p["reference"] else "tab:blue", s=36, zorder=3,
                       edgecolor="white", linewidth=0.5)
            at.setdefault((round(x, 4), round(p["score"], 4)), []).append(number)
        for (x, y), numbers in at.items():
            grey = all(points[n - 1]["reference"] for n in numbers)
            ax.annotate(",".join(map(str, numbers)), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=8,
                        color="#777" if grey else "#111")
    time_ax.set_xscale("log")
    time_ax.set(xlabel="fit seconds (mean over seeds, log; under 1 ms drawn at 1 ms)", ylabel=f"test {metric}",
                title="score vs training time")
    missing = sum(p["gflops"] is None for p in points)
    flops_ax.set(xlabel="forward GFLOPs per image" + (f" ({missing} rows without)" if missing else ""),
                 title="score vs inference cost")
    if missing == len(points):
        flops_ax.set_xticks([])
        flops_ax.text(0.5, 0.5, "no row records GFLOPs", ha="center", va="center", transform=flops_ax.transAxes,
                      color="#777")
    for ax in (time_ax, flops_ax):
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.12)
    if missing < len(points):
        flops_ax.set_xlim(left=0)
    key = "\n".join(f"{n:>2}  {p['label']}" + ("  (reference)" if p["reference"] else "")
                    for n, p in enumerate(points, 1))
    flops_ax.text(1.04, 1, key, transform=flops_ax.transAxes, va="top", ha="left", fontsize=7, family="monospace")
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def confusion(matrix: list[list[int]], classes: list[str], title: str,
              normalized: list[list[float]] | None = None) -> bytes:
    """Row-normalised confusion matrix (recall on the diagonal), counts in the cells.

    `normalized` is the record's own row-normalised matrix; without it the rates come from the counts.
    """
    counts = np.asarray(matrix, dtype=float)
    rates = (np.asarray(normalized, dtype=float) if normalized is not None
             else counts / np.maximum(counts.sum(axis=1, keepdims=True), 1))
    size = min(max(3.6, 0.42 * len(classes) + 1.6), 14)
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


def reliability(bins: dict[str, list], title: str, before: dict[str, list] | None = None) -> bytes:
    """The reliability diagram: accuracy against mean confidence per confidence bin (dot area: images), the
    diagonal where they agree; ECE is the image-weighted mean gap. `before`: the same before calibration."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color=REFERENCE_GREY, lw=1, ls="--", label="confidence = accuracy")
    after = "after calibration" if before is not None else "test images"
    for series, color, label in ((before, REFERENCE_GREY, "before calibration"), (bins, "tab:blue", after)):
        if series is None:
            continue
        filled = [i for i, n in enumerate(series["count"]) if n]
        confidence = [series["confidence"][i] for i in filled]
        accuracy = [series["accuracy"][i] for i in filled]
        total = max(sum(series["count"]), 1)
        ax.plot(confidence, accuracy, color=color, lw=1.2, marker="o", ms=0, label=label)
        ax.scatter(confidence, accuracy, s=[12 + 400 * series["count"][i] / total for i in filled], color=color,
                   alpha=0.7, zorder=3)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nbelow the diagonal: over-confident · dot area: images", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return _png(fig)


def lr_find_curve(found: dict[str, Any], title: str) -> bytes:
    """The range test: smoothed training loss against the learning rate (log scale), the suggestion marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(found["lrs"], found["losses"], color="tab:blue", lw=1.4)
    lr = found["suggested_lr"]
    at = int(np.argmin(np.abs(np.log(np.asarray(found["lrs"])) - np.log(lr))))
    ax.scatter([lr], [found["losses"][at]], color="tab:red", zorder=3, s=40, label=f"suggested lr {lr:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (grows exponentially, one training batch per step)")
    ax.set_ylabel("training loss (smoothed)")
    top = min(max(found["losses"]), 3 * min(found["losses"]))  # the divergence at the end would flatten the rest
    ax.set_ylim(min(found["losses"]) * 0.95, top * 1.02)
    ax.set_title(f"{title}\n{found['rule']}", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


def per_class_bars(per_class: list[dict[str, Any]], title: str) -> bytes:
    """F1 per class as bars (value at the end), precision and recall as markers on them; support in the tick."""
    names = [f"{c['class']} (n={c.get('support', '?')})" for c in per_class]
    f1 = [c.get("f1") or 0.0 for c in per_class]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(per_class) + 1.3))
    ys = np.arange(len(per_class))
    ax.barh(ys, f1, color="tab:blue", alpha=0.75)
    ax.scatter([c.get("precision") or 0.0 for c in per_class], ys, marker="|", s=90, color="black", zorder=3)
    ax.scatter([c.get("recall") or 0.0 for c in per_class], ys, marker="o", s=14, facecolor="white",
               edgecolor="black", zorder=3)
    for y, value in zip(ys, f1, strict=True):
        ax.text(1.04, y, f"{value:.3f}", va="center", fontsize=7)
    ax.set_yticks(ys, names, fontsize=8 if len(per_class) <= 40 else 6)
    ax.invert_yaxis()  # the first class on top, as in the tables
    ax.set_xlim(0, 1.14)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("test score")
    ax.set_title(f"{title}\nbars: F1 · |: precision · o: recall", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def learning_curves(records: list[dict[str, Any]]) -> bytes:
    """Train (solid) and validation (dotted) loss, and the validation score, per epoch of each trained run.

    The score is val_accuracy (single-label) or val_micro_f1 (multi-label); the epochs of two-phase runs
    follow each other on one axis. The legend sits outside the panels so that many runs stay readable.
    """
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.cm.tab20(np.linspace(0, 1, 20)) if len(records) > 10 else plt.cm.tab10(np.arange(10))
    score_names = set()
    for i, record in enumerate(records):
        history = record["history"]
        epochs = np.arange(1, len(history) + 1)
        labels = record.get("labels", {})
        label = f"{labels.get('paradigm')} ({labels.get('backbone')}) s{record.get('seed')}"
        colour = colours[i % len(colours)]
        loss_ax.plot(epochs, [h.get("train_loss", np.nan) for h in history], color=colour, label=label)
        loss_ax.plot(epochs, [_num(h.get("val_loss")) for h in history], color=colour, linestyle=":")
        score = _score_key(history)
        score_names.add(score)
        score_ax.plot(epochs, [_num(h.get(score)) for h in history], color=colour, marker=".", label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss (solid), validation loss (dotted)")
    score_name = " / ".join(sorted(s.removeprefix("val_") for s in score_names))
    score_ax.set(xlabel="epoch", ylabel=f"validation {score_name}", title=f"validation {score_name}")
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    score_ax.legend(fontsize=6 if len(records) > 8 else 7, loc="upper left", bbox_to_anchor=(1.02, 1),
                    ncol=1 if len(records) <= 20 else 2, frameon=False)
    return _png(fig)


def _score_key(history: list[dict[str, Any]]) -> str:
    """The validation score a history carries: val_accuracy (single-label) or val_micro_f1 (multi-label)."""
    keys = set().union(*history) if history else set()
    return next((k for k in ("val_accuracy", "val_micro_f1") if k in keys), "val_accuracy")


def _num(value: Any) -> float:
    return np.nan if value is None else float(value)


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
