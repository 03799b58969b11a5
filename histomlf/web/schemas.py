"""The JSON API's answers, as pydantic models: FastAPI's OpenAPI page describes them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from histomlf.web.scorer import Scorer
from histomlf.web.uploads import FileError


class ModelSummary(BaseModel):
    """Which registered model answered."""

    uri: str
    name: str | None
    version: str | None
    aliases: list[str]
    run_id: str | None
    backbone: str | None
    threshold: float = Field(description="label = 1 (IDC) when probability >= threshold")
    data_digest: str | None
    split_digest: str | None


class Prediction(BaseModel):
    file: str
    probability: float = Field(description="P(IDC), unrounded")
    label: int = Field(description="1 = IDC, 0 = no IDC, at the model's threshold")


class RefusedFile(BaseModel):
    file: str
    message: str = Field(description="why this file was not scored")


class PredictAnswer(BaseModel):
    model: ModelSummary
    predictions: list[Prediction]
    errors: list[RefusedFile]


class PatientPrediction(BaseModel):
    file: str
    x: int
    y: int
    label: int = Field(description="the pathologist's label, from the file name")
    probability: float
    predicted: int


class PatientSummary(BaseModel):
    patient_id: str
    patches: int
    true_idc_share: float
    predicted_idc_share: float
    error_rate: float
    roc_auc: float | None = Field(description="None when the patient has one class only")


class PatientAnswer(BaseModel):
    model: ModelSummary
    summary: PatientSummary
    predictions: list[PatientPrediction]
    errors: list[RefusedFile]


class ErrorAnswer(BaseModel):
    detail: str
    errors: list[RefusedFile] = []


def model_summary(scorer: Scorer) -> ModelSummary:
    card = scorer.card
    return ModelSummary(
        uri=card.uri, name=card.name, version=card.version, aliases=list(card.aliases),
        run_id=card.run_id, backbone=card.backbone, threshold=scorer.threshold,
        data_digest=card.data_digest, split_digest=card.split_digest,
    )  # fmt: skip


def refused(errors: list[FileError]) -> list[RefusedFile]:
    return [RefusedFile(file=e.file, message=e.message) for e in errors]


class SlideJobAnswer(BaseModel):
    """A whole-slide job: poll `status_url` until `state` is `done` (or `failed`)."""

    job: str
    state: str = Field(description="queued | running | done | failed")
    slide: str = Field(description="the uploaded file name")
    size_bytes: int
    status_url: str
    page_url: str = Field(description="the same job as a page that refreshes itself")
    tiles_done: int
    tiles_total: int | None = Field(description="known once the tissue mask is made")
    error: str | None = Field(description="why the job failed, one line")
    summary: dict | None = Field(description="summary.json once done (NaN as null)")
    files: dict[str, str] = Field(description="download URL of each output, once done")
    tracked_in_mlflow: bool = Field(False, description="web slide runs are not tracked; "
                                    "`histomlf slide predict` records them")
