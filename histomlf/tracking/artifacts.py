"""Logging what a recipe produced: an evaluated model, the data it saw, a resumed fit.

`log_evaluation` is the one function that logs an evaluated model — metrics, confusion matrix,
curves, predictions, patient table and bootstrap intervals — for train runs, the tuning winner,
CV folds and `histomlf evaluate` alike, under artifact names that start with the evaluation's
main split (`evaluation/test_roc.png`, `predictions/test_predictions.csv`).
"""

from __future__ import annotations

from typing import Any

import mlflow

from histomlf.schema import EVALUATION_FIGURES, Artifact, Explain, Tag
from histomlf.tracking import runs


def log_evaluation(
    evaluation: Any, *, history: dict[str, list[float]] | None = None, phases: Any = None
) -> None:
    """Log an `histomlf.evaluation.scored.Evaluation` (and the training curves of `history`)."""
    from histomlf.evaluation import plots
    from histomlf.evaluation.metrics import confusion

    final_step = max(len((history or {}).get("loss", [])), 1)
    mlflow.log_metrics(evaluation.metrics(), step=final_step)
    focus, threshold = evaluation.focus, evaluation.threshold
    main = evaluation.focused
    labels, probabilities = main.labels, main.probabilities
    runs.log_json(confusion(labels, probabilities, threshold),
                  Artifact.evaluation(focus, "confusion_matrix", "json"))
    figures = dict(zip(EVALUATION_FIGURES, (
        plots.plot_confusion_matrix(labels, probabilities, threshold),
        plots.plot_roc_curve(labels, probabilities, threshold),
        plots.plot_pr_curve(labels, probabilities, threshold),
        plots.plot_reliability_diagram(labels, probabilities),
    ), strict=True))
    for name, figure in figures.items():
        runs.log_figure(figure, Artifact.evaluation(focus, name))
    if history is not None:
        runs.log_figure(
            plots.plot_training_curves(history, phases=phases), Artifact.TRAINING_CURVES
        )
    for split, scores in evaluation.splits.items():
        if split != "train":  # train scores are a capped sample: metrics only
            runs.log_frame(
                scores.predictions_frame(threshold), Artifact.predictions(split)
            )
    runs.log_frame(evaluation.patient_table, Artifact.patients(focus))
    runs.log_json({k: list(v) for k, v in evaluation.ci.items()},
                  Artifact.evaluation(focus, "bootstrap_ci", "json"))


def log_explanations(folder: Any, index: dict[str, Any]) -> None:
    """Log a written `explain/` folder as artifacts, and each Grad-CAM overlay as an image
    under a fixed key (`gradcam/<kind>_<rank>`), so the UI lines runs up side by side."""
    from pathlib import Path

    from PIL import Image

    root = Path(folder) / Explain.ROOT
    mlflow.log_artifacts(str(root), Explain.ROOT)
    for entry in index.get("gradcam", []):
        with Image.open(Path(folder) / entry["file"]) as image:
            mlflow.log_image(
                image.convert("RGB"),
                key=Explain.image_key(entry["kind"], entry["rank"]),
                step=0,
                synchronous=True,
            )


def log_data(data: Any) -> None:
    """The manifest as an MLflow dataset, the split, scan statistics, counts and digests."""
    runs.log_dataset(
        data.manifest, source=str(data.data_dir), digest=data.data_digest, name="idc-manifest"
    )
    runs.log_frame(data.split, Artifact.SPLIT)
    runs.log_json(data.scan_stats, Artifact.SCAN)
    counts = {
        f"{name}_{what}": value
        for name, rows in data.rows.items()
        for what, value in (
            ("patches", len(rows)),
            ("patients", rows["patient_id"].nunique()),
            ("positives", int(rows["label"].sum())),
        )
    }
    mlflow.log_params(counts)
    mlflow.set_tags(
        {
            Tag.DATA_DIGEST: data.data_digest,
            Tag.SPLIT_DIGEST: data.split_digest,
            Tag.DATA_SOURCE: data.data_source,
            Tag.DATA_DIR: str(data.data_dir),
        }
    )


def log_seconds(seconds: dict[str, float]) -> None:
    """Wall time of each stage of a run as `seconds_<stage>` metrics."""
    mlflow.log_metrics({f"seconds_{k}": v for k, v in seconds.items()})


def close_crashed_attempts(work_id: str, run_id: str) -> None:
    """Mark earlier runs of the same work folder that died mid-fit (still RUNNING) as KILLED.

    They are linked to the run that resumes their work (`histomlf.resumed_by`).
    """
    mlflow.set_tag(Tag.WORK_ID, work_id)
    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_run(run_id).info.experiment_id
    crashed = client.search_runs(
        [experiment_id],
        f"tags.`{Tag.WORK_ID}` = '{work_id}' and attributes.status = 'RUNNING'",
    )
    for earlier in crashed:
        if earlier.info.run_id != run_id:
            client.set_tag(earlier.info.run_id, Tag.RESUMED_BY, run_id)
            client.set_terminated(earlier.info.run_id, status="KILLED")


def backfill_epochs(fit_result: Any, logged_steps: set[int]) -> None:
    """Log the epochs a crashed earlier attempt ran, so the resumed run has every epoch."""
    from histomlf.tracking.callbacks import metric_key

    for index, epoch in enumerate(fit_result.epochs):
        if epoch in logged_steps:
            continue
        values = {metric_key(k): v[index] for k, v in fit_result.history.items() if index < len(v)}
        mlflow.log_metrics(values, step=epoch)
    mlflow.set_tag(Tag.RESUMED, "true")
