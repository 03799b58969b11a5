"""The CV-final ensemble against one default model, each judged on patients none of it saw.

Nested: the patients are dealt into `--outer` seeded folds; for each outer fold the other
patients are the only data either contender sees —

- *single*: `histomlf train`'s recipe (its own 70/15/15 patient split of those patients, the
  threshold on its validation patients), as the main entry point registers today;
- *single_platt*: the same with `calibrate: platt` (the Platt map fitted on its validation
  patients);
- *ensemble*: `histomlf cv --final ensemble` with `--folds K` on the same patients (the mean
  of the K fold models, Platt-calibrated on their pooled out-of-fold predictions, threshold
  from every patient);
- *refit*: what `histomlf cv --final refit` adds after the same K folds — one model trained on
  all those patients for the folds' median epochs, early stopping off, with the ensemble's
  out-of-fold threshold and Platt map (read back from its `cv-final` run, so the K folds are
  not trained twice);

— and both are scored on the held-out outer fold. Paired per outer fold: ROC-AUC, balanced
accuracy, F1, ECE, plus the training CPU seconds. Results are written after every outer fold.

    d=/tmp/idc-219; mkdir -p $d && cp -r ../shared/idc-sample/. ../shared/idc-more/. $d/
    python -m benchmarks.cv_final --data-dir $d --outer 5 --only-outer 1,2 --folds 3 \\
        --epochs 20 --json benchmarks/results/cv_final.json

A screen (fewer outer folds or epochs) says so in its JSON (`settings`). `--reuse OLD.json
--contenders refit` adds the refit to an earlier run's outer folds (same `--store`, whose
`cv-final` runs give the folds' threshold, Platt map and epochs), keeping its other numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, machine_line

KEYS = ("roc_auc", "balanced_accuracy", "f1", "ece")
CONTENDERS = ("single", "single_platt", "ensemble", "refit")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def copy_patients(data_dir: Path, patients: list[str], target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for patient in patients:
        shutil.copytree(data_dir / patient, target / patient)
    return target


def held_out_scores(model_uri: str, rows: Any) -> dict[str, float]:
    """The model's metrics on `rows` at its own logged threshold."""
    from histomlf.tracking.scoring import load_model, model_threshold, predict_rows

    model = load_model(model_uri)
    predictions = predict_rows(model, rows)
    return scores(rows["label"].to_numpy(), predictions["probability"].to_numpy(),
                  model_threshold(model))


def run_outer_fold(args: argparse.Namespace, index: int, split: Any, manifest: Any, work: Path,
                   previous: dict[str, Any] | None = None):
    from histomlf.config import load_experiment
    from histomlf.recipes.cv import cross_validate
    from histomlf.recipes.train import train

    inner = sorted(split.loc[split["split"] != "test", "patient_id"].astype(str))
    held = set(split.loc[split["split"] == "test", "patient_id"].astype(str))
    held_rows = manifest[manifest["patient_id"].astype(str).isin(held)].reset_index(drop=True)
    inner_dir = copy_patients(args.data_dir, inner, work / f"outer{index}")
    overrides = {"data_dir": str(inner_dir), "epochs": args.epochs, "seed": args.seed}
    config, _ = load_experiment(args.experiment, overrides)
    out: dict[str, Any] = {"outer_fold": index, "inner_patients": len(inner),
                           "held_out_patients": len(held), "held_out_patches": len(held_rows)}

    out.update(previous or {})
    for contender, calibrate in (("single", "none"), ("single_platt", "platt")):
        if contender not in args.contenders:
            continue
        started, cpu = time.perf_counter(), cpu_seconds()
        single = train(replace(config, calibrate=calibrate), run_name=f"outer{index}-{contender}")
        out[contender] = {**held_out_scores(single["model_uri"], held_rows),
                          "seconds": time.perf_counter() - started,
                          "cpu_seconds": cpu_seconds() - cpu}
    final_run_id = None
    if "ensemble" in args.contenders:
        started, cpu = time.perf_counter(), cpu_seconds()
        result = cross_validate(replace(config, calibrate="platt"), args.folds, final="ensemble")
        final = result["final"]
        final_run_id = final["run_id"]
        out["ensemble"] = {**held_out_scores(final["model_uri"], held_rows),
                           "seconds": time.perf_counter() - started,
                           "cpu_seconds": cpu_seconds() - cpu,
                           "oof_roc_auc": final["metrics"]["oof_roc_auc"],
                           "oof_ece": final["metrics"]["oof_ece"],
                           "oof_ece_uncalibrated": final["metrics"]["oof_ece_uncalibrated"]}
        out["ensemble_uncalibrated_ece_held_out"] = uncalibrated_ece(final["model_uri"],
                                                                     held_rows)
    if "refit" in args.contenders:
        final_run_id = final_run_id or cv_final_run_of(inner_dir)
        out["refit"] = run_refit(config, final_run_id, held_rows, work)
    shutil.rmtree(inner_dir, ignore_errors=True)
    return out


def cv_final_run_of(inner_dir: Path) -> str:
    """The store's `cv-final` run of the CV that ran on `inner_dir` (by its folder's name,
    `outer<N>`, which the CV parent's `data_dir` param keeps)."""
    from mlflow.tracking import MlflowClient

    from histomlf.schema import MlflowTag, RunKind, Tag

    client = MlflowClient()
    experiment = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    for run in client.search_runs([experiment.experiment_id],
                                  f"tags.`{Tag.KIND}` = '{RunKind.CV_FINAL}'"):
        parent = client.get_run(run.data.tags[MlflowTag.PARENT_RUN_ID])
        if Path(parent.data.params.get("data_dir", "")).name == inner_dir.name:
            return run.info.run_id
    raise SystemExit(f"no cv-final run in the store was cross-validated on {inner_dir.name}")


def run_refit(config: Any, final_run_id: str, held_rows: Any, work: Path) -> dict[str, float]:
    """Refit on the inner patients as `cv --final refit` does after the folds, with the
    threshold and Platt map of the folds' `cv-final` run; scored on the held-out patients."""
    from mlflow.tracking import MlflowClient

    from histomlf.data.scan import scan_to_cache
    from histomlf.evaluation.calibration import PlattMap
    from histomlf.recipes.cv_final import FoldOutcome, final_model, refit_config, train_refit
    from histomlf.tracking.callbacks import EPOCH_PREFIX

    client = MlflowClient()
    final = client.get_run(final_run_id)
    folds = []
    for run_id in final.data.params["fold_runs"].split(","):
        epochs = len(client.get_metric_history(run_id, f"{EPOCH_PREFIX}train_loss"))
        folds.append(FoldOutcome(len(folds), run_id, None, None, epochs))
    platt = PlattMap(final.data.metrics["platt_slope"], final.data.metrics["platt_intercept"])
    threshold = platt.threshold(final.data.metrics["uncalibrated_threshold"])
    started, cpu = time.perf_counter(), cpu_seconds()
    recipe = refit_config(config, folds)
    manifest = scan_to_cache(Path(config.data_dir)).manifest
    model, _ = train_refit(recipe, manifest, work_dir=work / "refit")
    seconds, cpu_used = time.perf_counter() - started, cpu_seconds() - cpu
    probabilities = keras_probabilities(final_model(folds, platt, model), held_rows)
    return {**scores(held_rows["label"].to_numpy(), probabilities, threshold),
            "seconds": seconds, "cpu_seconds": cpu_used, "refit_epochs": recipe.epochs}


def keras_probabilities(model: Any, rows: Any) -> np.ndarray:
    from histomlf.data.patches import decode_patch
    from histomlf.models.inference import as_predictor

    predictor = as_predictor(model, 256)
    chunks = np.array_split(rows["path"].to_numpy(), max(1, len(rows) // 256))
    return np.concatenate(
        [predictor(np.stack([decode_patch(Path(p).read_bytes()) for p in part])) for part in chunks]
    )


def scores(labels: Any, probabilities: Any, threshold: float) -> dict[str, float]:
    from histomlf.evaluation.metrics import classification_metrics

    metrics = classification_metrics(labels, probabilities, threshold)
    return {key: float(metrics[key]) for key in KEYS}


def uncalibrated_ece(model_uri: str, rows: Any) -> float:
    """ECE on the held-out patients of the ensemble's mean before its Platt layer."""
    import keras

    from histomlf.evaluation.metrics import expected_calibration_error
    from histomlf.models.averaging import calibration_of
    from histomlf.tracking.scoring import keras_model_of, load_model

    model = keras_model_of(load_model(model_uri))
    if calibration_of(model) is None:
        return float("nan")
    mean = [layer for layer in model.layers if isinstance(layer, keras.Model)][0]
    return expected_calibration_error(rows["label"].to_numpy(), keras_probabilities(mean, rows))


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd of each contender, and each final model paired against the single one."""
    table: dict[str, Any] = {}
    present = [c for c in CONTENDERS if all(c in r for r in results)]
    for key in (*KEYS, "cpu_seconds"):
        row: dict[str, float] = {}
        values = {c: np.array([r[c][key] for r in results]) for c in present}
        for contender, value in values.items():
            row[f"{contender}_mean"] = float(value.mean())
            row[f"{contender}_sd"] = float(value.std(ddof=1)) if len(value) > 1 else 0.0
        for contender in (c for c in present if c != "single" and "single" in values):
            delta = values[contender] - values["single"]
            lower_is_better = key in ("ece", "cpu_seconds")
            row[f"{contender}_paired_delta_mean"] = float(delta.mean())
            row[f"{contender}_better_folds"] = int(
                (delta < 0).sum() if lower_is_better else (delta > 0).sum()
            )
        table[key] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--outer", type=int, default=5)
    parser.add_argument("--only-outer", default="", help="1-based outer folds to run, e.g. 1,2")
    parser.add_argument("--folds", type=int, default=3, help="inner folds of the ensemble")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/cv_final.json"))
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated: single, ensemble, refit")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier JSON of this benchmark whose outer folds to extend")
    args = parser.parse_args()
    args.contenders = [c for c in args.contenders.split(",") if c]
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; known: {', '.join(CONTENDERS)}")
    reused = json.loads(args.reuse.read_text()) if args.reuse else {}
    earlier = {r["outer_fold"]: r for r in reused.get("outer_folds", [])}

    from histomlf.data.scan import scan_to_cache
    from histomlf.data.splits import patient_kfold

    store = args.store or Path(tempfile.mkdtemp(prefix="cv-final-bench-"))
    store.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "cv-final-benchmark"
    os.environ.setdefault("HISTOMLF_CACHE", str(store / "cache"))
    manifest = scan_to_cache(args.data_dir).manifest
    outer = patient_kfold(manifest, args.outer, seed=args.seed, val_fraction=0.0)
    chosen = [int(x) for x in args.only_outer.split(",") if x] or list(range(1, args.outer + 1))
    results: list[dict[str, Any]] = []
    settings = {k: str(v) for k, v in vars(args).items()}
    settings["screen"] = len(chosen) < args.outer or args.epochs < 60
    for index in chosen:
        with tempfile.TemporaryDirectory(dir=store) as work:
            results.append(run_outer_fold(args, index, outer[index - 1], manifest, Path(work),
                                          earlier.get(index)))
        payload = {"machine": machine(), "settings": settings, "outer_folds": results,
                   "summary": summary(results)}
        if reused:
            payload["reused"] = {"json": str(args.reuse), "machine": reused.get("machine"),
                                 "settings": reused.get("settings")}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"outer fold {index}: {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    print(machine_line(machine()))
    print(json.dumps(summary(results), indent=2))


if __name__ == "__main__":
    main()
