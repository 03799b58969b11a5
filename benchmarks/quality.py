"""Quality table: 5-fold patient-level CV of the default recipe, its baselines and the study's
recipes (VGG16, ResNet50 with weights=none on tiny budgets), all on the real sample.

    .venv/bin/python -m benchmarks.quality [--quick] [--json out.json]

The default recipe and its two baselines come from benchmarks/results/cv_quality.json, written
by `python -m benchmarks.cv_quality --json ...` (not rerun here: ~10 minutes). The study's
recipes run with `python -m benchmarks.quality --run-study` through the same `mlflow run . -e
cv` on the same folds and seed, with the budget in `STUDY_BUDGET` (CPU-sized: 1 epoch, no
fine-tuning, a 400-patch label-stratified subsample, 50x50, batch 64; the real study trains
ImageNet-initialised nets for 15 epochs on a GPU), into benchmarks/results/study_cv.json,
which `run()` reads.
Each row: test ROC-AUC mean over folds, against the colour-histogram logistic regression.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, SAMPLE_DIR, cli, row
from benchmarks.cv_quality import summary

CV_FILE = RESULTS_DIR / "cv_quality.json"
STUDY_FILE = RESULTS_DIR / "study_cv.json"
FOLDS = 5
SEED = 42
STUDY_BUDGET = {
    "weights": "none", "epochs": "1", "fine_tune_epochs": "0", "batch_size": "64",
    "max_samples": "400", "image_size": "50", "early_stopping_patience": "0",
}  # fmt: skip
STUDY = ("vgg16", "resnet50")
BASELINE = "baseline: logistic regression on colour histograms"


def study_results(run_missing: bool) -> dict[str, Any]:
    """The study recipes' CV metrics cached for this budget; `run_missing` runs absent ones.

    `benchmarks.run` only reads the cache (the study takes ~15 minutes on 2 loaded cores):
    fill it with `python -m benchmarks.quality --run-study`. Each recipe is saved as soon as
    it finishes; a failed one records the end of its error output instead.
    """
    cached = json.loads(STUDY_FILE.read_text()) if STUDY_FILE.is_file() else {}
    if cached.get("budget") != STUDY_BUDGET or cached.get("folds") != FOLDS:
        cached = {}
    if not run_missing:
        return cached
    from benchmarks.common import machine
    from benchmarks.cv_quality import run_cv

    payload = cached or {"budget": STUDY_BUDGET, "folds": FOLDS, "seed": SEED,
                         "data": str(SAMPLE_DIR), "results": {}, "errors": {}}  # fmt: skip
    for name in STUDY:
        key = f"study: {name} (weights=none, tiny budget)"
        if key in payload["results"]:
            continue
        params = {"experiment": name, **STUDY_BUDGET, "data_dir": str(SAMPLE_DIR.resolve()),
                  "folds": str(FOLDS), "seed": str(SEED)}  # fmt: skip
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="histomlf-study-cv-") as tmp:
            try:
                metrics = summary(run_cv(Path(tmp), "study-cv", name, params, "study"))
            except RuntimeError as error:  # run_cv's failed `mlflow run`, with its stderr
                payload.setdefault("errors", {})[key] = str(error)[-3000:]
                continue
        metrics["seconds"] = time.perf_counter() - started
        payload["results"][key] = {
            k: v for k, v in metrics.items() if k.endswith(("_mean", "_sd")) or k == "seconds"
        }
        payload["machine"] = machine()
        STUDY_FILE.write_text(json.dumps(payload, indent=2))
    STUDY_FILE.write_text(json.dumps(payload, indent=2))
    return payload


def run(quick: bool) -> dict[str, Any]:
    cv = json.loads(CV_FILE.read_text()) if CV_FILE.is_file() else {"results": {}}
    study = study_results(run_missing=False)
    recipes = {**cv["results"], **study.get("results", {})}
    # cv_quality writes per-fold values since the recipe study; older files hold the summary.
    recipes = {name: summary(m) if "per_fold" in m else m for name, m in recipes.items()}
    baseline = recipes.get(BASELINE, {}).get("test_roc_auc_mean")
    rows = []
    for name, metrics in recipes.items():
        budget = "see cv_quality.py" if name in cv["results"] else (
            f"1 epoch, {STUDY_BUDGET['max_samples']} patches, 50x50, bs 64")
        rows.append(row(
            "quality", name, metrics["test_roc_auc_mean"], "ROC-AUC",
            baseline=None if name == BASELINE else baseline,
            baseline_name="colour-histogram logistic regression",
            note=(f"±{metrics['test_roc_auc_sd']:.3f}; bal.acc "
                  f"{metrics['test_balanced_accuracy_mean']:.3f}; F1 "
                  f"{metrics['test_f1_mean']:.3f}; {metrics['seconds']:.0f} s; {budget}"),
        ))  # fmt: skip
    return {"benchmark": "quality", "rows": rows, "cv_quality": cv, "study": study,
            "cv_file_date": cv.get("date"),
            "cv_file_mtime": time.strftime("%Y-%m-%d %H:%M", time.gmtime(CV_FILE.stat().st_mtime))
            if CV_FILE.is_file() else None}  # fmt: skip


if __name__ == "__main__":
    import sys

    if "--run-study" in sys.argv:
        print(json.dumps(study_results(run_missing=True), indent=2))
    else:
        cli(__doc__.splitlines()[0], run)
