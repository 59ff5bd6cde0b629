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
