"""What a page says about the model that answers: the registry's and the run's record.

`describe_model(model_uri)` reads, once, the registered version behind `models:/NAME@ALIAS` or
`models:/NAME/VERSION` (aliases, tags with the data and split digests) and the run that produced
it (backbone, test metrics with their patient-bootstrap intervals, split sizes). A `runs:/` or
`models:/m-...` URI has no registry record; the card then holds what the run says. The MLflow
calls are `histomlf.tracking.queries`'; this module builds the card from what they return.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from histomlf.schema import ModelMeta, RunKind, Tag, run_kind
from histomlf.tracking.queries import (
    RunNotFound,
    StoredRun,
    find_run,
    model_run_id,
    registered_version,
)

_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
_SPLIT_SIZE = re.compile(r"(train|val|test)_(patients|patches|positives)")
_DIGEST_TAGS = {ModelMeta.DATA_DIGEST: Tag.DATA_DIGEST, ModelMeta.SPLIT_DIGEST: Tag.SPLIT_DIGEST}
_SEARCH_DATA_TAGS = (Tag.DATA_DIGEST, Tag.SPLIT_DIGEST, Tag.DATA_SOURCE)


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
    """The run's `<scope>_*` metrics (`*_ci_low` / `*_ci_high` included)."""
    scope: str = "test"
    """`test` (a held-out test split) or `oof` (a CV-final ensemble: out-of-fold, every patient
    scored by the fold model that never saw it; it has no test split)."""
    oof_patients: str | None = None
    final: str | None = None
    """A CV-final model's kind: `ensemble` (the fold models' mean) or `refit` (one model
    trained on every patient); None for any other model."""
    calibration: str | None = None
    """`platt` when its P(IDC) passes a fitted Platt map, else why not (None: not asked)."""
    split_sizes: dict[str, str] = field(default_factory=dict)
    """`test_patients`, `test_patches`, `train_patients`... as logged (strings)."""

    def run_url(self, ui_url: str | None) -> str | None:
        """The run's page in the MLflow UI at `ui_url`, or None without a URL or a run."""
        if not ui_url or not self.run_id or not self.experiment_id:
            return None
        return f"{ui_url.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def describe_model(model_uri: str) -> ModelCard:
    """The card of `model_uri`; a `ModelCardError` when the registry has no such model."""
    match = _REGISTERED.match(model_uri)
    registry: dict = {}
    version_tags: dict[str, str] = {}
    try:
        if match:
            version = registered_version(match["name"], alias=match["alias"],
                                         version=match["version"])
            version_tags = dict(version.tags)
            run_id = version.run_id
            registry = {"name": version.name, "version": version.version,
                        "aliases": version.aliases}
        else:
            run_id = model_run_id(model_uri)
    except RunNotFound as error:
        raise ModelCardError(f"{model_uri}: {error}") from None
    run, run_tags = card_fields(run_id, _evaluated_run(run_id)) if run_id else ({}, {})
    digests = {key: version_tags.get(key) or run_tags.get(tag)
               for key, tag in _DIGEST_TAGS.items()}
    if not run.get("backbone"):
        run["backbone"] = version_tags.get(ModelMeta.MODEL)
    return ModelCard(uri=model_uri, **registry, **run, **digests)


def _evaluated_run(run_id: str) -> StoredRun | None:
    """The run, with a search winner's test evaluation and data from its search's parent.

    A search logs its winner's model in the winning trial's run, which holds validation
    numbers only; the parent run holds the winner's test scores, split sizes and digests.
    """
    run = find_run(run_id)
    if run is None or run_kind(run.tags) != RunKind.TUNE_TRIAL:
        return run
    parent = find_run(run.tags.get(Tag.SEARCH_ID, ""))
    if parent is None or parent.tags.get(Tag.BEST_RUN_ID) != run_id:
        return run
    tags = {**run.tags, **{k: v for k, v in parent.tags.items() if k in _SEARCH_DATA_TAGS}}
    sizes = {k: v for k, v in parent.params.items() if _SPLIT_SIZE.fullmatch(k)}
    return replace(run, params={**run.params, **sizes}, tags=tags,
                   metrics={**run.metrics, **parent.metrics})


def card_fields(run_id: str, run: StoredRun | None) -> tuple[dict, dict[str, str]]:
    """The card's fields from the run (just its id when it was deleted), and its tags."""
    if run is None:
        return {"run_id": run_id}, {}
    params, tags = run.params, run.tags
    fields = {
        "run_id": run_id,
        "run_name": run.name,
        "experiment_id": run.experiment_id,
        "backbone": params.get("model"),
        "weights": params.get("weights"),
        "data_source": tags.get(Tag.DATA_SOURCE),
        "final": params.get("final") if run_kind(tags) == RunKind.CV_FINAL else None,
        "calibration": params.get("calibration"),
        "split_sizes": {k: v for k, v in params.items() if _SPLIT_SIZE.fullmatch(k)},
        **scored_metrics(run.metrics),
    }
    return fields, dict(tags)


def scored_metrics(metrics: dict[str, float]) -> dict:
    """The card's scores: `test_*`, or for a run without them (a CV-final ensemble) its
    out-of-fold `oof_*` scores — never presented as a test split."""
    for scope in ("test", "oof"):
        scoped = {k: v for k, v in metrics.items() if k.startswith(f"{scope}_")}
        if scoped:
            return {"metrics": scoped, "scope": scope}
    return {"metrics": {}, "scope": "test"}
