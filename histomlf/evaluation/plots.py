"""Evaluation figures as pure functions: arrays in, a matplotlib `Figure` out.

Uses the Agg backend and the object-oriented API (no pyplot state), so figures never pop up,
never leak between calls, and can be saved or logged by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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

from histomlf.evaluation.metrics import (  # noqa: E402
    ECE_BINS,
    as_arrays,
    confusion,
    expected_calibration_error,
)

CLASS_NAMES = ("no IDC", "IDC")


def _figure(size: tuple[float, float] = (4.5, 4.0)) -> tuple[Figure, Any]:
    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


def _both_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and labels.min() != labels.max()


def plot_confusion_matrix(
    y_true: Any, y_prob: Any, threshold: float, *, title: str = "Confusion matrix"
) -> Figure:
    """2x2 counts (rows: truth, columns: prediction) with each cell's share of its row."""
    counts = confusion(y_true, y_prob, threshold)
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    figure, axes = _figure()
    axes.imshow(matrix, cmap="Blues")
    rows = matrix.sum(axis=1, keepdims=True)
    for (row, column), value in np.ndenumerate(matrix):
        share = value / rows[row, 0] if rows[row, 0] else 0.0
        color = "white" if value > matrix.max() / 2 else "black"
        axes.text(column, row, f"{value}\n{share:.1%}", ha="center", va="center", color=color)
    axes.set_xticks([0, 1], labels=CLASS_NAMES)
    axes.set_yticks([0, 1], labels=CLASS_NAMES)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{title} (threshold {threshold:.3f})")
    return figure


def plot_roc_curve(
    y_true: Any, y_prob: Any, threshold: float | None = None, *, title: str = "ROC curve"
) -> Figure:
    """ROC curve with its AUC in the legend and the operating point of `threshold`."""
    labels, probabilities = as_arrays(y_true, y_prob)
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    if _both_classes(labels):
        fpr, tpr, _ = roc_curve(labels, probabilities)
        auc = roc_auc_score(labels, probabilities)
        axes.plot(fpr, tpr, label=f"AUC = {auc:.3f}")
        if threshold is not None:
            predicted = probabilities >= threshold
            point_tpr = predicted[labels == 1].mean()
            point_fpr = predicted[labels == 0].mean()
            axes.scatter(
                [point_fpr], [point_tpr], color="red", zorder=3, label=f"threshold {threshold:.3f}"
            )
        axes.legend(loc="lower right")
    else:
        axes.text(0.5, 0.5, "undefined: one class only", ha="center")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate",
        ylabel="true positive rate (sensitivity)",
        title=title,
    )
    return figure


def plot_pr_curve(
    y_true: Any, y_prob: Any, threshold: float | None = None, *, title: str = "Precision-recall"
) -> Figure:
    """Precision-recall curve with average precision, prevalence baseline and `threshold`."""
    labels, probabilities = as_arrays(y_true, y_prob)
    figure, axes = _figure()
    if _both_classes(labels):
        precision, recall, _ = precision_recall_curve(labels, probabilities)
        ap = average_precision_score(labels, probabilities)
        axes.step(recall, precision, where="post", label=f"AP = {ap:.3f}")
        axes.axhline(
            labels.mean(),
            linestyle="--",
            color="grey",
            linewidth=1,
            label=f"prevalence {labels.mean():.2f}",
        )
        if threshold is not None:
            counts = confusion(labels, probabilities, threshold)
            tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
            point_precision = tp / (tp + fp) if tp + fp else 0.0
            axes.scatter(
                [tp / (tp + fn)],
                [point_precision],
                color="red",
                zorder=3,
                label=f"threshold {threshold:.3f}",
            )
        axes.legend(loc="lower left")
    else:
        axes.text(0.5, 0.5, "undefined: one class only", ha="center")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=title)
    return figure


def plot_reliability_diagram(
    y_true: Any, y_prob: Any, *, bins: int = ECE_BINS, title: str = "Reliability"
) -> Figure:
    """Observed IDC fraction per equal-width probability bin against the diagonal, with ECE
    in the title and each bin's share of patches as a light histogram underneath."""
    labels, probabilities = as_arrays(y_true, y_prob)
    index = np.clip((probabilities * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    positives = np.bincount(index, weights=labels, minlength=bins)
    confidence = np.bincount(index, weights=probabilities, minlength=bins)
    filled = counts > 0
    centers = (np.arange(bins) + 0.5) / bins
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    axes.bar(
        centers,
        counts / max(counts.sum(), 1),
        width=1 / bins,
        color="lightgrey",
        edgecolor="white",
        label="share of patches",
    )
    axes.plot(
        confidence[filled] / counts[filled],
        positives[filled] / counts[filled],
        marker="o",
        label="model",
    )
    ece = expected_calibration_error(labels, probabilities, bins)
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean predicted probability",
        ylabel="observed IDC fraction",
        title=f"{title} (ECE = {ece:.3f})",
    )
    axes.legend(loc="upper left")
    return figure


def plot_training_curves(
    history: Mapping[str, Sequence[float]],
    *,
    phases: Sequence[int] | None = None,
    epochs: Sequence[int] | None = None,
    metrics: Sequence[str] = ("loss", "roc_auc"),
) -> Figure:
    """Train vs validation curves per metric (from `FitResult.history`), with a dotted line
    where fine-tuning (phase 2) starts when `phases` is given."""
    figure = Figure(figsize=(4.5 * len(metrics), 3.8), layout="constrained")
    axes_list = figure.subplots(1, len(metrics), squeeze=False)[0]
    length = max((len(values) for values in history.values()), default=0)
    x = list(epochs) if epochs is not None else list(range(length))
    x = [epoch + 1 for epoch in x]
    boundary = None
    if phases is not None and 2 in phases:
        boundary = x[list(phases).index(2)] - 0.5
    for axes, metric in zip(axes_list, metrics, strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in history:
                axes.plot(x, list(history[key]), marker="o", label=label)
        if boundary is not None:
            axes.axvline(boundary, linestyle=":", color="black", label="fine-tuning starts")
        axes.set(xlabel="epoch", ylabel=metric, title=metric)
        if axes.has_data():
            axes.legend()
    return figure
