"""Explanations of a model: logged with a run (`explain_run`) or written to a folder
(`explain_model`, the `histomlf explain` verb) in the `explain/` layout of
`histomlf.explain.artifacts`."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from histomlf.tracking import artifacts


def explain_run(model: Any, evaluation: Any, *, seed: int = 0) -> float:
    """Write and log the Grad-CAM panel and patient maps of `evaluation`'s main split into
    the active run; returns the seconds it took (logged as `seconds_explain`)."""
    from histomlf.explain.artifacts import write_explanations

    started = time.perf_counter()
    frame = evaluation.focused.predictions_frame(evaluation.threshold)
    with tempfile.TemporaryDirectory() as tmp:
        index = write_explanations(model, frame, evaluation.threshold, Path(tmp), seed=seed)
        artifacts.log_explanations(Path(tmp), index)
    return time.perf_counter() - started


def explain_model(
    model_uri: str,
    data: str,
    out: Path,
    *,
    patients: Sequence[str] | None = None,
    patches_per_kind: int = 2,
    smoothgrad: bool = False,
) -> dict[str, Any]:
    """Score DATA with a logged model and write its `explain/` folder under `out`.

    `patients` restricts scoring and maps to those patients (an unknown one is an error
    before anything is scored); otherwise the few with most patches and the worst are mapped.
    """
    from histomlf.data.scan import manifest_for
    from histomlf.explain.artifacts import ExplainError, write_explanations
    from histomlf.tracking.scoring import keras_model_of, load_model, model_threshold, predict_rows

    if patches_per_kind < 0:
        raise ExplainError(f"--patches must be >= 0, got {patches_per_kind}")
    manifest, _, _ = manifest_for(data)
    rows, wanted = manifest, None
    if patients is not None:
        wanted = [str(p).strip() for p in patients if str(p).strip()]
        known = set(manifest["patient_id"].astype(str))
        unknown = sorted(set(wanted) - known)
        if not wanted or unknown:
            raise ExplainError(
                f"unknown patient(s) in {data}: {', '.join(unknown)}" if unknown
                else "--patients selects no patient"
            )
        rows = manifest[manifest["patient_id"].astype(str).isin(wanted)]
    rows = rows.reset_index(drop=True)
    model = load_model(model_uri)
    threshold = model_threshold(model)
    predictions = predict_rows(model, rows, progress=True)
    frame = rows[["path", "patient_id", "x", "y", "label"]].copy()
    frame["probability"] = predictions["probability"].to_numpy()
    return write_explanations(
        keras_model_of(model),
        frame,
        threshold,
        out,
        patches_per_kind=patches_per_kind,
        patient_ids=wanted,
        smoothgrad=smoothgrad,
    )
