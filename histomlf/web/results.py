"""What a page shows for an upload: scores, Grad-CAM overlays, the patient map, the CSV.

Both the HTML pages and the JSON API take these results; the images (inline PNG data URIs, so
a page needs no second request and works offline) are only drawn for HTML. File names and the
patient id are shortened for display (`display_name`: at most 80 characters, an ellipsis in
the middle) in every row, error line and CSV, so a 64 KB upload name costs 80 characters per
mention instead of being echoed whole; templates escape them (Jinja autoescape).
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from PIL import Image

from histomlf.data.patches import PATCH_SIZE
from histomlf.explain.patient_map import (
    TISSUE_PIXELS,
    cell_of,
    patient_grid,
    patient_summary,
    render_patient_map,
)
from histomlf.explain.render import HEATMAP, overlay
from histomlf.web.scorer import Scorer
from histomlf.web.uploads import Decoded, FileError, PatientFiles

THUMB_SCALE = 2
GAP = 2
MAP_DPI = 90
CSV_COLUMNS = ["file", "patient_id", "x", "y", "label", "probability", "predicted"]
NAME_CHARS = 80
"""Longest file name shown; Kaggle names are ~40 characters, so real names show whole."""
MESSAGE_CHARS = 400
ELLIPSIS = "\u2026"


def display_name(name: str, limit: int = NAME_CHARS) -> str:
    """`name` if at most `limit` characters, else its head and tail around an ellipsis (the
    tail keeps the extension and a Kaggle name's coordinates), `limit` characters in all."""
    if len(name) <= limit:
        return name
    tail = (limit - 1) // 2
    return name[: limit - 1 - tail] + ELLIPSIS + name[len(name) - tail :]


def display_message(message: str) -> str:
    """A message with every over-long word (a file name it quotes) shortened, and capped."""
    words = re.sub(rf"\S{{{NAME_CHARS + 1},}}", lambda m: display_name(m[0]), message)
    return display_name(words, MESSAGE_CHARS)


def display_errors(errors: list[FileError]) -> list[FileError]:
    return [FileError(display_name(e.file), display_message(e.message)) for e in errors]


@dataclass
class PatchRow:
    """One scored file: its probability (unrounded), predicted label and pictures."""

    file: str
    probability: float
    label: int
    thumbnail: str | None = None
    overlay: str | None = None
    """Grad-CAM overlay beside the map alone (so an empty map is seen as empty)."""
    evidence: bool = True
    """False when the map is zero everywhere: nothing in the patch raised that class."""


@dataclass
class PatchResults:
    rows: list[PatchRow]
    errors: list[FileError]
    overlays_drawn: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class PatientResults:
    patient_id: str
    summary: dict[str, Any]
    predictions: pd.DataFrame
    errors: list[FileError]
    skipped: int = 0
    map_png: str | None = None
    csv_uri: str | None = None


def score_patches(scorer: Scorer, decoded: Decoded, *, pictures: bool) -> PatchResults:
    """Score every usable file; with `pictures`, thumbnails for all and Grad-CAM for the first
    `limits.overlays` (each explaining the class the model predicted)."""
    probability = scorer.probabilities(decoded.patches)
    label = (probability >= scorer.threshold).astype(int)
    rows = [PatchRow(display_name(name), float(p), int(y))
            for name, p, y in zip(decoded.names, probability, label, strict=True)]
    results = PatchResults(rows, display_errors(decoded.errors))
    if not pictures:
        return results
    shown = min(len(rows), scorer.limits.overlays)
    maps = scorer.explain(decoded.patches[:shown], label[:shown])
    for index, (row, patch) in enumerate(zip(rows, decoded.patches, strict=True)):
        row.thumbnail = png_uri(upscale(patch))
        if maps is not None and index < shown:
            row.overlay = png_uri(upscale(gradcam_pair(patch, maps[index])))
            row.evidence = bool(maps[index].max() > 0)
    results.overlays_drawn = shown if maps is not None else 0
    if maps is None and scorer.explain_error:
        results.notes.append(f"Grad-CAM unavailable for this model: {scorer.explain_error}")
    elif len(rows) > shown:
        results.notes.append(
            f"Grad-CAM drawn for the first {shown} of {len(rows)} patches (all are scored)."
        )
    return results


def score_patient(scorer: Scorer, files: PatientFiles, *, pictures: bool) -> PatientResults:
    """Score one patient's patches; with `pictures`, the four-panel map and the CSV link."""
    probability = scorer.probabilities(files.patches)
    frame = files.rows.assign(
        file=files.rows["file"].map(display_name),
        patient_id=files.rows["patient_id"].map(display_name),
        probability=probability,
        predicted=(probability >= scorer.threshold).astype(int),
    )[CSV_COLUMNS]
    results = PatientResults(
        patient_id=display_name(files.patient_id),
        summary=patient_summary(frame, scorer.threshold),
        predictions=frame,
        errors=display_errors(files.errors),
        skipped=files.skipped,
    )
    if pictures:
        tissue = stitch_patches(frame, files.patches, scorer.threshold)
        figure, _ = render_patient_map(frame, scorer.threshold, tissue=tissue)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=MAP_DPI)
        results.map_png = data_uri(buffer.getvalue(), "image/png")
        results.csv_uri = data_uri(frame.to_csv(index=False).encode(), "text/csv")
    return results


def stitch_patches(frame: pd.DataFrame, patches: np.ndarray, threshold: float) -> np.ndarray:
    """The patient's tissue (the map's panel a) from decoded patches, already at display size.

    The same picture as `histomlf.explain.patient_map.stitch_tissue` followed by `shrink`:
    padding is white like that canvas's background, and each patch is block-averaged by the
    factor `shrink` would pick (a divisor of 50, so blocks never straddle two cells). Built
    small, the canvas stays within `TISSUE_PIXELS` per side however large the slide.
    """
    grid = patient_grid(frame, threshold)
    rows, cols = grid.shape
    longest = max(rows, cols) * PATCH_SIZE
    factor = next((f for f in (1, 2, 5, 10, 25) if longest / f <= TISSUE_PIXELS), PATCH_SIZE)
    size = PATCH_SIZE // factor
    small = patches.reshape(len(patches), size, factor, size, factor, 3).mean(axis=(2, 4))
    small = small.round().astype(np.uint8)
    canvas = np.full((rows * size, cols * size, 3), 255, np.uint8)
    cell_rows, cell_cols = cell_of(frame["x"], frame["y"])
    for row, col, patch in zip(cell_rows - grid.row0, cell_cols - grid.col0, small, strict=True):
        canvas[row * size : (row + 1) * size, col * size : (col + 1) * size] = patch
    return canvas


def gradcam_pair(patch: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The overlay and the map alone (same colour map), side by side with a white gap."""
    heat = np.round(colormaps[HEATMAP](np.clip(cam, 0, 1))[..., :3] * 255).astype(np.uint8)
    gap = np.full((patch.shape[0], GAP, 3), 255, np.uint8)
    return np.concatenate([overlay(patch, cam), gap, heat], axis=1)


def upscale(image: np.ndarray, scale: int = THUMB_SCALE) -> np.ndarray:
    """Nearest-neighbour enlargement: every pixel stays a visible square."""
    return np.repeat(np.repeat(np.asarray(image, np.uint8), scale, axis=0), scale, axis=1)


def png_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return data_uri(buffer.getvalue(), "image/png")


def data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
