"""Every figure function returns a Figure that saves to a non-empty PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from histomlf.evaluation import plots

rng = np.random.default_rng(0)
Y = (rng.random(200) < 0.3).astype(int)
P = np.clip(0.4 * Y + 0.6 * rng.random(200), 0, 1)
HISTORY = {
    "loss": [0.7, 0.5, 0.4],
    "val_loss": [0.8, 0.6, 0.55],
    "roc_auc": [0.6, 0.8, 0.9],
    "val_roc_auc": [0.55, 0.75, 0.8],
}

CASES = {
    "confusion": lambda y, p: plots.plot_confusion_matrix(y, p, 0.5),
    "roc": lambda y, p: plots.plot_roc_curve(y, p, 0.5),
    "pr": lambda y, p: plots.plot_pr_curve(y, p, 0.5),
    "reliability": lambda y, p: plots.plot_reliability_diagram(y, p),
}


def assert_png(figure: Figure, path: Path) -> None:
    assert isinstance(figure, Figure)
    figure.savefig(path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000


@pytest.mark.parametrize("name", sorted(CASES))
def test_figures_save_to_png(name: str, tmp_path: Path) -> None:
    assert_png(CASES[name](Y, P), tmp_path / f"{name}.png")


@pytest.mark.parametrize("name", sorted(CASES))
def test_figures_survive_a_single_class(name: str, tmp_path: Path) -> None:
    assert_png(CASES[name](np.zeros(5, int), np.linspace(0, 1, 5)), tmp_path / f"{name}.png")


def test_roc_marks_auc_and_threshold_point() -> None:
    figure = plots.plot_roc_curve([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8], 0.5)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert "AUC = 0.750" in labels and "threshold 0.500" in labels
    point = figure.axes[0].collections[0].get_offsets()[0]
    np.testing.assert_allclose(point, [0.5, 0.5])  # FPR, TPR at 0.5


def test_reliability_title_carries_ece() -> None:
    figure = plots.plot_reliability_diagram([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8])
    assert "ECE = 0.375" in figure.axes[0].get_title()


def test_training_curves_mark_the_phase_boundary(tmp_path: Path) -> None:
    figure = plots.plot_training_curves(HISTORY, phases=[1, 1, 2], epochs=[0, 1, 2])
    assert len(figure.axes) == 2
    assert [axes.get_title() for axes in figure.axes] == ["loss", "roc_auc"]
    boundaries = [line for line in figure.axes[0].get_lines() if line.get_linestyle() == ":"]
    assert boundaries and boundaries[0].get_xdata()[0] == 2.5
    assert_png(figure, tmp_path / "curves.png")
    assert_png(plots.plot_training_curves({"loss": [1.0]}), tmp_path / "one.png")
