"""The slide recipe: `histomlf slide predict MODEL_URI SLIDE|FOLDER --out DIR`, tracked.

Each slide is scored by `histomlf.slides.predict.predict_slide` (a plain function of the slide
path, the model, the options and the output folder) into `OUT/<slide stem>/` for a folder or
`OUT/` for one slide, inside a `slide` run; a folder gets a `slide-batch` parent run and a
`slides.csv` with one row per slide, failures included with their reason, so one unreadable
slide never stops the others.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histomlf.schema import SlideArtifact, Tag
from histomlf.slides.predict import SlideOptions, SlideResult, predict_slide
from histomlf.slides.reader import SlideError, find_slides
from histomlf.tracking import slides as tracked

FOLDER_COLUMNS = (
    "slide", "status", "error", "slide_sha256", "slide_mpp", "level", "tiles", "tiles_total",
    "tiles_dropped_tissue", "tiles_dropped_ink", "tiles_positive", "tissue_area_mm2",
    "idc_area_mm2", "idc_share", "idc_foci", "largest_focus_area_mm2", "largest_focus_extent_mm",
    "seconds", "run_id",
)  # fmt: skip

ProgressFactory = Callable[[Path, int, int], Any]


@dataclass
class SlideBatchResult:
    """What `predict_slides` did: one entry per slide (summary or error) and the run ids."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    run_id: str = ""
    table: Path | None = None

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["status"] != "ok"]


def predict_slides(
    model_uri: str,
    source: str | Path,
    out: str | Path,
    options: SlideOptions,
    *,
    patch_mpp: float | None = None,
    progress: ProgressFactory | None = None,
) -> SlideBatchResult:
    """Score one slide file or every slide in a folder with `model_uri`, tracked in MLflow."""
    source, out = Path(source), Path(out)
    slides = find_slides(source)
    model = tracked.load_slide_model(model_uri, patch_mpp=patch_mpp)
    params = {**options.as_params(), "patch_mpp": model.patch_mpp, "patch_px": model.patch_px}
    result = SlideBatchResult()
    if source.is_file():
        with tracked.slide_run(model, source, params, nested=False) as run_id:
            scored = predict_slide(source, model, options, out, progress=_bind(progress, source),
                                   sha256=tracked.run_tag(run_id, Tag.SLIDE_SHA256))
            tracked.log_slide_result(scored)
        result.rows.append(_row(source, scored, run_id))
        result.run_id = run_id
        return result

    with tracked.batch_run(model, str(source), params) as parent_id:
        result.run_id = parent_id
        for slide in slides:
            run_id = ""
            try:
                with tracked.slide_run(model, slide, params, nested=True) as run_id:
                    scored = predict_slide(
                        slide, model, options, out / slide.stem, progress=_bind(progress, slide),
                        sha256=tracked.run_tag(run_id, Tag.SLIDE_SHA256),
                    )
                    tracked.log_slide_result(scored)
                result.rows.append(_row(slide, scored, run_id))
            except SlideError as error:
                result.rows.append(
                    {"slide": slide.name, "status": "failed", "error": str(error), "run_id": run_id}
                )
        result.table = write_folder_table(result.rows, out / SlideArtifact.FOLDER_SUMMARY)
        tracked.log_folder_table(result.table)
    return result


def _bind(progress: ProgressFactory | None, slide: Path):
    if progress is None:
        return None
    return lambda done, total: progress(slide, done, total)


def _row(slide: Path, scored: SlideResult, run_id: str) -> dict[str, Any]:
    return {**scored.summary, "slide": slide.name, "status": "ok", "error": "", "run_id": run_id}


def write_folder_table(rows: list[dict[str, Any]], path: Path) -> Path:
    """`slides.csv`: one row per slide with its summary figures, or its failure and reason."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FOLDER_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
