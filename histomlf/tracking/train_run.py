"""A tracked training run: wires `histomlf.training.workflow` to MLflow.

The workflow computes; this module logs what it returns (config, data, split, per-epoch and
final metrics, plots, predictions, environment, model) and applies the registry gate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow

from histomlf.config import TrainConfig
from histomlf.environment import git_state
from histomlf.paths import cache_root
from histomlf.tracking import runs
from histomlf.tracking.callbacks import MlflowEpochLogger


def log_split_scores(outcome) -> None:
    """Metrics, confusion matrix, curves and predictions of a finished outcome."""
    from histomlf.evaluation import plots
    from histomlf.evaluation.metrics import confusion

    final_step = max(len(outcome.fit.history.get("loss", [])), 1)
    mlflow.log_metrics(outcome.metrics(), step=final_step)
    test = outcome.test
    labels = test.rows["label"].to_numpy()
    runs.log_json(
        confusion(labels, test.probabilities, outcome.threshold),
        "evaluation/test_confusion_matrix.json",
    )
    runs.log_figure(
        plots.confusion_matrix_figure(labels, test.probabilities, outcome.threshold),
        "evaluation/test_confusion_matrix.png",
    )
    runs.log_figure(
        plots.roc_figure(labels, test.probabilities, outcome.threshold), "evaluation/test_roc.png"
    )
    runs.log_figure(
        plots.pr_figure(labels, test.probabilities, outcome.threshold), "evaluation/test_pr.png"
    )
    runs.log_figure(
        plots.reliability_figure(labels, test.probabilities), "evaluation/test_reliability.png"
    )
    runs.log_figure(
        plots.training_curves_figure(outcome.fit.history, getattr(outcome.fit, "phases", None)),
        "evaluation/training_curves.png",
    )
    runs.log_frame(test.predictions_frame(outcome.threshold), "predictions/test_predictions.csv")
    runs.log_frame(
        outcome.val.predictions_frame(outcome.threshold), "predictions/val_predictions.csv"
    )
    runs.log_frame(outcome.patient_table, "predictions/test_patients.csv")
    runs.log_json(
        {k: list(v) for k, v in outcome.test_ci.items()}, "evaluation/test_bootstrap_ci.json"
    )


def log_data(data) -> None:
    runs.log_dataset(
        data.manifest, source=str(data.data_dir), digest=data.data_digest, name="idc-manifest"
    )
    runs.log_frame(data.split, "data/split.csv")
    runs.log_json(data.scan_stats, "data/scan.json")
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
            "histomlf.data_digest": data.data_digest,
            "histomlf.split_digest": data.split_digest,
            "histomlf.data_source": data.data_source,
            "histomlf.data_dir": str(data.data_dir),
        }
    )


def resumable_work_dir(config: TrainConfig, data) -> Path:
    """The fit's work folder, named by what defines the run: config, data and split digests.

    After a crash, rerunning the same command finds the same folder and Keras'
    `BackupAndRestore` resumes from the last finished epoch; a finished fit empties it, so the
    next identical run starts fresh.
    """
    identity = json.dumps(
        {**config.as_params(), "data": data.data_digest, "split": data.split_digest},
        sort_keys=True,
        default=str,
    )
    return cache_root() / "work" / hashlib.sha256(identity.encode()).hexdigest()[:20]


def close_crashed_attempts(work_id: str, run_id: str) -> None:
    """Mark earlier runs of the same work folder that died mid-fit (still RUNNING) as KILLED.

    They are linked to the run that resumes their work (`histomlf.resumed_by`).
    """
    mlflow.set_tag("histomlf.work_id", work_id)
    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_run(run_id).info.experiment_id
    crashed = client.search_runs(
        [experiment_id],
        f"tags.`histomlf.work_id` = '{work_id}' and attributes.status = 'RUNNING'",
    )
    for earlier in crashed:
        if earlier.info.run_id != run_id:
            client.set_tag(earlier.info.run_id, "histomlf.resumed_by", run_id)
            client.set_terminated(earlier.info.run_id, status="KILLED")


def backfill_epochs(fit_result, logged_steps: set[int]) -> None:
    """Log the epochs a crashed earlier attempt ran, so the resumed run has every epoch."""
    from histomlf.tracking.callbacks import metric_key

    for index, epoch in enumerate(fit_result.epochs):
        if epoch in logged_steps:
            continue
        values = {metric_key(k): v[index] for k, v in fit_result.history.items() if index < len(v)}
        mlflow.log_metrics(values, step=epoch)
    mlflow.set_tag("histomlf.resumed", "true")


def gate_score(model_uri: str, data, metric: str) -> float:
    """Re-score a logged model on the test split of `data` by the gate metric, at its threshold."""
    from histomlf.tracking.scoring import load_model, metrics_at_model_threshold, predict_rows

    rows = data.rows["test"]
    predictions = predict_rows(load_model(model_uri), rows, packed=data.packed)
    return float(metrics_at_model_threshold(rows["label"].to_numpy(), predictions)[metric])


def train_and_log(config: TrainConfig, *, run_name: str | None = None) -> dict[str, Any]:
    """Run the train recipe inside the active (or a new) MLflow run and log everything."""
    from histomlf.tracking.pyfunc import log_patch_classifier
    from histomlf.training.workflow import prepare_data, train

    with runs.active_run(run_name=run_name or f"{config.model}-{config.experiment}") as run:
        runs.log_config(config)
        runs.log_environment()
        data = prepare_data(config)
        log_data(data)
        work_dir = resumable_work_dir(config, data)
        close_crashed_attempts(work_dir.name, run.info.run_id)
        epoch_logger = MlflowEpochLogger()
        outcome = train(config, work_dir=work_dir, callbacks=[epoch_logger], data=data)
        if outcome.fit.resumed:
            backfill_epochs(outcome.fit, epoch_logger.logged_steps)
        log_split_scores(outcome)
        mlflow.log_metrics({f"seconds_{k}": v for k, v in outcome.seconds.items()})
        info = log_patch_classifier(
            outcome.model,
            threshold=outcome.threshold,
            metadata={
                "model": config.model,
                "data_digest": data.data_digest,
                "split_digest": data.split_digest,
            },
        )
        result = {
            "run_id": run.info.run_id,
            "model_uri": info.model_uri,
            "metrics": outcome.metrics(),
        }
        if config.register_as:
            result["gate"] = register(config, outcome, info.model_uri, run.info.run_id)
        return result


def register(config: TrainConfig, outcome, model_uri: str, run_id: str):
    from histomlf.tracking.registry import register_and_gate

    metric = config.gate_metric
    decision = register_and_gate(
        run_id,
        model_uri,
        config.register_as,
        gate_metric=metric,
        new_score=float(outcome.test.metrics[metric]),
        digests={
            "data_digest": outcome.data.data_digest,
            "split_digest": outcome.data.split_digest,
        },
        tags={
            "model": config.model,
            "experiment": config.experiment,
            **{k: str(v) for k, v in git_state().items()},
        },
        score_champion=lambda uri: gate_score(uri, outcome.data, metric),
    )
    return decision
