"""The final model from cross-validation: the K fold models as one calibrated ensemble, or
one model refitted on every patient.

nnU-Net's rule: the fold models *are* the final model (their mean at inference), and every
number reported for it is out-of-fold — each patient scored by the one fold model that did not
train on it. So after the K folds of `histomlf cv`:

1. the folds' test predictions are pooled into one out-of-fold table (every patient once);
2. the decision threshold is chosen on that pooled table by the recipe's `threshold_policy`
   (not on one small validation split);
3. Platt scaling (`histomlf.evaluation.calibration`) is fitted on the same pooled table — on
   the single fold models' outputs — and applied to their mean as the model's last layer; the
   threshold is mapped through it, so ranking and labels are unchanged;
4. the ensemble is logged in a nested run of kind `cv-final` with the out-of-fold scores under
   `oof_*` names (patient-bootstrap intervals included), never `test_*`: there is no unseen
   test split left, and the registry and the report must not pretend there is.

`final="refit"` (for users who want one network) trains one model with the same recipe on every
patient instead, for the median of the folds' epochs with early stopping off (no patients are
left to stop on); its threshold and Platt map are the same out-of-fold ones, and its scores are
the fold models' out-of-fold scores: the honest estimate of what this recipe does on unseen
patients, the refit model itself has none left.

Its split digest is the digest of the fold assignment, so the champion gate compares two
CV-final models only when they were cross-validated on the same folds — and then by their
stored out-of-fold scores, without re-scoring anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from histomlf.choices import CALIBRATION_CHOICES as CALIBRATIONS
from histomlf.choices import FINAL_CHOICES as FINAL_MODES
from histomlf.errors import ConfigError

OOF_SPLIT = "oof"
FOLD_COLUMN = "fold"


@dataclass
class FoldOutcome:
    """What one fold leaves for the final model: its run, model and test-split scores."""

    index: int
    run_id: str
    model: Any  # None for a refit (only the fold's scores and epochs are used)
    test: Any  # histomlf.evaluation.scored.SplitScores on the fold's own test patients
    epochs: int  # phase-1 epochs run
    fine_tune_epochs: int = 0  # phase-2 epochs run


def refit_config(config: Any, folds: Sequence[FoldOutcome]) -> Any:
    """The recipe for the refit on every patient: the median of the folds' epochs run (per
    phase), early stopping off."""
    def median(values: list[int]) -> int:
        return int(np.round(np.median(values)))

    return config.replace(
        epochs=max(median([fold.epochs for fold in folds]), 1),
        fine_tune_epochs=median([fold.fine_tune_epochs for fold in folds]),
        early_stopping_patience=0,
    )


def every_patient_split(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every patient in the train split: the refit's split (no validation, no test)."""
    patients = sorted(manifest["patient_id"].astype(str).unique())
    return pd.DataFrame({"patient_id": patients, "split": "train"})


def train_refit(config: Any, manifest: pd.DataFrame, *, work_dir: Any, callbacks=()) -> Any:
    """Train `config` (a `refit_config`) on every patient; returns (inference model, data)."""
    from histomlf.training.devices import training_strategy
    from histomlf.training.fit import make_deterministic
    from histomlf.training.workflow import fit_recipe, prepare_data

    training_strategy(config.devices)  # first: splitting the CPU precedes any TF op
    make_deterministic(config.seed)
    data = prepare_data(config, split=every_patient_split(manifest), required=("train",))
    model, _ = fit_recipe(config, data, work_dir=work_dir, callbacks=callbacks)
    return model, data


def check_final(final: str, calibrate: str, folds: int, only_folds: Sequence[int]) -> None:
    """Refuse what cannot make a final model, before any data is read."""
    if final not in FINAL_MODES:
        raise ConfigError(f"final must be one of {', '.join(FINAL_MODES)}; got {final!r}")
    if calibrate not in CALIBRATIONS:
        raise ConfigError(
            f"calibrate must be one of {', '.join(CALIBRATIONS)}; got {calibrate!r}"
        )
    if final != "none" and only_folds and len(set(only_folds)) < folds:
        raise ConfigError(
            "a final model needs every fold (its out-of-fold scores cover every patient); "
            "drop only_folds or use final=none"
        )


def pooled_out_of_fold(folds: Sequence[FoldOutcome]) -> tuple[pd.DataFrame, np.ndarray]:
    """Every fold's test rows (each patient once) with the fold that scored them, and their
    probabilities from that fold's model."""
    frames, probabilities = [], []
    for fold in folds:
        frame = fold.test.rows.copy()
        frame[FOLD_COLUMN] = fold.index
        frames.append(frame)
        probabilities.append(np.asarray(fold.test.probabilities, dtype=np.float64))
    rows = pd.concat(frames, ignore_index=True)
    if (rows.groupby("patient_id")[FOLD_COLUMN].nunique() > 1).any():
        raise ValueError("a patient is in more than one fold's test split: not out-of-fold")
    return rows, np.concatenate(probabilities)


def fold_assignment_digest(rows: pd.DataFrame) -> str:
    """The digest of which fold tests which patient: the CV-final model's split digest."""
    from histomlf.data.splits import split_digest

    table = rows[["patient_id", FOLD_COLUMN]].drop_duplicates()
    return split_digest(
        pd.DataFrame(
            {"patient_id": table["patient_id"], "split": "fold-" + table[FOLD_COLUMN].astype(str)}
        )
    )


@dataclass
class FinalScores:
    """The out-of-fold evaluation of the final model and how it was calibrated."""

    evaluation: Any  # Evaluation focused on the `oof` split, calibrated, at the mapped threshold
    raw_threshold: float
    platt: Any  # PlattMap (the identity for calibrate=none, or when no fit was possible)
    raw_probabilities: np.ndarray
    calibration: str = "none"  # "platt", "none", or "none: <why no fit was possible>"

    def metrics(self) -> dict[str, float]:
        from histomlf.evaluation.metrics import expected_calibration_error

        labels = self.evaluation.focused.labels
        return {
            **self.evaluation.metrics(),
            "oof_ece_uncalibrated": expected_calibration_error(labels, self.raw_probabilities),
            "uncalibrated_threshold": self.raw_threshold,
            **self.platt.as_params(),
        }


def score_out_of_fold(
    rows: pd.DataFrame, probabilities: np.ndarray, *, policy: str, calibrate: str, seed: int
) -> FinalScores:
    """Threshold by `policy` and (for `platt`) the calibration map, both from the pooled
    out-of-fold predictions; the scores of the calibrated probabilities at the mapped
    threshold, with patient-bootstrap intervals."""
    from histomlf.evaluation.calibration import PlattMap, fit_platt
    from histomlf.evaluation.scored import evaluate_splits, score_split
    from histomlf.evaluation.threshold import choose_threshold

    labels = rows["label"].to_numpy()
    raw_threshold = float(choose_threshold(labels, probabilities, policy))
    platt, calibration = PlattMap(), "none"
    if calibrate == "platt":
        try:
            platt, calibration = fit_platt(labels, probabilities), "platt"
        except ValueError as error:  # one class, or a model that ranks no better than chance
            calibration = f"none: {error}"
    threshold = platt.threshold(raw_threshold)
    scores = score_split(rows, platt(probabilities), threshold)
    evaluation = evaluate_splits({OOF_SPLIT: scores}, threshold, focus=OOF_SPLIT, seed=seed)
    return FinalScores(evaluation, raw_threshold, platt, probabilities, calibration)


def final_model(folds: Sequence[FoldOutcome], platt: Any, refit: Any = None) -> Any:
    """The mean of the fold models (or the `refit` model), with the Platt map as its last
    layer (unless identity)."""
    from histomlf.models.averaging import average_members, with_calibration

    model = refit
    if model is None:
        model = average_members([fold.model for fold in folds], name=f"cv{len(folds)}_ensemble")
    return model if platt.is_identity else with_calibration(model, platt.slope, platt.intercept)


def log_final(
    config: Any,
    folds: Sequence[FoldOutcome],
    *,
    data_digest: str,
    metadata: dict[str, str],
    calibrate: str,
    register_as: str,
    fold_summary: dict[str, float],
    final: str = "ensemble",
    manifest: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Score, build, log and (with `register_as`) register the CV-final model — the fold
    ensemble, or (`final="refit"`, which needs the `manifest`) one model trained on every
    patient — in a nested run of kind `cv-final`; returns its run id, model URI, metrics and
    the gate's decision."""
    from histomlf.evaluation import plots
    from histomlf.paths import cache_root
    from histomlf.schema import Artifact, ModelMeta, RunKind, Tag
    from histomlf.tracking import artifacts, runs
    from histomlf.tracking.callbacks import MlflowEpochLogger
    from histomlf.tracking.pyfunc import log_patch_classifier

    rows, probabilities = pooled_out_of_fold(folds)
    scores = score_out_of_fold(
        rows, probabilities, policy=config.threshold_policy, calibrate=calibrate, seed=config.seed
    )
    split_digest = fold_assignment_digest(rows)
    fold_runs = ",".join(fold.run_id for fold in folds)
    patients = int(rows["patient_id"].nunique())
    refit = final == "refit"
    recipe = refit_config(config, folds) if refit else None
    tags = {Tag.KIND: str(RunKind.CV_FINAL), Tag.DATA_DIGEST: data_digest,
            Tag.SPLIT_DIGEST: split_digest}
    with runs.nested_run(
        f"final-refit-on-{patients}-patients" if refit else f"final-ensemble-of-{len(folds)}",
        tags=tags,
        params={
            "final": final,
            "calibrate": calibrate,
            "calibration": scores.calibration[:500],
            "fold_runs": fold_runs,
            **({"refit_epochs": recipe.epochs, "refit_fine_tune_epochs": recipe.fine_tune_epochs}
               if refit else {}),
        },
    ) as run:
        refit_model = None
        if refit:
            refit_model, data = train_refit(
                recipe, manifest, work_dir=cache_root() / "runs" / run.info.run_id,
                callbacks=[MlflowEpochLogger()],
            )
            artifacts.log_data(data)  # its split: every patient in train
            runs.set_tags(tags)  # the scores' split digest is the folds', not the refit's own
        metrics = scores.metrics()
        artifacts.log_evaluation(scores.evaluation)
        runs.log_metrics({k: v for k, v in metrics.items() if k not in scores.evaluation.metrics()})
        runs.log_metrics(fold_metrics_named(fold_summary))
        runs.log_figure(
            plots.plot_reliability_diagram(
                scores.evaluation.focused.labels,
                probabilities,
                title="Out-of-fold, before calibration",
            ),
            Artifact.evaluation(OOF_SPLIT, "reliability_uncalibrated"),
        )
        model = final_model(folds, scores.platt, refit_model)
        info = log_patch_classifier(
            model,
            threshold=scores.evaluation.threshold,
            metadata={
                **metadata,
                ModelMeta.SPLIT_DIGEST: split_digest,
                ModelMeta.FINAL: ModelMeta.CV_REFIT if refit else ModelMeta.CV_ENSEMBLE,
                ModelMeta.FOLDS: str(len(folds)),
                **{k: repr(v) for k, v in scores.platt.as_params().items()},
            },
        )
        result = {
            "run_id": run.info.run_id,
            "model_uri": info.model_uri,
            "metrics": metrics,
            "patients": patients,
            "final": final,
        }
        if register_as:
            result["gate"] = register_final(
                config,
                scores,
                info.model_uri,
                run.info.run_id,
                name=register_as,
                digests={ModelMeta.DATA_DIGEST: data_digest,
                         ModelMeta.SPLIT_DIGEST: split_digest},
                fold_runs=fold_runs,
                patients=patients,
                refit=refit,
            )
        return result


def fold_metrics_named(summary: dict[str, float]) -> dict[str, float]:
    """The folds' mean/sd of their own test splits as `fold_mean_<metric>` / `fold_sd_<metric>`:
    on the final model's run a `test_` name would claim a test split it does not have."""
    named = {}
    for key, value in summary.items():
        base, _, stat = key.rpartition("_")
        named[f"fold_{stat}_{base.removeprefix('test_')}"] = value
    return named


def register_final(
    config: Any,
    scores: FinalScores,
    model_uri: str,
    run_id: str,
    *,
    name: str,
    digests: dict[str, str],
    fold_runs: str,
    patients: int,
    refit: bool = False,
) -> Any:
    """Register the final model; the gate compares it with a CV-final champion of the same
    data and folds by their stored out-of-fold scores (digests differ from any train run's)."""
    from histomlf.environment import git_state
    from histomlf.evaluation.text import headline_line
    from histomlf.schema import ModelMeta, RunKind, VersionTag
    from histomlf.tracking.registry import describe_version, register_and_gate, stored_gate_score

    metric = f"{OOF_SPLIT}_{config.gate_metric}"
    metrics = scores.evaluation.metrics()
    decision = register_and_gate(
        run_id,
        model_uri,
        name,
        gate_metric=config.gate_metric,
        new_score=float(metrics[metric]),
        digests=digests,
        tags={
            ModelMeta.MODEL: config.model,
            ModelMeta.EXPERIMENT: config.experiment,
            VersionTag.KIND: str(RunKind.CV_FINAL),
            VersionTag.SCORES: (
                f"out-of-fold of its recipe's fold models on {patients} patients "
                "(the refit itself trained on all of them)"
                if refit else f"out-of-fold on {patients} patients"
            ),
            VersionTag.FOLD_RUNS: fold_runs,
            **{k: str(v) for k, v in git_state().items()},
        },
        score_champion=lambda uri: stored_gate_score(uri, str(RunKind.CV_FINAL)),
    )
    describe_version(
        name,
        decision.version,
        f"Gate on out-of-fold {config.gate_metric}: {decision.alias} — {decision.reason}.\n\n"
        f"Out-of-fold, pooled over {patients} patients (each scored by the fold model that did "
        f"not train on it; fold runs {fold_runs}): {headline_line(metrics, OOF_SPLIT)}. "
        + (
            "This model was refitted on all of them with the same recipe, so it has no unseen "
            "patients of its own: these out-of-fold scores of its recipe are its honest estimate."
            if refit
            else "No unseen test split: these are the honest scores of this ensemble."
        ),
    )
    return decision
