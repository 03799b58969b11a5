"""The report's own figures, drawn from logged numbers, and PNG data URIs for every image.

Per-run figures (confusion matrix, reliability diagram, training curves) are the PNGs the runs
logged; only what spans several runs is drawn here: ROC and PR curves overlaid from the logged
test predictions, the tuning leaderboard, the CV mean ± sd. Agg backend, no pyplot state.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

DPI = 110


@dataclass(frozen=True)
class Curve:
    """One model's test labels and probabilities, named as in the results table."""

    label: str
    y_true: np.ndarray
    y_prob: np.ndarray


def png_data_uri(png: bytes) -> str:
    """`data:image/png;base64,...` for PNG bytes (refuses anything that is not a PNG)."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG image")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return png_data_uri(buffer.getvalue())


def roc_pr_overlay(curves: Sequence[Curve]) -> Figure:
    """ROC (left) and precision-recall (right) of every model on its own test split."""
    figure = Figure(figsize=(10, 4.4), layout="constrained")
    roc_axes, pr_axes = figure.subplots(1, 2)
    roc_axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    for curve in curves:
        if len(np.unique(curve.y_true)) < 2:
            continue
        fpr, tpr, _ = roc_curve(curve.y_true, curve.y_prob)
        auc = roc_auc_score(curve.y_true, curve.y_prob)
        roc_axes.plot(fpr, tpr, label=f"{curve.label} (AUC {auc:.3f})")
        precision, recall, _ = precision_recall_curve(curve.y_true, curve.y_prob)
        ap = average_precision_score(curve.y_true, curve.y_prob)
        pr_axes.step(recall, precision, where="post", label=f"{curve.label} (AP {ap:.3f})")
    roc_axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate",
                 ylabel="true positive rate (sensitivity)", title="ROC, test patients")
    pr_axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
                title="Precision-recall, test patients")
    for axes in (roc_axes, pr_axes):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="lower right" if axes is roc_axes else "lower left", fontsize=7)
    return figure


def leaderboard_chart(trials: Sequence[str], scores: Sequence[float], objective: str,
                      best: str) -> Figure:
    """The objective of every trial of a search, the winner highlighted."""
    figure = Figure(figsize=(6, 2.8), layout="constrained")
    axes = figure.add_subplot()
    colours = ["tab:orange" if t == best else "tab:blue" for t in trials]
    axes.bar([str(t) for t in trials], scores, color=colours)
    axes.set(xlabel="trial", ylabel=objective, title=f"{objective} per trial (winner orange)")
    return figure


def cv_chart(metrics: Sequence[str], means: Sequence[float], sds: Sequence[float],
             title: str) -> Figure:
    """Mean ± sd over folds of each metric."""
    figure = Figure(figsize=(7, 3), layout="constrained")
    axes = figure.add_subplot()
    axes.bar(list(metrics), means, yerr=sds, capsize=4, color="tab:green")
    axes.set(ylim=(0, 1.05), ylabel="mean over folds ± sd", title=title)
    axes.tick_params(axis="x", labelrotation=30, labelsize=8)
    return figure
