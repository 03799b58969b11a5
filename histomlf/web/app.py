"""The study's web page: a FastAPI app of plain HTML forms, server-rendered, no JavaScript.

Routes (all served by this one process, nothing from a CDN):

- `GET /` which model answers, and the two upload forms;
- `POST /predict` PNG/JPEG patches -> a table: thumbnail, probability, label, Grad-CAM;
- `POST /patient` a zip of one patient's folder -> the patient map, summary and a CSV;
- `POST /api/predict`, `POST /api/patient` the same as JSON (see `/docs`, `/openapi.json`);
- `GET /slide`, `POST /slide` one whole-slide image, streamed to a private file and scored as
  a background job; `GET /slide/{job}` its page (refreshes itself until the heatmap, tissue QC,
  summary and downloads are there), `GET /slide/{job}/{file}` its outputs; `POST /api/slide`,
  `GET /api/slide/{job}` the same as JSON (`slide_jobs.py`, `slide_upload.py`);
- `GET /about` what the model is, how well it does on unseen patients, what it is not;
- `GET /api/model`, `GET /health`, `/static/style.css`, `/docs` (Swagger, from a CDN).

Bad input never breaks a page: a bad file gets its own line while the others are scored; a
refused upload (nothing usable, a bad zip, too large) is a 400/413 page saying what was wrong.
Patch uploads are read in memory (Starlette spools a part over 1 MB to an anonymous temporary file,
closed and gone when the request ends); nothing is written anywhere else. A slide is
streamed to disk as it arrives (its own cap, 200 MB by default) and deleted after its job.

Under load: decoding, scoring and drawing run in worker threads, never on the event loop, so
`/health` and the plain pages answer while an upload is scored; at most `scoring_slots`
scoring requests are in flight and one more is a 503 with `Retry-After` (`security.py`).
Every response carries the security headers (`security.SecurityHeaders`). The page has no
login: it binds 127.0.0.1 unless told otherwise (README: behind a reverse proxy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from histomlf import __version__
from histomlf.evaluation.metrics import TABLED
from histomlf.evaluation.text import metric_with_interval
from histomlf.slides.predict import SlideModel
from histomlf.slides.reader import SLIDE_SUFFIXES
from histomlf.web import about
from histomlf.web.limits import MB, BodyLimit, RequestTooLarge
from histomlf.web.results import (
    display_errors,
    display_message,
    score_patches,
    score_patient,
)
from histomlf.web.schemas import (
    ErrorAnswer,
    ModelSummary,
    PatientAnswer,
    PredictAnswer,
    SlideJobAnswer,
    model_summary,
    refused,
)
from histomlf.web.scorer import Scorer
from histomlf.web.security import (
    DEFAULT_SCORING_SLOTS,
    DEFAULT_SLIDE_MB,
    DEFAULT_SLIDE_SLOTS,
    Busy,
    ScoringSlots,
    SecurityHeaders,
    docs_policy,
)
from histomlf.web.slide_jobs import (
    FIGURES,
    FILES,
    SlideBusy,
    SlideJob,
    SlideJobs,
    figure,
    finite,
    slide_cap_bytes,
    slide_model_of,
)
from histomlf.web.slide_upload import SLIDE_FIELD, save_slide
from histomlf.web.uploads import UploadError, decode_files, read_patient_zip

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
FILES_FIELD, ZIP_FIELD = "files", "file"

MODEL_METRICS = tuple((m.name, m.prose) for m in TABLED)


def _multipart(field: str, many: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "format": "binary"}
    if many:
        schema = {"type": "array", "items": schema}
    body = {"type": "object", "required": [field], "properties": {field: schema}}
    return {"requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": body}}}}


REFUSALS = {400: {"model": ErrorAnswer, "description": "nothing usable; the detail says why"},
            413: {"model": ErrorAnswer, "description": "the upload is over a documented cap"},
            503: {"model": ErrorAnswer, "description": "busy with as many uploads as it scores "
                  "at once; try again after `Retry-After` seconds"}}


def create_app(
    scorer: Scorer,
    *,
    mlflow_ui_url: str | None = None,
    scoring_slots: int = DEFAULT_SCORING_SLOTS,
    slide_max_mb: int = DEFAULT_SLIDE_MB,
    slide_slots: int = DEFAULT_SLIDE_SLOTS,
    slide_dir: Path | None = None,
    slide_model: SlideModel | None = None,
) -> FastAPI:
    """The app for one loaded model; `mlflow_ui_url` adds a link to the model's run;
    `scoring_slots` scoring requests at most in flight (one more answers 503).

    Slides: at most `slide_max_mb` MB per slide file and `slide_slots` slides at once (apart
    from the scoring slots); outputs under `slide_dir` (a private temporary folder by
    default). `slide_model` replaces the scorer's own (tests); without a recorded scale
    (`patch_mpp`) the slide form says slides are off."""
    limits = scorer.limits
    slots = ScoringSlots(scoring_slots)
    slide_max_bytes = slide_cap_bytes(slide_max_mb)
    slides_off = None
    if slide_model is None:
        slide_model, slides_off = slide_model_of(scorer)
    slide_jobs = SlideJobs(slide_model, slots=slide_slots, root=slide_dir)
    app = FastAPI(
        title="histomlf web",
        version=__version__,
        description="IDC probabilities, Grad-CAM and patient maps from the registered model "
        f"`{scorer.card.uri}`. A research tool, not a diagnostic device.",
        docs_url=None,  # served below, so its policy can name its inline script's hash
        redoc_url=None,  # undocumented, and it would need three more origins (fonts, CDN)
    )
    app.state.slide_jobs = slide_jobs
    docs_html = get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI")
    # Outermost, around Starlette's own error middleware: a 500 carries the headers too.
    build_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityHeaders(  # type: ignore[method-assign]
        build_stack(), policies={"/docs": docs_policy(docs_html.body.decode())}
    )
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["exact"] = lambda value: repr(float(value))
    templates.env.globals.update(slide_figures=FIGURES, slide_figure=figure)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    card = scorer.card
    context = {
        "card": card,
        "threshold": scorer.threshold,
        "run_url": card.run_url(mlflow_ui_url),
        "metrics": [(label, metric_with_interval(card.metrics, f"{card.scope}_{name}"))
                    for name, label in MODEL_METRICS if f"{card.scope}_{name}" in card.metrics],
        "patient_auc": card.metrics.get(f"{card.scope}_patient_roc_auc"),
        "compared": {key: metric_with_interval(card.metrics, f"{card.scope}_{key}")
                     for key, _ in about.COMPARED},
        "limits": limits,
        "scoring_slots": scoring_slots,
        "max_bytes": scorer.max_bytes,
        "mb": MB,
        "version": __version__,
        "about": about,
        "slide_model": slide_model,
        "slide_suffixes": SLIDE_SUFFIXES,
        "slides_off": slides_off,
        "slide_max_mb": slide_max_mb,
        "slide_slots": slide_slots,
        "slide_jobs": slide_jobs,
    }

    def page(request: Request, name: str, code: int = 200, **values: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {**context, **values}, status_code=code)

    def refusal(request: Request, status: int, message: str, errors=(),
                headers: dict[str, str] | None = None) -> Response:
        message, errors = display_message(message), display_errors(list(errors))
        if request.url.path.startswith("/api/"):
            body = ErrorAnswer(detail=message, errors=refused(errors))
            return JSONResponse(body.model_dump(), status_code=status, headers=headers)
        answer = page(request, "error.html", status, status=status, message=message,
                      errors=errors)
        answer.headers.update(headers or {})
        return answer

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        message = str(error.detail)
        if error.status_code == 404 and message == "Not Found":  # no route (ours say more)
            message = f"no page at {request.url.path}: start from the home page"
        elif error.status_code == 405:
            message = f"{request.method} is not how {request.url.path} is used: use its form"
        return refusal(request, error.status_code, message)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, error: UploadError) -> Response:
        return refusal(request, error.status, str(error), error.errors)

    @app.exception_handler(Busy)
    async def busy(request: Request, error: Busy) -> Response:
        return refusal(request, 503, str(error),
                       headers={"Retry-After": str(error.retry_after)})

    @app.exception_handler(SlideBusy)
    async def slide_busy(request: Request, error: SlideBusy) -> Response:
        return refusal(request, 503, str(error),
                       headers={"Retry-After": str(error.retry_after)})

    async def reply_too_large(scope: dict[str, Any], error: HTTPException) -> Response:
        return refusal(Request(scope), error.status_code, str(error.detail))

    # The slide routes' own cap: the file plus room for the multipart framing.
    slide_body = slide_max_bytes + MB
    app.add_middleware(BodyLimit, limit=limits.request_bytes, reply=reply_too_large,
                       by_path={"/slide": slide_body, "/api/slide": slide_body})

    async def read_files(request: Request, field: str) -> list[tuple[str, bytes]]:
        """`(file name, bytes)` of every file in the multipart field (empty picks dropped)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UploadError(
                f"send the files as multipart/form-data in the field {field!r} "
                "(the form on the home page does)"
            )
        try:
            async with request.form(max_files=limits.files, max_fields=16) as form:
                uploads = []
                for item in form.getlist(field):
                    if not isinstance(item, UploadFile):
                        continue
                    data = await item.read()
                    if item.filename or data:
                        uploads.append((item.filename or "(unnamed file)", data))
        except RequestTooLarge:
            raise
        except HTTPException as error:
            if "Too many files" in str(error.detail):
                raise UploadError(
                    f"too many files in one upload: more than {limits.files:,}; "
                    "send them in parts (or one patient's folder as a zip)",
                    status=413,
                ) from None
            raise UploadError(f"unreadable upload: {error.detail}") from None
        if not uploads:
            raise UploadError(f"no file in the field {field!r}: choose at least one")
        return uploads

    # The blocking halves of each scoring route, run in a worker thread (decode, score, draw,
    # render); the async handlers only read the body and hold a scoring slot.

    def patches_of(uploads: list[tuple[str, bytes]]) -> Any:
        decoded = decode_files(uploads, max_bytes=scorer.max_bytes, max_pixels=scorer.max_pixels)
        if not decoded.names:
            raise UploadError(
                f"none of the {len(uploads)} file(s) is a usable patch", errors=decoded.errors
            )
        return decoded

    def patient_of(uploads: list[tuple[str, bytes]]) -> Any:
        if len(uploads) != 1:
            raise UploadError(f"send one zip (one patient's folder), got {len(uploads)} files")
        return read_patient_zip(uploads[0][1], limits, max_bytes=scorer.max_bytes,
                                max_pixels=scorer.max_pixels)

    def predict_html(request: Request, uploads: list[tuple[str, bytes]]) -> HTMLResponse:
        results = score_patches(scorer, patches_of(uploads), pictures=True)
        return page(request, "patches.html", results=results)

    def patient_html(request: Request, uploads: list[tuple[str, bytes]]) -> HTMLResponse:
        results = score_patient(scorer, patient_of(uploads), pictures=True)
        return page(request, "patient.html", results=results,
                    rows=results.predictions.to_dict("records"))

    def predict_json(uploads: list[tuple[str, bytes]]) -> PredictAnswer:
        results = score_patches(scorer, patches_of(uploads), pictures=False)
        return PredictAnswer(
            model=model_summary(scorer),
            predictions=[{"file": r.file, "probability": r.probability, "label": r.label}
                         for r in results.rows],
            errors=refused(results.errors),
        )

    def patient_json(uploads: list[tuple[str, bytes]]) -> PatientAnswer:
        results = score_patient(scorer, patient_of(uploads), pictures=False)
        columns = ["file", "x", "y", "label", "probability", "predicted"]
        return PatientAnswer(
            model=model_summary(scorer),
            summary=results.summary,
            predictions=results.predictions[columns].to_dict("records"),
            errors=refused(results.errors),
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home(request: Request) -> HTMLResponse:
        return page(request, "home.html")

    @app.get("/about", response_class=HTMLResponse, include_in_schema=False)
    async def about_page(request: Request) -> HTMLResponse:
        return page(request, "about.html")

    @app.post("/predict", response_class=HTMLResponse, include_in_schema=False)
    async def predict_page(request: Request) -> HTMLResponse:
        async with slots.take():
            uploads = await read_files(request, FILES_FIELD)
            return await run_in_threadpool(predict_html, request, uploads)

    @app.post("/patient", response_class=HTMLResponse, include_in_schema=False)
    async def patient_page(request: Request) -> HTMLResponse:
        async with slots.take():
            uploads = await read_files(request, ZIP_FIELD)
            return await run_in_threadpool(patient_html, request, uploads)

    @app.post("/api/predict", response_model=PredictAnswer, responses=REFUSALS,
              openapi_extra=_multipart(FILES_FIELD, many=True))
    async def api_predict(request: Request) -> PredictAnswer:
        """P(IDC) and label for each PNG/JPEG patch (field `files`, repeatable); a file that
        is not a usable patch is listed in `errors` and the others are scored. File names are
        shown at most 80 characters long (an ellipsis in the middle). 503 with `Retry-After`
        while the page is busy with as many uploads as it scores at once."""
        async with slots.take():
            uploads = await read_files(request, FILES_FIELD)
            return await run_in_threadpool(predict_json, uploads)

    @app.post("/api/patient", response_model=PatientAnswer, responses=REFUSALS,
              openapi_extra=_multipart(ZIP_FIELD, many=False))
    async def api_patient(request: Request) -> PatientAnswer:
        """One patient's folder as a zip (field `file`; Kaggle layout or flat, Kaggle file
        names): every patch's P(IDC) and the patient's summary. 503 with `Retry-After` while
        the page is busy with as many uploads as it scores at once."""
        async with slots.take():
            uploads = await read_files(request, ZIP_FIELD)
            return await run_in_threadpool(patient_json, uploads)

    # ------------------------------------------------------------- whole-slide images

    async def take_slide(request: Request) -> SlideJob:
        """Stream the upload to the job's private folder, check OpenSlide opens it at the
        model's scale, start the job. The slot is taken before the first body byte."""
        if slide_jobs.model is None:
            raise UploadError(slides_off or "slides are off on this page")
        with slide_jobs.reserve() as reservation:
            saved = await save_slide(request.headers.get("content-type", ""), request.stream(),
                                     reservation.folder / "upload", slide_max_bytes)
            await run_in_threadpool(slide_jobs.check, saved.path, saved.name)
            return slide_jobs.start(reservation, saved)

    def job_or_404(job_id: str) -> SlideJob:
        job = slide_jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no slide job {job_id[:40]}: it expired or never "
                                "existed; upload the slide again")
        return job

    def job_answer(job: SlideJob) -> SlideJobAnswer:
        done = job.state == "done"
        return SlideJobAnswer(
            job=job.id, state=job.state, slide=job.name, size_bytes=job.size_bytes,
            status_url=f"/api/slide/{job.id}", page_url=f"/slide/{job.id}",
            tiles_done=job.tiles_done, tiles_total=job.tiles_total, error=job.error,
            summary={k: finite(v) for k, v in job.summary.items()} if done else None,
            files={name: f"/slide/{job.id}/{name}" for name in FILES} if done else {},
        )  # fmt: skip

    @app.get("/slide", response_class=HTMLResponse, include_in_schema=False)
    async def slide_form(request: Request) -> HTMLResponse:
        return page(request, "slide_form.html")

    @app.post("/slide", include_in_schema=False)
    async def slide_upload(request: Request) -> Response:
        job = await take_slide(request)
        return RedirectResponse(f"/slide/{job.id}", status_code=303)

    @app.get("/slide/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    async def slide_page(request: Request, job_id: str) -> HTMLResponse:
        job = job_or_404(job_id)
        return page(request, "slide_job.html", job=job, s=job.summary or {},
                    refresh_s=1 if job.tiles_total is None else 2, files=FILES)

    @app.get("/slide/{job_id}/{name}", include_in_schema=False)
    async def slide_file(job_id: str, name: str) -> Response:
        job = job_or_404(job_id)
        path = slide_jobs.file(job, name)
        if path is None:
            raise HTTPException(404, f"no file {name[:40]} for this slide (yet)")
        inline = FILES[name] == "image/png"
        return FileResponse(path, media_type=FILES[name], filename=f"{job.id[:8]}-{name}",
                            content_disposition_type="inline" if inline else "attachment")

    @app.post("/api/slide", status_code=202, response_model=SlideJobAnswer, responses=REFUSALS,
              openapi_extra=_multipart(SLIDE_FIELD, many=False))
    async def api_slide(request: Request) -> SlideJobAnswer:
        """One whole-slide image (field `file`; any format OpenSlide reads as one file: SVS,
        generic tiled TIFF, NDPI, ...), streamed to disk, at most the page's slide cap (413
        past it, without reading the rest). 415/422 when OpenSlide cannot open it or it is
        not at a usable scale; else 202 and a job to poll at `status_url`. 503 with
        `Retry-After` while the slide slots are busy. Not tracked in MLflow."""
        return job_answer(await take_slide(request))

    @app.get("/api/slide/{job_id}", response_model=SlideJobAnswer,
             responses={404: {"model": ErrorAnswer, "description": "no such job (expired)"}})
    async def api_slide_job(job_id: str) -> SlideJobAnswer:
        """A slide job's state, progress (tiles scored of total), and once done its summary
        and output URLs (heatmap.png, tissue.png, tiles.csv, tiles.geojson,
        idc_regions.geojson, summary.json)."""
        return job_answer(job_or_404(job_id))

    @app.get("/api/model", response_model=ModelSummary)
    async def api_model() -> ModelSummary:
        """Which registered model answers this page."""
        return model_summary(scorer)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_html.body)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)  # no icon; spares every browser visit a 404 page

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": card.uri}

    return app
