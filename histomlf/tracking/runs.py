"""Opening runs and logging the common pieces: config params, datasets, figures, environment.

`mlflow run` opens a run and hands it to the entry point through `MLFLOW_RUN_ID`; `active_run`
attaches to it (never a second top-level run) and otherwise opens one in the `histomlf`
experiment, so `histomlf train` behaves the same without MLflow Projects.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from histomlf.config import TrainConfig
from histomlf.environment import environment_facts, pip_freeze
from histomlf.schema import Artifact, MlflowTag, Tag
from histomlf.tracking.probe import probe_tracking

DEFAULT_EXPERIMENT_NAME = "histomlf"
# MLflow 3's UI picks an experiment's layout from this tag; untagged, it opened on the GenAI
# overview (traces, tokens) instead of the training runs.
EXPERIMENT_KIND_TAG = MlflowTag.EXPERIMENT_KIND
TRAINING_KIND = "custom_model_development"
NOTE_TAG = MlflowTag.NOTE


def experiment_link(experiment_id: str) -> str:
    """The UI path that opens an experiment on its runs table.

    MLflow 3.17's UI derives an experiment's layout from a global GenAI / model-training
    switch (`workflowType`, GenAI unless chosen; kept in the browser), not from the
    experiment's kind tag, so the link names the model-training workflow itself.
    """
    return f"#/experiments/{experiment_id}?workflowType=machine_learning"


def ensure_experiment_kind(experiment_id: str) -> None:
    """Tag the experiment as model development unless its kind is already set (a user's
    choice is never overwritten)."""
    client = MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


def is_generated_name(name: str | None) -> bool:
    """Whether `name` is one MLflow made up (`brave-fox-123`), not one a user chose."""
    from mlflow.utils import name_utils

    parts = (name or "").split("-")
    if len(parts) != 3 or not parts[2].isdigit():
        return False
    return (
        parts[0] in {p.lower() for p in name_utils._GENERATOR_PREDICATES}
        and parts[1] in {n.lower() for n in name_utils._GENERATOR_NOUNS}
    )


def name_run(run_id: str, name: str) -> None:
    """Give the run `name` unless a user already named it (`mlflow run --run-name`)."""
    client = MlflowClient()
    current = client.get_run(run_id).info.run_name
    if not current or is_generated_name(current):
        client.update_run(run_id, name=name)


def set_note(markdown: str, run_id: str | None = None) -> None:
    """The run's description (its Overview in the MLflow UI), in Markdown."""
    if run_id is None:
        mlflow.set_tag(NOTE_TAG, markdown)
    else:
        MlflowClient().set_tag(run_id, NOTE_TAG, markdown)


@contextlib.contextmanager
def active_run(
    run_name: str | None = None, tags: Mapping[str, str] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Attach to the run `mlflow run` opened, or open one; system metrics are sampled.

    The run gets `run_name` unless a user named it (`mlflow run` opens runs with a random
    name, which is replaced), and its experiment is tagged as a training experiment.

    A remote tracking server is probed first (short timeouts, no long retries), and once the
    run is open an artifact write is probed too, so an unreachable server, a wrong login or
    an unwritable artifact store stop the command within seconds with one line.
    """
    probe_tracking()
    if not os.environ.get("MLFLOW_RUN_ID") and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT_NAME))
    with mlflow.start_run(
        run_name=run_name if not os.environ.get("MLFLOW_RUN_ID") else None,
        tags=dict(tags or {}),
        log_system_metrics=True,
    ) as run:
        probe_tracking(run_id=run.info.run_id)
        ensure_experiment_kind(run.info.experiment_id)
        if run_name:
            name_run(run.info.run_id, run_name)
        yield run


@contextlib.contextmanager
def nested_run(
    run_name: str, tags: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """A child run of the active run, opened with `tags` and `params` (values as strings)."""
    with mlflow.start_run(run_name=run_name, nested=True, tags=dict(tags or {})) as run:
        if params:
            mlflow.log_params({k: "" if v is None else str(v) for k, v in params.items()})
        yield run


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log `metrics` in the active run (at `step` when given)."""
    mlflow.log_metrics(dict(metrics), step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set `tags` (values as strings) on the active run."""
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_table(frame, artifact_file: str) -> None:
    """A DataFrame as an MLflow table artifact (`.json`, shown as a table in the UI)."""
    mlflow.log_table(frame, artifact_file)


def _same_value(logged: str, value: Any) -> bool:
    if str(value) == logged:
        return True
    try:
        return float(logged) == float(value)
    except (TypeError, ValueError):
        return logged.strip().lower() == str(value).strip().lower()


def log_resolved_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    """Log every resolved value, skipping keys `mlflow run` already logged with the same value.

    `mlflow run` logs `-P` values (and declared defaults) before the entry point starts and
    refuses changes. A key logged as the same value in other words (`1e-3` vs `0.001`) is
    skipped; one whose declared default was overridden by the experiment file (an empty
    `data_dir` default, say) keeps its param and gets the value that ran as the tag
    `histomlf.resolved.<key>`.
    """
    run_id = run_id or mlflow.active_run().info.run_id
    logged = MlflowClient().get_run(run_id).data.params
    fresh, resolved = {}, {}
    for key, value in params.items():
        text = "" if value is None else str(value)
        if key not in logged:
            fresh[key] = text
        elif not _same_value(logged[key], value):
            resolved[Tag.resolved(key)] = text
    if fresh:
        mlflow.log_params(fresh)
    if resolved:
        mlflow.set_tags(resolved)


def log_config(config: TrainConfig, extra: Mapping[str, Any] | None = None) -> None:
    """Params for every resolved key plus the resolved config as `config/resolved.yaml`."""
    params = config.as_params()
    log_resolved_params(params)
    document = {**params, **(dict(extra) if extra else {})}
    mlflow.log_text(yaml.safe_dump(document, sort_keys=True), Artifact.CONFIG)


def log_dataset(
    manifest, *, source: str, digest: str, name: str, context: str = "training"
) -> None:
    """Log the manifest as an MLflow dataset input carrying histomlf's whole-manifest digest."""
    columns = [c for c in ("patient_id", "x", "y", "label", "width", "height") if c in manifest]
    dataset = mlflow.data.from_pandas(
        manifest[columns].head(1000), source=source, targets="label", name=name, digest=digest[:32]
    )
    mlflow.log_input(
        dataset,
        context=context,
        tags={Tag.DATA_DIGEST: digest, "patches": str(len(manifest))},
    )


def log_figure(figure, artifact_file: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


def log_frame(frame, artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        frame.to_csv(path, index=False)
        mlflow.log_artifact(
            str(path), str(Path(artifact_file).parent) if "/" in artifact_file else None
        )


def log_environment() -> dict[str, Any]:
    """Versions, devices, git commit and dirty flag as tags + `environment/` artifacts."""
    facts = environment_facts()
    mlflow.log_dict(facts, Artifact.ENVIRONMENT)
    mlflow.log_text(pip_freeze(), Artifact.PIP_FREEZE)
    tags = {Tag.DEVICES: ",".join(facts["devices"])}
    if "git_commit" in facts:
        tags[Tag.GIT_COMMIT] = facts["git_commit"]
        tags[Tag.GIT_DIRTY] = str(facts["git_dirty"]).lower()
    mlflow.set_tags(tags)
    return facts


def log_json(payload: Mapping[str, Any], artifact_file: str) -> None:
    mlflow.log_text(json.dumps(payload, indent=2, sort_keys=True, default=float), artifact_file)
