"""The CV-final ensemble against one default model, each judged on patients none of it saw.

Nested: the patients are dealt into `--outer` seeded folds; for each outer fold the other
patients are the only data either contender sees —

- *single*: `histomlf train`'s recipe (its own 70/15/15 patient split of those patients, the
  threshold on its validation patients), as the main entry point registers today;
- *ensemble*: `histomlf cv --final ensemble` with `--folds K` on the same patients (the mean
  of the K fold models, Platt-calibrated on their pooled out-of-fold predictions, threshold
  from every patient);

— and both are scored on the held-out outer fold. Paired per outer fold: ROC-AUC, balanced
accuracy, F1, ECE, plus the training CPU seconds. Results are written after every outer fold.

    d=/tmp/idc-219; mkdir -p $d && cp -r ../shared/idc-sample/. ../shared/idc-more/. $d/
    python -m benchmarks.cv_final --data-dir $d --outer 5 --only-outer 1,2 --folds 3 \\
        --epochs 20 --json benchmarks/results/cv_final.json

A screen (fewer outer folds or epochs) says so in its JSON (`settings`).
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
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, machine_line

KEYS = ("roc_auc", "balanced_accuracy", "f1", "ece")


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
    from histomlf.evaluation.metrics import classification_metrics
    from histomlf.tracking.scoring import load_model, model_threshold, predict_rows

    model = load_model(model_uri)
    predictions = predict_rows(model, rows)
    metrics = classification_metrics(
        rows["label"].to_numpy(), predictions["probability"].to_numpy(), model_threshold(model)
    )
    return {key: float(metrics[key]) for key in KEYS}


def run_outer_fold(args: argparse.Namespace, index: int, split: Any, manifest: Any, work: Path):
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

    started, cpu = time.perf_counter(), cpu_seconds()
    single = train(config, run_name=f"outer{index}-single")
    out["single"] = {**held_out_scores(single["model_uri"], held_rows),
                     "seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu}

    started, cpu = time.perf_counter(), cpu_seconds()
    result = cross_validate(config, args.folds, final="ensemble", calibrate="platt")
    final = result["final"]
    out["ensemble"] = {**held_out_scores(final["model_uri"], held_rows),
                       "seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu,
                       "oof_roc_auc": final["metrics"]["oof_roc_auc"],
                       "oof_ece": final["metrics"]["oof_ece"],
                       "oof_ece_uncalibrated": final["metrics"]["oof_ece_uncalibrated"]}
    out["ensemble_uncalibrated_ece_held_out"] = uncalibrated_ece(final["model_uri"], held_rows)
    shutil.rmtree(inner_dir, ignore_errors=True)
    return out


def uncalibrated_ece(model_uri: str, rows: Any) -> float:
    """ECE on the held-out patients of the ensemble's mean before its Platt layer."""
    import keras

    from histomlf.data.patches import decode_patch
    from histomlf.evaluation.metrics import expected_calibration_error
    from histomlf.models.averaging import calibration_of
    from histomlf.models.inference import as_predictor
    from histomlf.tracking.scoring import keras_model_of, load_model

    model = keras_model_of(load_model(model_uri))
    if calibration_of(model) is None:
        return float("nan")
    mean = [layer for layer in model.layers if isinstance(layer, keras.Model)][0]
    predictor = as_predictor(mean, 256)
    chunks = np.array_split(rows["path"].to_numpy(), max(1, len(rows) // 256))
    probabilities = np.concatenate(
        [predictor(np.stack([decode_patch(Path(p).read_bytes()) for p in part])) for part in chunks]
    )
    return expected_calibration_error(rows["label"].to_numpy(), probabilities)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    table = {}
    for key in (*KEYS, "cpu_seconds"):
        single = np.array([r["single"][key] for r in results])
        ensemble = np.array([r["ensemble"][key] for r in results])
        delta = ensemble - single
        table[key] = {
            "single_mean": float(single.mean()), "single_sd": float(single.std(ddof=1))
            if len(single) > 1 else 0.0,
            "ensemble_mean": float(ensemble.mean()), "ensemble_sd": float(ensemble.std(ddof=1))
            if len(ensemble) > 1 else 0.0,
            "paired_delta_mean": float(delta.mean()),
            "ensemble_better_folds": int((delta < 0).sum() if key in ("ece", "cpu_seconds")
                                         else (delta > 0).sum()),
        }
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
    args = parser.parse_args()

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
            results.append(run_outer_fold(args, index, outer[index - 1], manifest, Path(work)))
        payload = {"machine": machine(), "settings": settings, "outer_folds": results,
                   "summary": summary(results)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"outer fold {index}: {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    print(machine_line(machine()))
    print(json.dumps(summary(results), indent=2))


if __name__ == "__main__":
    main()
