"""Scoring a logged model on data: `histomlf evaluate` (tracked) and `histomlf predict` (files).

Both go through the model's pyfunc, so they see the model exactly as `mlflow models serve`
does, decision threshold included. `evaluate` logs the same artifacts as a train run's test
evaluation (`log_evaluation`), under the scored split's name (`test`, `val`, `train`, or
`eval` for a whole folder).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from histomlf.data.scan import manifest_for
from histomlf.errors import UserError
from histomlf.recipes.explain import explain_run
from histomlf.schema import Artifact, ModelMeta, RunKind, Tag
from histomlf.tracking import artifacts, runs
from histomlf.tracking.scoring import (
    keras_model_of,
    load_model,
    model_threshold,
    predict_rows,
    source_run_split,
)

SPLITS = ("test", "val", "train", "all")


def select_split(manifest: pd.DataFrame, split: str, split_file: Path | None) -> pd.DataFrame:
    """The rows of one split by a split file; `all` (or no split file) keeps every row."""
    from histomlf.data.splits import apply_split, load_split

    if split == "all" or split_file is None:
        return manifest.reset_index(drop=True)
    assigned = apply_split(manifest, load_split(split_file))
    rows = assigned[assigned["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise UserError(f"no rows of the {split} split in this data (is it the same dataset?)")
    return rows


def refuse_fold_ensemble_split(model_uri: str, split: str) -> None:
    """A CV-final model has no unseen split of its own: among an ensemble's members (or by the
    refit alone), every patient of its cross-validation was trained on. Only `all` (a folder
    of other patients) is honest."""
    from histomlf.tracking.scoring import logged_model_metadata

    final = logged_model_metadata(model_uri).get(ModelMeta.FINAL) if split != "all" else None
    if final == ModelMeta.CV_REFIT:
        raise UserError(
            f"{model_uri} was refitted on every patient of its cross-validation, so it has no "
            f"unseen {split} split; its honest estimate is the logged oof_* metrics of its "
            "recipe, or use --split all on patients its cross-validation never saw"
        )
    if final == ModelMeta.CV_ENSEMBLE:
        raise UserError(
            f"{model_uri} is a cross-validation ensemble: its members together trained on every "
            f"patient of its folds, so it has no unseen {split} split; its honest scores are the "
            "logged oof_* metrics, or use --split all on patients none of its folds saw"
        )


def evaluate(
    model_uri: str,
    data: str,
    *,
    split: str = "test",
    split_file: Path | None = None,
    explain: bool = True,
) -> dict[str, Any]:
    """Score `model_uri` on a split (by default the one its training run logged) and log it,
    with Grad-CAM overlays and patient maps unless `explain` is off."""
    from histomlf.evaluation.scored import evaluate_splits, score_split

    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    refuse_fold_ensemble_split(model_uri, split)
    manifest, digest, source = manifest_for(data)
    with runs.active_run(run_name=f"evaluate-{split}") as run, tempfile.TemporaryDirectory() as tmp:
        split_file = split_file or (
            source_run_split(model_uri, Path(tmp)) if split != "all" else None
        )
        if split != "all" and split_file is None:
            raise UserError(
                f"no split file given and {model_uri} has no logged {Artifact.SPLIT}; "
                "pass --split-file or --split all"
            )
        rows = select_split(manifest, split, split_file)
        model = load_model(model_uri)
        threshold = model_threshold(model)
        predictions = predict_rows(model, rows, progress=True)
        focus = "eval" if split == "all" else split
        scores = score_split(rows, predictions["probability"].to_numpy(), threshold)
        evaluation = evaluate_splits({focus: scores}, threshold, focus=focus)
        runs.set_tags(
            {
                Tag.KIND: RunKind.EVALUATE.value,
                Tag.MODEL_URI: model_uri,
                Tag.DATA_DIGEST: digest,
                Tag.SPLIT: split,
            }
        )
        runs.log_resolved_params(
            {"model_uri": model_uri, "data": source, "split": split, "patches": len(rows)}
        )
        artifacts.log_evaluation(evaluation)
        if explain:
            seconds = explain_run(keras_model_of(model), evaluation)
            artifacts.log_seconds({"explain": seconds})
        return {"run_id": run.info.run_id, "metrics": evaluation.metrics()}


def predict(model_uri: str, data: str, out: Path, *, batch_size: int = 256) -> tuple[Path, Path]:
    """Write one row per patch and a per-patient summary beside it; logs nothing.

    The model is loaded first: an unknown model fails before the data is scanned."""
    model = load_model(model_uri)
    manifest, _, _ = manifest_for(data)
    predictions = predict_rows(model, manifest, batch_size=batch_size, progress=True)
    table = manifest[["path", "patient_id", "x", "y"]].reset_index(drop=True).join(predictions)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    patients = (
        table.groupby("patient_id")
        .agg(
            patches=("path", "size"),
            mean_probability=("probability", "mean"),
            predicted_positive=("label", "sum"),
        )
        .reset_index()
    )
    patients["predicted_positive_fraction"] = patients["predicted_positive"] / patients["patches"]
    patient_path = out.with_name(out.stem + ".patients.csv")
    patients.to_csv(patient_path, index=False)
    return out, patient_path
