"""The study's web page: a FastAPI app of plain HTML forms, server-rendered, no JavaScript.

Routes (all served by this one process, nothing from a CDN):

- `GET /` which model answers, and the two upload forms;
- `POST /predict` PNG/JPEG patches -> a table: thumbnail, probability, label, Grad-CAM;
- `POST /patient` a zip of one patient's folder -> the patient map, summary and a CSV;
- `POST /api/predict`, `POST /api/patient` the same as JSON (see `/docs`, `/openapi.json`);
- `GET /about` what the model is, how well it does on unseen patients, what it is not;
- `GET /api/model`, `GET /health`, `/static/style.css`.

Bad input never breaks a page: a bad file gets its own line while the others are scored; a
refused upload (nothing usable, a bad zip, too large) is a 400/413 page saying what was wrong.
Uploads are read in memory (Starlette spools a part over 1 MB to an anonymous temporary file,
closed and gone when the request ends); nothing is written anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from histomlf import __version__
from histomlf.evaluation.metrics import TABLED
from histomlf.evaluation.text import metric_with_interval
from histomlf.web import about
from histomlf.web.limits import MB, BodyLimit, RequestTooLarge
from histomlf.web.results import score_patches, score_patient
from histomlf.web.schemas import (
    ErrorAnswer,
    ModelSummary,
    PatientAnswer,
    PredictAnswer,
    model_summary,
    refused,
)
from histomlf.web.scorer import Scorer
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
            413: {"model": ErrorAnswer, "description": "the upload is over a documented cap"}}


def create_app(scorer: Scorer, *, mlflow_ui_url: str | None = None) -> FastAPI:
    """The app for one loaded model; `mlflow_ui_url` adds a link to the model's run."""
    limits = scorer.limits
    app = FastAPI(
        title="histomlf web",
        version=__version__,
        description="IDC probabilities, Grad-CAM and patient maps from the registered model "
        f"`{scorer.card.uri}`. A research tool, not a diagnostic device.",
    )
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["exact"] = lambda value: repr(float(value))
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    card = scorer.card
    context = {
        "card": card,
        "threshold": scorer.threshold,
        "run_url": card.run_url(mlflow_ui_url),
        "metrics": [(label, metric_with_interval(card.metrics, f"test_{name}"))
                    for name, label in MODEL_METRICS if f"test_{name}" in card.metrics],
        "patient_auc": card.metrics.get("test_patient_roc_auc"),
        "compared": {key: metric_with_interval(card.metrics, f"test_{key}")
                     for key, _ in about.COMPARED},
        "limits": limits,
        "max_bytes": scorer.max_bytes,
        "mb": MB,
        "version": __version__,
        "about": about,
    }

    def page(request: Request, name: str, code: int = 200, **values: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {**context, **values}, status_code=code)

    def refusal(request: Request, status: int, message: str, errors=()) -> Response:
        if request.url.path.startswith("/api/"):
            body = ErrorAnswer(detail=message, errors=refused(list(errors)))
            return JSONResponse(body.model_dump(), status_code=status)
        return page(request, "error.html", status, status=status, message=message,
                    errors=list(errors))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        message = str(error.detail)
        if error.status_code == 404:
            message = f"no page at {request.url.path}: start from the home page"
        elif error.status_code == 405:
            message = f"{request.method} is not how {request.url.path} is used: use its form"
        return refusal(request, error.status_code, message)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, error: UploadError) -> Response:
        return refusal(request, error.status, str(error), error.errors)

    async def reply_too_large(scope: dict[str, Any], error: HTTPException) -> Response:
        return refusal(Request(scope), error.status_code, str(error.detail))

    app.add_middleware(BodyLimit, limit=limits.request_bytes, reply=reply_too_large)

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

    async def patches_of(request: Request) -> Any:
        uploads = await read_files(request, FILES_FIELD)
        decoded = decode_files(uploads, max_bytes=scorer.max_bytes, max_pixels=scorer.max_pixels)
        if not decoded.names:
            raise UploadError(
                f"none of the {len(uploads)} file(s) is a usable patch", errors=decoded.errors
            )
        return decoded

    async def patient_of(request: Request) -> Any:
        uploads = await read_files(request, ZIP_FIELD)
        if len(uploads) != 1:
            raise UploadError(f"send one zip (one patient's folder), got {len(uploads)} files")
        return await run_in_threadpool(
            read_patient_zip, uploads[0][1], limits,
            max_bytes=scorer.max_bytes, max_pixels=scorer.max_pixels,
        )  # fmt: skip

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home(request: Request) -> HTMLResponse:
        return page(request, "home.html")

    @app.get("/about", response_class=HTMLResponse, include_in_schema=False)
    async def about_page(request: Request) -> HTMLResponse:
        return page(request, "about.html")

    @app.post("/predict", response_class=HTMLResponse, include_in_schema=False)
    async def predict_page(request: Request) -> HTMLResponse:
        decoded = await patches_of(request)
        results = await run_in_threadpool(score_patches, scorer, decoded, pictures=True)
        return page(request, "patches.html", results=results)

    @app.post("/patient", response_class=HTMLResponse, include_in_schema=False)
    async def patient_page(request: Request) -> HTMLResponse:
        files = await patient_of(request)
        results = await run_in_threadpool(score_patient, scorer, files, pictures=True)
        return page(request, "patient.html", results=results,
                    rows=results.predictions.to_dict("records"))

    @app.post("/api/predict", response_model=PredictAnswer, responses=REFUSALS,
              openapi_extra=_multipart(FILES_FIELD, many=True))
    async def api_predict(request: Request) -> PredictAnswer:
        """P(IDC) and label for each PNG/JPEG patch (field `files`, repeatable); a file that
        is not a usable patch is listed in `errors` and the others are scored."""
        decoded = await patches_of(request)
        results = await run_in_threadpool(score_patches, scorer, decoded, pictures=False)
        return PredictAnswer(
            model=model_summary(scorer),
            predictions=[{"file": r.file, "probability": r.probability, "label": r.label}
                         for r in results.rows],
            errors=refused(results.errors),
        )

    @app.post("/api/patient", response_model=PatientAnswer, responses=REFUSALS,
              openapi_extra=_multipart(ZIP_FIELD, many=False))
    async def api_patient(request: Request) -> PatientAnswer:
        """One patient's folder as a zip (field `file`; Kaggle layout or flat, Kaggle file
        names): every patch's P(IDC) and the patient's summary."""
        files = await patient_of(request)
        results = await run_in_threadpool(score_patient, scorer, files, pictures=False)
        columns = ["file", "x", "y", "label", "probability", "predicted"]
        return PatientAnswer(
            model=model_summary(scorer),
            summary=results.summary,
            predictions=results.predictions[columns].to_dict("records"),
            errors=refused(results.errors),
        )

    @app.get("/api/model", response_model=ModelSummary)
    async def api_model() -> ModelSummary:
        """Which registered model answers this page."""
        return model_summary(scorer)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)  # no icon; spares every browser visit a 404 page

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": card.uri}

    return app
