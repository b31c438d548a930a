"""Figures a person would rather see than read: training curves and metric bar charts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from whisperlite.trainer.metrics import METRICS  # noqa: E402


def plot_training_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Train losses (left) and validation metrics (right) per epoch."""
    path = Path(path)
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("train_loss", "train_bce", "train_contrastive"):
        if history and key in history[0]:
            left.plot(epochs, [row[key] for row in history], marker="o", label=key.removeprefix("train_"))
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    left.legend()
    validated = [metric for metric in METRICS if history and f"val_{metric}" in history[0]]
    for metric in validated:
        right.plot(epochs, [row[f"val_{metric}"] for row in history], marker="o", label=metric)
    right.set_xlabel("epoch")
    right.set_ylabel("validation")
    if validated:
        right.legend()
    else:  # a dataset without validation cases: say so rather than draw empty axes
        right.text(0.5, 0.5, "no validation cases", ha="center", va="center", transform=right.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metric_bars(methods: dict[str, dict[str, float]], path: str | Path, title: str = "") -> Path:
    """One panel per metric, one bar per method."""
    path = Path(path)
    names = list(methods)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4.2))
    colors = plt.cm.tab10(np.arange(len(names)) % 10)
    for axis, metric in zip(axes, METRICS):
        values = [methods[n].get(metric, 0.0) for n in names]
        axis.bar(range(len(names)), values, color=colors)
        axis.set_title(metric)
        axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        for x, v in enumerate(values):
            axis.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
