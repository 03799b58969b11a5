"""What a page needs to say about the model that answers: the registry's and the run's record.

`describe_model(model_uri)` reads, once, the registered version behind `models:/NAME@ALIAS` or
`models:/NAME/VERSION` (aliases, tags with the data and split digests) and the run that produced
it (backbone, test metrics with their patient-bootstrap intervals, split sizes). A `runs:/` or
`models:/m-...` URI has no registry record; the card then holds what the run says. Credentials
(`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`) stay with MLflow's client: nothing here
reads or returns them, nor the tracking URI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from histomlf.schema import ModelMeta, Tag

_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
_SPLIT_SIZE = re.compile(r"(train|val|test)_(patients|patches|positives)")
_DIGEST_TAGS = {ModelMeta.DATA_DIGEST: Tag.DATA_DIGEST, ModelMeta.SPLIT_DIGEST: Tag.SPLIT_DIGEST}


class ModelCardError(ValueError):
    """The model URI names nothing the tracking server knows; one line."""


@dataclass(frozen=True)
class ModelCard:
    """The answering model's record, as the web page shows it."""

    uri: str
    name: str | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()
    run_id: str | None = None
    run_name: str | None = None
    experiment_id: str | None = None
    backbone: str | None = None
    weights: str | None = None
    data_source: str | None = None
    data_digest: str | None = None
    split_digest: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    """The run's `test_*` metrics (`*_ci_low` / `*_ci_high` included)."""
    split_sizes: dict[str, str] = field(default_factory=dict)
    """`test_patients`, `test_patches`, `train_patients`... as logged (strings)."""

    def run_url(self, ui_url: str | None) -> str | None:
        """The run's page in the MLflow UI at `ui_url`, or None without a URL or a run."""
        if not ui_url or not self.run_id or not self.experiment_id:
            return None
        return f"{ui_url.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def describe_model(model_uri: str) -> ModelCard:
    """The card of `model_uri`; a `ModelCardError` when the registry has no such model."""
    client = MlflowClient()
    match = _REGISTERED.match(model_uri)
    registry: dict = {}
    version_tags: dict[str, str] = {}
    if match:
        name = match["name"]
        try:
            if match["alias"]:
                version = client.get_model_version_by_alias(name, match["alias"])
            else:
                version = client.get_model_version(name, match["version"])
        except MlflowException as error:
            raise ModelCardError(f"{model_uri}: {_first_line(error)}") from None
        version_tags = dict(version.tags)
        run_id = version.run_id
        registry = {"name": name, "version": str(version.version),
                    "aliases": tuple(sorted(version.aliases or ()))}
    else:
        try:
            run_id = mlflow.models.get_model_info(model_uri).run_id
        except (MlflowException, OSError) as error:
            raise ModelCardError(f"{model_uri}: {_first_line(error)}") from None
    run, run_tags = _run_fields(client, run_id) if run_id else ({}, {})
    digests = {key: version_tags.get(key) or run_tags.get(tag)
               for key, tag in _DIGEST_TAGS.items()}
    if not run.get("backbone"):
        run["backbone"] = version_tags.get(ModelMeta.MODEL)
    return ModelCard(uri=model_uri, **registry, **run, **digests)


def _run_fields(client: MlflowClient, run_id: str) -> tuple[dict, dict[str, str]]:
    """The card's fields from the run, and the run's tags."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return {"run_id": run_id}, {}  # the run was deleted; the registry still serves the model
    params, tags = run.data.params, run.data.tags
    fields = {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "backbone": params.get("model"),
        "weights": params.get("weights"),
        "data_source": tags.get(Tag.DATA_SOURCE),
        "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("test_")},
        "split_sizes": {k: v for k, v in params.items() if _SPLIT_SIZE.fullmatch(k)},
    }
    return fields, dict(tags)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
