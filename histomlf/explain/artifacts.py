"""The `explain/` folder a run logs: Grad-CAM overlays of a fixed panel and patient maps.

Layout: `histomlf.schema.Explain` (the web page and the study report read it from there;
Grad-CAM file names are built and parsed by `histomlf.schema.GradcamName`).

The panel is chosen from the predictions alone, so two runs on the same test split show the
same kinds of patch: the most confident true positives and true negatives, the worst false
positives and false negatives (`patches_per_kind` of each; ties broken by a seeded order). Each
overlay explains the class the model predicted. The patients are the few with most patches and
then the worst by error rate at the threshold. Pure: no mlflow; `tracking/` logs the folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histomlf.data.patches import decode_patch
from histomlf.errors import UserError
from histomlf.explain.averaged import explainer_for
from histomlf.explain.gradcam import SmoothGrad
from histomlf.explain.patient_map import REQUIRED_COLUMNS, save_patient_map
from histomlf.explain.render import HEATMAP, save_overlay
from histomlf.schema import Explain, GradcamName

INDEX_VERSION = 1
ROOT = Explain.ROOT
KINDS = Explain.KINDS


class ExplainError(UserError, ValueError):
    """The predictions cannot be explained (missing columns, no rows, unknown patients)."""


def _checked(predictions: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in (*REQUIRED_COLUMNS, "path") if c not in predictions.columns]
    if missing:
        raise ExplainError(f"predictions lack column(s) {', '.join(missing)}")
    if predictions.empty:
        raise ExplainError("no predictions to explain")
    frame = predictions.reset_index(drop=True).copy()
    frame["patient_id"] = frame["patient_id"].astype(str)
    return frame


def select_panel(
    predictions: pd.DataFrame, threshold: float, per_kind: int = 2, seed: int = 0
) -> pd.DataFrame:
    """The panel's rows with `kind` and `rank` columns, in kind order (tp, tn, fp, fn).

    tp/fp: highest P(IDC) first; tn/fn: lowest first. Ties keep a seeded random order.
    """
    frame = _checked(predictions)
    order = np.random.default_rng(seed).permutation(len(frame))
    frame = frame.iloc[order]
    positive = frame["probability"].to_numpy() >= threshold
    truth = frame["label"].to_numpy() == 1
    picks = []
    for kind, rows, descending in (
        ("tp", truth & positive, True),
        ("tn", ~truth & ~positive, False),
        ("fp", ~truth & positive, True),
        ("fn", truth & ~positive, False),
    ):
        chosen = frame[rows].sort_values("probability", ascending=not descending, kind="stable")
        chosen = chosen.head(per_kind).assign(
            kind=kind, rank=np.arange(1, min(per_kind, len(chosen)) + 1)
        )
        picks.append(chosen)
    return pd.concat(picks, ignore_index=True)


def select_patients(predictions: pd.DataFrame, threshold: float, count: int = 4) -> pd.DataFrame:
    """`patient_id`, `reason` ("most_patches" or "worst_error"), patches and error rate.

    The first half (rounded up) have most patches; the rest the highest error rate among the
    others. Ties go to the smaller patient id, so the set is fixed for a given table.
    """
    frame = _checked(predictions)
    wrong = (frame["probability"].to_numpy() >= threshold) != (frame["label"].to_numpy() == 1)
    table = (
        frame.assign(wrong=wrong)
        .groupby("patient_id")
        .agg(patches=("wrong", "size"), error_rate=("wrong", "mean"))
        .reset_index()
        .sort_values("patient_id")
    )
    largest = table.sort_values("patches", ascending=False, kind="stable").head(
        math.ceil(count / 2)
    )
    rest = table[~table["patient_id"].isin(largest["patient_id"])]
    worst = rest.sort_values("error_rate", ascending=False, kind="stable").head(
        count - len(largest)
    )
    return pd.concat(
        [largest.assign(reason="most_patches"), worst.assign(reason="worst_error")],
        ignore_index=True,
    )


def gradcam_name(kind: str, rank: int, patient_id: str, x: int, y: int) -> str:
    return str(GradcamName(kind, rank, patient_id, x, y))


def write_explanations(
    model: Any,
    predictions: pd.DataFrame,
    threshold: float,
    out_dir: Path,
    *,
    patches_per_kind: int = 2,
    patients: int = 4,
    patient_ids: Sequence[str] | None = None,
    smoothgrad: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Write `out_dir/explain/...` (see the module docstring) and return the index.

    `predictions` holds one test split: `path, patient_id, x, y, label, probability`.
    `patient_ids` maps exactly those patients instead of choosing `patients` of them.
    """
    frame = _checked(predictions)
    if not 0.0 <= threshold <= 1.0:
        raise ExplainError(f"threshold must be in [0, 1], got {threshold}")
    root = Path(out_dir) / ROOT
    if root.exists() and any(root.iterdir()):
        raise ExplainError(f"{root} is not empty: write explanations into a fresh folder")
    (Path(out_dir) / Explain.GRADCAM).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / Explain.PATIENTS).mkdir(parents=True, exist_ok=True)

    explainer = explainer_for(model)
    panel = select_panel(frame, threshold, patches_per_kind, seed)
    settings = SmoothGrad(seed=seed) if smoothgrad else None
    gradcam_entries = []
    if len(panel):
        patches = np.stack([decode_patch(Path(p).read_bytes()) for p in panel["path"]])
        predicted = (panel["probability"].to_numpy() >= threshold).astype(int)
        maps = explainer(patches, predicted, smoothgrad=settings)
        for row, patch, cam, explained in zip(
            panel.itertuples(index=False), patches, maps, predicted, strict=True
        ):
            name = gradcam_name(row.kind, int(row.rank), row.patient_id, int(row.x), int(row.y))
            save_overlay(Path(out_dir) / Explain.GRADCAM / name, patch, cam)
            gradcam_entries.append(
                {
                    "file": f"{Explain.GRADCAM}/{name}",
                    "kind": row.kind,
                    "rank": int(row.rank),
                    "patient_id": row.patient_id,
                    "x": int(row.x),
                    "y": int(row.y),
                    "label": int(row.label),
                    "probability": float(row.probability),
                    "explained_class": int(explained),
                    "map_mean": float(cam.mean()),
                }
            )

    patient_entries = []
    if patient_ids is not None:
        wanted = [str(p) for p in patient_ids]
        unknown = sorted(set(wanted) - set(frame["patient_id"].astype(str)))
        if unknown or not wanted:
            raise ExplainError(
                f"unknown patient(s) {', '.join(unknown)}" if unknown else "no patients given"
            )
        chosen_patients = pd.DataFrame({"patient_id": wanted, "reason": "requested"})
    else:
        chosen_patients = select_patients(frame, threshold, patients)
    for chosen in chosen_patients.itertuples(index=False):
        rows = frame[frame["patient_id"] == chosen.patient_id]
        png = Path(out_dir) / Explain.patient_map(chosen.patient_id)
        summary = save_patient_map(rows, threshold, png)
        patient_entries.append(
            {
                **summary,
                "reason": chosen.reason,
                "image": Explain.patient_map(chosen.patient_id),
                "grids": Explain.patient_map(chosen.patient_id, "npz"),
            }
        )

    index = {
        "version": INDEX_VERSION,
        "model": model.name,
        "layer": explainer.layer,
        "threshold": float(threshold),
        "colour_map": HEATMAP,
        "smoothgrad": (
            {"samples": settings.samples, "noise": settings.noise} if settings else None
        ),
        "seed": seed,
        "gradcam": gradcam_entries,
        "patients": patient_entries,
    }
    (Path(out_dir) / Explain.INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index
