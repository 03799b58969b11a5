"""Cross-validation by patient: one nested run per fold, mean and sd on the parent."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd

from histomlf.config import TrainConfig
from histomlf.evaluation.metrics import METRIC_NAMES
from histomlf.paths import cache_root
from histomlf.tracking import runs
from histomlf.tracking.callbacks import MlflowEpochLogger
from histomlf.tracking.train_run import log_data, log_split_scores

SUMMARY_METRICS = tuple(f"test_{name}" for name in METRIC_NAMES) + tuple(
    f"test_patient_{name}" for name in METRIC_NAMES
)


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


def cv_and_log(config: TrainConfig, folds: int) -> dict[str, Any]:
    """Train `config` on each of `folds` patient folds, each fold in its own nested run."""
    from histomlf.data.scan import scan_to_cache
    from histomlf.data.splits import patient_kfold
    from histomlf.training.workflow import prepare_data, resolve_data_dir, train

    with runs.active_run(run_name=f"cv{folds}-{config.model}-{config.experiment}") as parent:
        runs.log_config(config, extra={"folds": folds})
        runs.log_resolved_params({"folds": folds})
        runs.log_environment()
        mlflow.set_tag("histomlf.kind", "cv")
        data_dir, _ = resolve_data_dir(config)
        manifest = scan_to_cache(data_dir).manifest
        fold_splits = patient_kfold(
            manifest, folds, seed=config.seed, val_fraction=config.val_fraction
        )
        fold_metrics, rows = [], []
        for index, split in enumerate(fold_splits):
            with mlflow.start_run(run_name=f"fold-{index}", nested=True) as child:
                mlflow.set_tags({"histomlf.kind": "cv-fold", "histomlf.fold": str(index)})
                mlflow.log_params(
                    {**{k: str(v) for k, v in config.as_params().items()}, "fold": index}
                )
                data = prepare_data(config, split=split)
                log_data(data)
                outcome = train(
                    config,
                    work_dir=cache_root() / "runs" / child.info.run_id,
                    callbacks=[MlflowEpochLogger()],
                    data=data,
                )
                log_split_scores(outcome)
                metrics = outcome.metrics()
                fold_metrics.append(metrics)
                rows.append(
                    {
                        "fold": index,
                        "run_id": child.info.run_id,
                        "seconds": sum(outcome.seconds.values()),
                        **{
                            k: metrics[k]
                            for k in ("test_roc_auc", "test_balanced_accuracy", "test_f1")
                        },
                    }
                )
        summary = summarise_folds(fold_metrics)
        mlflow.log_metrics(summary)
        table = pd.DataFrame(rows)
        mlflow.log_table(table, "cv/folds.json")
        return {"run_id": parent.info.run_id, "summary": summary, "folds": rows}
