"""The cross-validation recipe: K patient folds, one nested run each, mean and sd on the parent.

Every fold trains with the train recipe's own `train_and_score` on a split from
`patient_kfold` (seeded, so every recipe compared on the same data sees the same folds) and is
logged by the same `log_evaluation` as a train run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from histomlf.config import ConfigError, TrainConfig, check_data_location
from histomlf.evaluation.metrics import BRIEF, METRIC_NAMES, headline_keys
from histomlf.paths import cache_root
from histomlf.recipes import notes
from histomlf.schema import Artifact, RunKind, Tag
from histomlf.tracking import artifacts, runs
from histomlf.tracking.callbacks import MlflowEpochLogger

SUMMARY_METRICS = tuple(f"test_{name}" for name in METRIC_NAMES) + tuple(
    f"test_patient_{name}" for name in METRIC_NAMES
)
FOLD_TABLE_METRICS = headline_keys("test_", BRIEF)


def summarise_folds(fold_metrics: list[dict[str, float]]) -> dict[str, float]:
    """`<metric>_mean` and `<metric>_sd` (sample sd, ddof=1) over folds, ignoring NaN folds."""
    summary = {}
    for key in SUMMARY_METRICS:
        values = np.array([m.get(key, np.nan) for m in fold_metrics], dtype=float)
        values = values[~np.isnan(values)]
        if len(values):
            summary[f"{key}_mean"] = float(values.mean())
            summary[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def cross_validate(
    config: TrainConfig,
    folds: int,
    only_folds: tuple[int, ...] = (),
    *,
    log_models: bool = False,
    final: str = "none",
    register_as: str = "",
) -> dict[str, Any]:
    """Train `config` on each of `folds` patient folds, each fold in its own nested run.

    `only_folds` (1-based, as in the fold runs' names) trains just those folds of the same
    seeded K-fold split: a cheap screen whose folds are a subset of the full protocol's.
    `log_models` logs each fold's model (as a train run does) for later rescoring; a fold
    model's scores belong to its own fold's test patients only.
    Returns `{"run_id", "summary", "folds"}`: the parent run, mean/sd per metric, and one row
    per fold (run id, seconds, headline test metrics).

    `final="ensemble"` then makes the fold models one calibrated ensemble with out-of-fold
    scores (`histomlf.recipes.cv_final`), `final="refit"` one model trained on every patient
    with the folds' threshold, calibration and out-of-fold scores; registered under
    `register_as` when given; the result gains `"final"`.
    """
    from histomlf.data.scan import scan_to_cache
    from histomlf.data.splits import patient_kfold
    from histomlf.recipes.cv_final import FoldOutcome, check_final, log_final
    from histomlf.recipes.train import demo_named, model_metadata
    from histomlf.tracking.pyfunc import log_patch_classifier
    from histomlf.training.workflow import prepare_data, resolve_data_dir, train_and_score

    check_final(final, config.calibrate, folds, only_folds)
    # The fold models stay uncalibrated: their out-of-fold outputs are what the final model's
    # map is fitted on (`config.calibrate` is the final model's).
    fold_config = config.replace(calibrate="none")
    chosen = sorted(set(only_folds)) or list(range(1, folds + 1))
    if not all(1 <= fold <= folds for fold in chosen):
        raise ConfigError(f"only_folds must be fold numbers from 1 to {folds}; got {only_folds}")
    check_data_location(config.data_dir)
    partial = len(chosen) < folds
    name = f"cv{folds}-{config.model}-{config.experiment}"
    if partial:
        name += f"-folds{''.join(map(str, chosen))}"
    with runs.active_run(run_name=name) as parent:
        extra = {
            "folds": folds,
            "only_folds": ",".join(map(str, chosen)) if partial else "",
            "log_models": log_models,
            "final": final,
        }
        runs.log_config(config, extra=extra)
        runs.log_resolved_params(extra)
        runs.log_environment()
        runs.set_tags({Tag.KIND: RunKind.CV.value})
        data_dir, _ = resolve_data_dir(config)
        manifest = scan_to_cache(data_dir).manifest
        fold_splits = patient_kfold(
            manifest, folds, seed=config.seed, val_fraction=config.val_fraction
        )
        fold_metrics, rows, outcomes = [], [], []
        data = None
        for index, split in enumerate(fold_splits):
            if index + 1 not in chosen:
                continue
            with runs.nested_run(
                f"fold-{index + 1}-of-{folds}",
                tags={Tag.KIND: RunKind.CV_FOLD.value, Tag.FOLD: str(index)},
                params={**fold_config.as_params(), "fold": index},
            ) as child:
                data = prepare_data(fold_config, split=split)
                artifacts.log_data(data)
                outcome = train_and_score(
                    fold_config,
                    work_dir=cache_root() / "runs" / child.info.run_id,
                    callbacks=[MlflowEpochLogger()],
                    data=data,
                )
                artifacts.log_evaluation(
                    outcome.evaluation, history=outcome.fit.history, phases=outcome.fit.phases
                )
                artifacts.log_seconds(outcome.seconds)
                if log_models:
                    log_patch_classifier(
                        outcome.model,
                        threshold=outcome.evaluation.threshold,
                        metadata=model_metadata(config, data),
                    )
                if final != "none":
                    outcomes.append(
                        FoldOutcome(
                            index=index,
                            run_id=child.info.run_id,
                            model=outcome.model if final == "ensemble" else None,
                            test=outcome.evaluation.splits["test"],
                            epochs=len(outcome.fit.phase_epochs(1)),
                            fine_tune_epochs=len(outcome.fit.phase_epochs(2)),
                        )
                    )
                metrics = outcome.metrics()
                fold_metrics.append(metrics)
                rows.append(
                    {
                        "fold": index,
                        "run_id": child.info.run_id,
                        "seconds": sum(outcome.seconds.values()),
                        **{k: metrics[k] for k in FOLD_TABLE_METRICS},
                    }
                )
        summary = summarise_folds(fold_metrics)
        runs.log_metrics(summary)
        runs.log_table(pd.DataFrame(rows), Artifact.CV_FOLDS)
        result = {"run_id": parent.info.run_id, "summary": summary, "folds": rows}
        if final != "none":
            result["final"] = log_final(
                config,
                outcomes,
                data_digest=data.data_digest,
                metadata=model_metadata(config, data),
                calibrate=config.calibrate,
                register_as=demo_named(register_as, data) if register_as else "",
                fold_summary=summary,
                final=final,
                manifest=manifest,
            )
        runs.set_note(notes.cv_note(config, folds, summary))
        return result
