"""Quality by 5-fold patient cross-validation: the default recipe against two baselines.

Runs, on the same patient folds (same seed):
  * `mlflow run . -e cv` with experiments/default.yaml (the default recipe);
  * the same entry point with a one-epoch simplecnn (baseline 1);
  * a logistic regression on per-patch colour histograms (baseline 2, scikit-learn);
and prints mean ± sd of test ROC-AUC, balanced accuracy and F1 with wall time, plus JSON.

    python -m benchmarks.cv_quality --json benchmarks/results/cv_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = ("test_roc_auc", "test_balanced_accuracy", "test_f1")


def machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU"


def run_cv(store: Path, name: str, params: dict[str, str]) -> dict[str, float]:
    """`mlflow run . -e cv` into a fresh experiment; returns the parent's summary metrics."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{store}/mlflow.db"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "HISTOMLF_CACHE": str(store / "cache"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    client = MlflowClient(uri)
    client.create_experiment(name, artifact_location=str(store / "artifacts" / name))
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO_ROOT),
        "-e",
        "cv",
        "--env-manager",
        "local",
        "--experiment-name",
        name,
    ]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=7200)
    seconds = time.perf_counter() - started
    experiment = client.get_experiment_by_name(name)
    parents = client.search_runs([experiment.experiment_id], "tags.`histomlf.kind` = 'cv'")
    return {**parents[0].data.metrics, "seconds": seconds}


def colour_histogram_baseline(
    data_dir: Path, folds: int, seed: int, val_fraction: float
) -> dict[str, float]:
    """Logistic regression on 3x16-bin RGB histograms, on the same patient folds as `cv`."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from histomlf.data.patches import pad_to_patch
    from histomlf.data.scan import scan_to_cache
    from histomlf.data.splits import apply_split, patient_kfold
    from histomlf.evaluation.metrics import classification_metrics
    from histomlf.evaluation.threshold import choose_threshold

    started = time.perf_counter()
    manifest = scan_to_cache(data_dir).manifest
    features = np.stack(
        [
            np.concatenate(
                [
                    np.histogram(channel, bins=16, range=(0, 256), density=True)[0]
                    for channel in np.moveaxis(
                        pad_to_patch(np.asarray(Image.open(p).convert("RGB"))), -1, 0
                    )
                ]
            )
            for p in manifest["path"]
        ]
    )
    scores = []
    for split in patient_kfold(manifest, folds, seed=seed, val_fraction=val_fraction):
        assigned = apply_split(manifest, split)["split"].to_numpy()
        labels = manifest["label"].to_numpy()
        model = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced")
        )
        model.fit(features[assigned == "train"], labels[assigned == "train"])
        val_p = model.predict_proba(features[assigned == "val"])[:, 1]
        threshold = choose_threshold(labels[assigned == "val"], val_p, "youden")
        test_p = model.predict_proba(features[assigned == "test"])[:, 1]
        scores.append(classification_metrics(labels[assigned == "test"], test_p, threshold))
    out = {}
    for key in KEYS:
        values = np.array([s[key.removeprefix("test_")] for s in scores])
        out[f"{key}_mean"], out[f"{key}_sd"] = float(values.mean()), float(values.std(ddof=1))
    out["seconds"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "idc-sample")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = str(args.data_dir.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        common = {"data_dir": data, "folds": str(args.folds), "seed": str(args.seed)}
        results = {
            "default recipe (experiments/default.yaml)": run_cv(store, "default", common),
            "baseline: simplecnn, 1 epoch": run_cv(
                store,
                "one-epoch",
                {
                    **common,
                    "experiment": "smoke",
                    "max_samples": "0",
                    "epochs": "1",
                    "batch_size": "64",
                },
            ),
            "baseline: logistic regression on colour histograms": colour_histogram_baseline(
                args.data_dir, args.folds, args.seed, 0.15
            ),
        }
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(f"5-fold patient-level CV on {data} — {machine()} — {stamp}")
    print(f"{'recipe':55s} {'ROC-AUC':>15s} {'bal. acc.':>15s} {'F1':>15s} {'wall s':>8s}")
    for name, metrics in results.items():
        cells = [f"{metrics[f'{k}_mean']:.3f} ± {metrics[f'{k}_sd']:.3f}" for k in KEYS]
        print(
            f"{name:55s} {cells[0]:>15s} {cells[1]:>15s} {cells[2]:>15s} {metrics['seconds']:8.0f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine(),
            "date": stamp,
            "data": data,
            "folds": args.folds,
            "results": {
                n: {k: v for k, v in m.items() if k.endswith(("_mean", "_sd")) or k == "seconds"}
                for n, m in results.items()
            },
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
