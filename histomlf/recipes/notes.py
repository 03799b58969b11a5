"""Run descriptions (the MLflow UI's Overview, `mlflow.note.content`) that say what ran.

Pure formatting for the recipes: each function turns what a recipe produced into a few Markdown
lines — the data, the recipe in one line, the headline test metrics with their 95 %
patient-bootstrap intervals and the threshold, the registry's decision, and where the plots and
predictions are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from histomlf.evaluation.text import HEADLINE_LABELS, headline_line, number
from histomlf.schema import Artifact, Folder


def data_line(data: Any) -> str:
    counts = ", ".join(
        f"{name} {rows['patient_id'].nunique()} patients / {len(rows):,} patches "
        f"({int(rows['label'].sum()):,} IDC)"
        for name, rows in data.rows.items()
    )
    return (f"**Data** ({data.data_source}, `{data.data_dir}`): digest `{data.data_digest[:12]}`, "
            f"patient split `{data.split_digest[:12]}` — {counts}.")


def recipe_line(config: Any) -> str:
    phases = f"{config.epochs} epochs"
    if config.fine_tune_epochs:
        phases += f" + {config.fine_tune_epochs} fine-tuning"
    return (f"**Recipe**: {config.model} (weights {config.weights}, {config.image_size} px), "
            f"{phases}, {config.optimizer} lr {config.learning_rate:g} ({config.lr_schedule}), "
            f"batch {config.batch_size}, augment {config.augment}, balance {config.balance}, "
            f"threshold {config.threshold_policy} on val; experiment `{config.experiment}`.")


def gate_line(gate: Any) -> str:
    if gate is None:
        return "**Registry**: not registered (pass `register_as` to register and gate it)."
    return (f"**Registry**: {gate.name} v{gate.version} → `{gate.alias}` — {gate.reason} "
            f"({gate.gate_metric} {number(gate.new_score)}).")


WHERE = (f"**Artifacts**: plots in `{Folder.EVALUATION}/`, per-patch and per-patient "
         f"predictions in `{Folder.PREDICTIONS}/`, Grad-CAM overlays and patient maps in "
         f"`{Folder.EXPLAIN}/` (when on), the data split in `{Folder.DATA}/`, the resolved "
         f"config in `{Folder.CONFIG}/`, the served model in `{Folder.MODEL}/`.")

SYNTHETIC = ("> **Synthetic data**: generated patches whose classes differ by texture; these "
             "scores say nothing about real tissue.")


def train_note(config: Any, data: Any, metrics: Mapping[str, float], gate: Any = None) -> str:
    """The description of a train run (or of a search's winner on its parent)."""
    lines = []
    if data.data_source == "synthetic":
        lines += [SYNTHETIC, ""]
    lines += [
        data_line(data),
        "",
        recipe_line(config),
        "",
        f"**Test split, patient-level** (threshold {number(metrics.get('decision_threshold'))}):"
        f" {headline_line(metrics)}.",
        "",
        gate_line(gate),
        "",
        WHERE,
    ]
    return "\n".join(lines)


def cv_note(config: Any, folds: int, summary: Mapping[str, float]) -> str:
    """The description of a cross-validation parent: mean ± sd over folds."""
    parts = []
    for name, label in HEADLINE_LABELS:
        mean, sd = summary.get(f"test_{name}_mean"), summary.get(f"test_{name}_sd")
        if mean is not None:
            parts.append(f"{label} {number(mean)} ± {number(sd)}")
    return "\n".join([
        f"**{folds}-fold cross-validation by patient**: every patient is tested once; one "
        "child run per fold (`fold-k-of-K`).",
        "",
        recipe_line(config),
        "",
        f"**Test folds, mean ± sd**: {'; '.join(parts)}.",
        "",
        f"**Artifacts**: the per-fold table in `{Artifact.CV_FOLDS}`; each fold's plots, "
        "predictions and split in its own run.",
    ])


def search_note(spec: Any, result: Mapping[str, Any], data: Any, gate: Any = None) -> str:
    """The description of a search's parent run: trials, the winner and its test scores."""
    trials = result["trials"]
    return "\n".join([
        f"**Keras Tuner search** ({spec.settings.tuner}, objective {spec.settings.objective}): "
        f"{trials.get('trials_completed', 0)} trials completed, "
        f"{trials.get('trials_failed', 0)} failed; one child run per trial.",
        "",
        f"**Winner**: trial {result['best_trial_id']} ({spec.settings.objective} "
        f"{number(result['best_score'])}), scored once on the test split.",
        "",
        data_line(data),
        "",
        f"**Winner on test, patient-level** (threshold "
        f"{number(result['metrics'].get('decision_threshold'))}): "
        f"{headline_line(result['metrics'])}.",
        "",
        gate_line(gate),
        "",
        f"**Artifacts**: the leaderboard in `{Folder.SEARCH}/`, the winner's plots in "
        f"`{Folder.EVALUATION}/`, predictions in `{Folder.PREDICTIONS}/`, explanations in "
        f"`{Folder.EXPLAIN}/` (when on).",
    ])
