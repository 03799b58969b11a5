"""Whole-slide images on the web page: the served model as a `SlideModel`, and slides scored as
background jobs with their own slots.

A slide takes seconds to minutes, so `POST /slide` only streams the file to disk
(`slide_upload.py`), checks that OpenSlide opens it at the model's scale (a 4xx at once if not),
and starts a job; the page then refreshes itself (`<meta http-equiv="refresh">`, no
JavaScript) on the job's status URL until the outputs are there.

- Slots: at most `slots` slides are uploaded, queued or scored at once, apart from the patch
  scoring cap of `security.ScoringSlots`; one more is refused with 503 + `Retry-After` before
  its body is read. Tiles go through the same `Scorer` (and its lock) as patch uploads.
- Storage: one private folder (0700) per server, one subfolder per job holding the uploaded
  slide (deleted when the job ends, whatever the outcome) and the outputs of `predict_slide`.
  Finished jobs are expired after `ttl_s` and beyond the newest `keep` (checked at each new
  job and each status request), so the folder is bounded; the whole folder goes when the
  process exits. A job id is 128 random bits: the URL is the only key to a result.
- Not tracked in MLflow: the page is a viewer (`histomlf slide predict` records runs).
- Never read: the slide's label and macro images (they can carry patient identifiers).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histomlf.schema import SlideArtifact
from histomlf.slides.predict import SlideModel, SlideOptions, predict_slide
from histomlf.slides.reader import SlideError, open_slide, plan_read, slide_mpp
from histomlf.web.limits import MB
from histomlf.web.security import DEFAULT_SLIDE_SLOTS, MAX_SLIDE_MB, RETRY_AFTER_S
from histomlf.web.uploads import UploadError

log = logging.getLogger(__name__)

DEFAULT_KEEP_JOBS = 20
DEFAULT_TTL_S = 3600.0

FILES = {
    SlideArtifact.HEATMAP: "image/png",
    SlideArtifact.TISSUE: "image/png",
    SlideArtifact.TILES_GEOJSON: "application/geo+json",
    SlideArtifact.IDC_REGIONS_GEOJSON: "application/geo+json",
    SlideArtifact.TILES_CSV: "text/csv",
    SlideArtifact.SUMMARY: "application/json",
}
"""The outputs a job serves, by file name (nothing else in its folder is reachable)."""


def slide_model_of(scorer: Any) -> tuple[SlideModel | None, str | None]:
    """The page's loaded model as a `SlideModel` (tiles through `scorer.probabilities`, the
    same pyfunc and lock as patch uploads), or `(None, why)` when it records no scale."""
    from histomlf.tracking.slides import model_scale

    metadata = getattr(getattr(scorer.model, "metadata", None), "metadata", None)
    try:
        patch_px, patch_mpp = model_scale(metadata, None)
    except SlideError as error:
        return None, f"slides are off for this model: {error}".replace(
            "pass --patch-mpp", "score slides with `histomlf slide predict --patch-mpp`"
        )
    card = scorer.card
    return SlideModel(
        score=scorer.probabilities, threshold=scorer.threshold, patch_px=patch_px,
        patch_mpp=patch_mpp, uri=card.uri, name=card.name or "", version=card.version or "",
        batch_size=scorer.chunk,
    ), None  # fmt: skip


class SlideBusy(Exception):
    """Every slide slot is taken; the app answers 503 with `Retry-After`."""

    def __init__(self, slots: int) -> None:
        super().__init__(
            f"the page is busy with {slots} slide{'s' if slots != 1 else ''} (its limit at "
            f"once): try again in {RETRY_AFTER_S} s"
        )
        self.retry_after = RETRY_AFTER_S


@dataclass
class SlideJob:
    id: str
    name: str
    """The uploaded file name (display only)."""
    size_bytes: int
    folder: Path
    state: str = "queued"  # queued | running | done | failed
    tiles_done: int = 0
    tiles_total: int | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def out_dir(self) -> Path:
        return self.folder / "out"

    @property
    def upload_dir(self) -> Path:
        return self.folder / "upload"

    @property
    def ended(self) -> bool:
        return self.state in ("done", "failed")

    def progress(self, done: int, total: int) -> None:
        self.state = "running"
        self.tiles_done, self.tiles_total = done, total


@dataclass
class Reservation:
    folder: Path
    handed: bool = False


class SlideJobs:
    """The server's slide jobs: slots, a private folder, expiry (see the module docstring)."""

    def __init__(
        self,
        model: SlideModel | None,
        *,
        slots: int = DEFAULT_SLIDE_SLOTS,
        root: Path | None = None,
        keep: int = DEFAULT_KEEP_JOBS,
        ttl_s: float = DEFAULT_TTL_S,
        options: SlideOptions | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slide slots must be >= 1, got {slots}")
        self.model, self.slots, self.keep, self.ttl_s = model, slots, keep, ttl_s
        self.options = options or SlideOptions()
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="histomlf-web-slides-")
            root = Path(self._tmp.name)
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.jobs: dict[str, SlideJob] = {}
        self.busy = 0  # uploads + queued + running (under _lock: jobs end in their thread)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="slide")

    @contextlib.contextmanager
    def reserve(self) -> Iterator[Reservation]:
        """A slot and a fresh private job folder for one upload; `SlideBusy` when all are
        taken. `start` hands both to a job; otherwise the slot is freed on exit and the
        folder removed."""
        with self._lock:
            if self.busy >= self.slots:
                raise SlideBusy(self.slots)
            self.busy += 1
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
        (folder / "upload").mkdir(mode=0o700)
        reservation = Reservation(folder)
        try:
            yield reservation
        finally:
            if not reservation.handed:
                self._release()
                shutil.rmtree(folder, ignore_errors=True)

    def check(self, path: Path, shown_name: str) -> dict[str, Any]:
        """Open the slide and plan its read at the model's scale: the refusals a user should
        get at once, as `UploadError`s naming `shown_name` (the upload's own name): 415 for a
        file OpenSlide cannot open, 422 for one it opens but not at a usable scale (no µm/px,
        coarser than the model). Blocking."""
        model = self.model

        def refused(error: SlideError, status: int) -> UploadError:
            message = str(error)
            if path.name in message:
                message = message.replace(path.name, shown_name, 1)
            else:
                message = f"{shown_name}: {message}"
            return UploadError(message, status=status)

        try:
            slide = open_slide(path)
        except SlideError as error:
            raise refused(error, 415) from None
        try:
            mpp, _ = slide_mpp(slide, self.options.slide_mpp)
            plan = plan_read(mpp, tuple(slide.level_downsamples), model.patch_px, model.patch_mpp)
            width, height = slide.dimensions
        except SlideError as error:
            raise refused(error, 422) from None
        finally:
            slide.close()
        return {"width_px": width, "height_px": height, "slide_mpp": mpp, "level": plan.level}

    def start(self, reservation: Reservation, saved: Any) -> SlideJob:
        """Turn a reservation whose folder holds `saved` (a `SavedSlide`) into a running job;
        its slot is freed when the job ends."""
        self.prune()
        job = SlideJob(id=secrets.token_urlsafe(16), name=saved.name, size_bytes=saved.size,
                       folder=reservation.folder)
        reservation.handed = True
        with self._lock:
            self.jobs[job.id] = job

        def run() -> None:
            try:
                job.state = "running"
                result = predict_slide(saved.path, self.model, self.options, job.out_dir,
                                       progress=job.progress)
                job.summary = {**result.summary, "slide": job.name}
                job.state = "done"
            except SlideError as error:
                job.error, job.state = str(error), "failed"
            except Exception as error:  # noqa: BLE001 - shown on the job's page, logged here
                log.exception("slide job %s failed", job.id)
                line = " ".join(str(error).split())[:300] or type(error).__name__
                job.error, job.state = f"the slide could not be scored ({line})", "failed"
            finally:
                shutil.rmtree(job.upload_dir, ignore_errors=True)
                job.finished = time.time()
                self._release()

        self._pool.submit(run)
        return job

    def _release(self) -> None:
        with self._lock:
            self.busy -= 1

    def get(self, job_id: str) -> SlideJob | None:
        self.prune()
        with self._lock:
            return self.jobs.get(job_id)

    def prune(self, now: float | None = None) -> None:
        """Forget and delete finished jobs older than `ttl_s` and beyond the newest `keep`."""
        now = time.time() if now is None else now
        with self._lock:
            ended = sorted((j for j in self.jobs.values() if j.ended),
                           key=lambda j: j.finished or 0, reverse=True)
            gone = [j for i, j in enumerate(ended)
                    if i >= self.keep or now - (j.finished or now) > self.ttl_s]
            for job in gone:
                del self.jobs[job.id]
        for job in gone:
            shutil.rmtree(job.folder, ignore_errors=True)

    def file(self, job: SlideJob, name: str) -> Path | None:
        if job.state != "done" or name not in FILES:
            return None
        path = job.out_dir / name
        return path if path.is_file() else None


def slide_cap_bytes(mb: int) -> int:
    if not 1 <= mb <= MAX_SLIDE_MB:
        raise ValueError(f"the slide cap must be 1 to {MAX_SLIDE_MB:,} MB, got {mb}")
    return mb * MB


def finite(value: Any) -> Any:
    """A summary value for JSON and the page: NaN/inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


FIGURES = (
    ("Findings", "tissue_area_mm2", "Tissue area", "{:.2f} mm²"),
    ("Findings", "idc_area_mm2", "Predicted IDC area", "{:.2f} mm²"),
    ("Findings", "idc_share", "IDC share of the tissue", "{:.1%}"),
    ("Findings", "idc_foci", "IDC foci (connected positive tiles)", "{:,}"),
    ("Findings", "largest_focus_area_mm2", "Largest focus, area", "{:.2f} mm²"),
    ("Findings", "largest_focus_extent_mm", "Largest focus, longest extent", "{:.2f} mm"),
    ("Tiles", "tiles", "Tiles scored", "{:,}"),
    ("Tiles", "tiles_positive", "Tiles at or above the threshold", "{:,}"),
    ("Tiles", "tiles_dropped_tissue", "Skipped: glass / too little tissue", "{:,}"),
    ("Tiles", "tiles_dropped_ink", "Skipped: pen ink", "{:,}"),
    ("How it was read", "slide_mpp", "Slide resolution", "{:.3f} µm/px"),
    ("How it was read", "level", "Pyramid level read", "{}"),
    ("How it was read", "read_downsample", "Downsampled from that level by", "×{:.2f}"),
    ("How it was read", "threshold", "Decision threshold", "{:.3f}"),
    ("How it was read", "seconds", "Time to score", "{:.1f} s"),
)
"""The summary figures the job page shows: (group, summary.json key, label, format)."""


def figure(summary: dict[str, Any], key: str, fmt: str) -> str:
    value = summary.get(key)
    if key.startswith("largest_focus") and summary.get("idc_foci") == 0:
        return "none (no IDC focus)"
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)
