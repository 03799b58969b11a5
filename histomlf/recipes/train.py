"""The train recipe, tracked: `train(config)` trains, evaluates, logs and gates one model.

`histomlf.training.workflow` computes; this recipe opens the run (or attaches to the one
`mlflow run` opened), hands each result to `histomlf.tracking` as it comes, and returns the
run id, model URI and metrics, so tests and notebooks call it directly with a tiny config.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from histomlf.config import DATA_DIR_ENV, DEMO_EXPERIMENT, TrainConfig, check_data_location
from histomlf.data.patches import patch_scale
from histomlf.environment import git_state
from histomlf.paths import cache_root
from histomlf.recipes import notes
from histomlf.recipes.explain import explain_run
from histomlf.schema import Artifact, ModelMeta, RunKind, Tag
from histomlf.tracking import artifacts, runs
from histomlf.tracking.callbacks import MlflowEpochLogger

DEMO_SUFFIX = "-demo"


def registered_name(config: TrainConfig, data: Any) -> str:
    """The registered model name: `register_as`, or `<register_as>-demo` for synthetic data.

    The gate never promotes across data digests, so a champion trained on synthetic patches
    under the real name would hold `@champion` against the user's first real model.
    """
    return demo_named(config.register_as, data)


def demo_named(name: str, data: Any) -> str:
    """`name`, or `<name>-demo` when `data` is synthetic (see `registered_name`)."""
    if data.data_source == "synthetic" and not name.endswith(DEMO_SUFFIX):
        name += DEMO_SUFFIX
    return name


def train_run_name(config: TrainConfig) -> str:
    """`<model>-<weights>-<data source>-<config digest>`: what ran, stable and short."""
    weights = config.weights if config.weights in ("imagenet", "none") else "file"
    data_dir = config.data_dir or os.environ.get(DATA_DIR_ENV, "")
    if not data_dir:
        source = "synthetic"
    elif data_dir.startswith("s3://"):
        source = "s3-" + data_dir[5:].split("/")[0]
    else:
        source = Path(data_dir).expanduser().resolve().name or "data"
    return f"{config.model}-{weights}-{source}-{config.recipe_digest()}"


def resumable_work_dir(config: TrainConfig, data: Any) -> Path:
    """The fit's work folder, named by what is trained: the recipe, data and split digests.

    After a crash, rerunning the same command finds the same folder and Keras'
    `BackupAndRestore` resumes from the last finished epoch — also when only a run option
    changed (`--register-as`, `--explain`, `--devices`, the data's path or the experiment
    file's name); a finished fit empties it, so the next identical run starts fresh.
    """
    identity = json.dumps(
        {**config.recipe_params(), "data": data.data_digest, "split": data.split_digest},
        sort_keys=True,
        default=str,
    )
    return cache_root() / "work" / hashlib.sha256(identity.encode()).hexdigest()[:20]


def model_metadata(config: TrainConfig, data: Any) -> dict[str, str]:
    """What a logged model carries about its training: backbone, data and split digests."""
    return {
        ModelMeta.MODEL: config.model,
        ModelMeta.DATA_DIGEST: data.data_digest,
        ModelMeta.SPLIT_DIGEST: data.split_digest,
        **patch_scale(config.patch_mpp),
    }


def train(config: TrainConfig, *, run_name: str | None = None) -> dict[str, Any]:
    """Train `config` in the active (or a new) MLflow run, log everything, gate the champion.

    Returns `{"run_id", "model_uri", "metrics"}` and, with `config.register_as`, `"gate"`.
    """
    check_data_location(config.data_dir)  # before a run opens: no FAILED run for a typo
    from histomlf.tracking.pyfunc import log_patch_classifier
    from histomlf.training.workflow import prepare_data, train_and_score

    with runs.active_run(run_name=run_name or train_run_name(config)) as run:
        run_id = run.info.run_id
        runs.log_config(config)
        runs.log_environment()
        runs.log_resolved_params(patch_scale(config.patch_mpp))
        runs.set_tags({Tag.KIND: RunKind.TRAIN.value})
        if config.experiment == DEMO_EXPERIMENT:
            runs.set_tags({Tag.DEMO: "true"})
        started = time.perf_counter()
        data = prepare_data(config)
        data_seconds = time.perf_counter() - started
        artifacts.log_data(data)
        work_dir = resumable_work_dir(config, data)
        artifacts.close_crashed_attempts(work_dir.name, run_id)
        epoch_logger = MlflowEpochLogger()
        outcome = train_and_score(config, work_dir=work_dir, callbacks=[epoch_logger], data=data)
        outcome.seconds["data"] = data_seconds  # prepared here, before the recipe's clock
        if outcome.fit.resumed:
            artifacts.backfill_epochs(outcome.fit, epoch_logger.logged_steps)
        artifacts.log_evaluation(
            outcome.evaluation, history=outcome.fit.history, phases=outcome.fit.phases
        )
        calibration = outcome.calibration
        if calibration is not None:
            log_calibration(calibration, outcome)
        if config.explain:
            outcome.seconds["explain"] = explain_run(
                outcome.model, outcome.evaluation, seed=config.seed
            )
        artifacts.log_seconds(outcome.seconds)
        platt = calibration.platt.as_params() if calibration is not None else {}
        info = log_patch_classifier(
            outcome.model,
            threshold=outcome.evaluation.threshold,
            metadata={**model_metadata(config, data), **{k: repr(v) for k, v in platt.items()}},
        )
        result = {
            "run_id": run_id,
            "model_uri": info.model_uri,
            "metrics": outcome.metrics(),
            "data_source": data.data_source,
            "experiment": config.experiment,
            "ui_path": runs.experiment_link(run.info.experiment_id),
        }
        if calibration is not None:
            result["calibration"] = calibration_line(calibration, outcome.metrics())
        if config.register_as:
            result["gate"] = register(config, outcome.evaluation, data, info.model_uri, run_id)
        runs.set_note(notes.train_note(config, data, result["metrics"], result.get("gate")))
        return result


def log_calibration(calibration: Any, outcome: Any) -> None:
    """The Platt map's metrics, how it was fitted, and the validation reliability before it."""
    from histomlf.evaluation import plots

    metrics = outcome.metrics()
    runs.log_metrics(calibration.metrics())
    runs.log_resolved_params({"calibration": calibration.status[:500]})
    labels = outcome.data.rows["val"]["label"].to_numpy()
    runs.log_json(
        {"status": calibration.status, "fitted_on": "validation patients",
         "val_patients": int(outcome.data.rows["val"]["patient_id"].nunique()),
         **calibration.metrics(), "val_ece": metrics.get("val_ece"),
         "test_ece": metrics.get("test_ece")},
        Artifact.CALIBRATION,
    )
    runs.log_figure(
        plots.plot_reliability_diagram(labels, calibration.val_probabilities,
                                       title="Validation, before calibration"),
        Artifact.evaluation("val", "reliability_uncalibrated"),
    )


def calibration_line(calibration: Any, metrics: dict[str, float]) -> str:
    """How the model was calibrated on its validation patients, in one line."""
    if calibration.status != "platt":
        return f"not calibrated ({calibration.status.removeprefix('none: ')})"
    platt = calibration.platt
    return (
        f"Platt map (slope {platt.slope:.3f}, intercept {platt.intercept:+.3f}) fitted on the "
        f"validation patients; their ECE {calibration.val_ece_uncalibrated:.3f} -> "
        f"{metrics['val_ece']:.3f}, test ECE {metrics['test_ece']:.3f}"
    )


def register(config: TrainConfig, evaluation: Any, data: Any, model_uri: str, run_id: str):
    """Register `model_uri` under `config.register_as` and let the gate decide its alias.

    The current champion is re-scored through its pyfunc on this run's test split, so the
    comparison is like with like (the gate checks the data and split digests match).
    """
    from histomlf.evaluation.metrics import classification_metrics
    from histomlf.tracking.registry import register_and_gate
    from histomlf.tracking.scoring import load_model, model_threshold, predict_rows

    metric = config.gate_metric
    test_rows = data.rows["test"]

    def score_champion(uri: str) -> float:
        champion = load_model(uri)
        predictions = predict_rows(champion, test_rows, packed=data.packed)
        scores = classification_metrics(
            test_rows["label"].to_numpy(), predictions["probability"], model_threshold(champion)
        )
        return float(scores[metric])

    return register_and_gate(
        run_id,
        model_uri,
        registered_name(config, data),
        gate_metric=metric,
        new_score=float(evaluation.splits["test"].metrics[metric]),
        digests={ModelMeta.DATA_DIGEST: data.data_digest,
                 ModelMeta.SPLIT_DIGEST: data.split_digest},
        tags={
            ModelMeta.MODEL: config.model,
            ModelMeta.EXPERIMENT: config.experiment,
            **patch_scale(config.patch_mpp),
            **{k: str(v) for k, v in git_state().items()},
        },
        score_champion=score_champion,
        metrics=evaluation.metrics(),
    )
