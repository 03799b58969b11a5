"""The model registry's MLflow calls: register each trained model, apply the gate, move aliases.

Aliases, not stages (deprecated in MLflow 3). `models:/NAME@champion` is what gets served;
`challenger` marks the latest model that was registered but not promoted. Who becomes champion
is the gate's policy, a pure function (`histomlf.evaluation.gate.decide`); this module reads
what it needs from the registry, writes its verdict on the version as tags (`gate_reason`...),
so the registry explains itself, and offers `promote` / `demote` for the human decisions.
"""

from __future__ import annotations

import getpass
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from histomlf.evaluation.gate import (
    CHALLENGER,
    CHAMPION,
    DIGEST_KEYS,
    GateDecision,
    RegistryError,
    decide,
    higher_is_better,
    version_description,
)
from histomlf.schema import MlflowTag, VersionTag


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as `histomlf registry list` shows it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    created: str
    run_id: str | None
    source: str
    tags: dict[str, str] = field(default_factory=dict)


def register_and_gate(
    run_id: str | None,
    model_uri: str,
    name: str,
    *,
    gate_metric: str,
    new_score: float,
    digests: Mapping[str, str],
    tags: Mapping[str, str],
    score_champion: Callable[[str], float],
    metrics: Mapping[str, float] | None = None,
) -> GateDecision:
    """Register `model_uri` as a new version of `name` and decide `champion` vs `challenger`.

    The version's description states the verdict and, from `metrics`, the headline test
    metrics with their intervals.

    `score_champion(model_uri)` re-scores the current champion on the new model's split; it is
    only called when both digests match. A champion that cannot be re-scored, a NaN score or
    different digests never lose their alias automatically.
    """
    higher_is_better(gate_metric)  # refuse an unknown metric before registering anything
    missing = [key for key in DIGEST_KEYS if not digests.get(key)]
    if missing:
        raise RegistryError(f"digests must give {', '.join(DIGEST_KEYS)}; missing {missing}")
    client = MlflowClient()
    version_tags = {
        **{key: str(value) for key, value in tags.items()},
        **{key: str(digests[key]) for key in DIGEST_KEYS},
        VersionTag.GATE_METRIC: gate_metric,
        VersionTag.GATE_SCORE: repr(float(new_score)),
    }
    if run_id:
        version_tags[VersionTag.RUN_ID] = run_id
    version_tags.setdefault(VersionTag.GIT_COMMIT, _run_git_commit(client, run_id))
    registered = mlflow.register_model(model_uri, name, tags=version_tags)
    version = str(registered.version)

    decision = _decide(
        client, name, version, gate_metric, float(new_score), digests, score_champion
    )
    gate_tags = {
        VersionTag.GATE_DECISION: decision.alias,
        VersionTag.GATE_REASON: decision.reason,
        VersionTag.GATED_AT: _now(),
    }
    if decision.champion_version is not None:
        gate_tags[VersionTag.GATE_CHAMPION_VERSION] = decision.champion_version
    if decision.champion_score is not None:
        gate_tags[VersionTag.GATE_CHAMPION_SCORE] = repr(decision.champion_score)
    for key, value in gate_tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(
        name,
        version,
        description=version_description(gate_metric, decision.alias, decision.reason, metrics),
    )
    if decision.promoted:
        promote(name, version, by="gate", reason=decision.reason)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
    return decision


def _decide(
    client: MlflowClient,
    name: str,
    version: str,
    metric: str,
    new_score: float,
    digests: Mapping[str, str],
    score_champion: Callable[[str], float],
) -> GateDecision:
    """The gate's verdict (`histomlf.evaluation.gate.decide`) on what the registry holds."""
    champion_version = _aliases(client, name).get(CHAMPION)
    champion_tags: Mapping[str, str] = {}
    if champion_version is not None and not math.isnan(new_score):
        champion_tags = dict(client.get_model_version(name, champion_version).tags)
    return decide(name, version, metric, new_score, digests, champion_version, champion_tags,
                  score_champion)


def list_versions(name: str) -> list[VersionInfo]:
    """All versions of `name`, oldest first, with their aliases and tags."""
    client = MlflowClient()
    aliases_by_version: dict[str, list[str]] = {}
    for alias, version in _aliases(client, name).items():
        aliases_by_version.setdefault(version, []).append(alias)
    quoted = name.replace("'", "\\'")
    versions = client.search_model_versions(f"name = '{quoted}'")
    return [
        VersionInfo(
            name=name,
            version=str(v.version),
            aliases=tuple(sorted(aliases_by_version.get(str(v.version), []))),
            created=_iso(v.creation_timestamp),
            run_id=v.run_id,
            source=v.source,
            tags=dict(v.tags),
        )
        for v in sorted(versions, key=lambda v: int(v.version))
    ]


def promote(
    name: str, version: str | int, *, by: str | None = None, reason: str = ""
) -> str | None:
    """Make `version` the champion; returns the previous champion's version (or None).

    The new champion gets `promoted_by`/`promoted_at` (and `promotion_reason`) tags and loses
    its `challenger` alias; the previous champion gets `replaced_by`/`replaced_at`.
    """
    client = MlflowClient()
    aliases = _aliases(client, name)
    version = str(_model_version(client, name, version).version)
    previous = aliases.get(CHAMPION)
    when, who = _now(), by or _user()
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, VersionTag.PROMOTED_BY, who)
    client.set_model_version_tag(name, version, VersionTag.PROMOTED_AT, when)
    if reason:
        client.set_model_version_tag(name, version, VersionTag.PROMOTION_REASON, reason)
    if aliases.get(CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    if previous is not None and previous != version:
        client.set_model_version_tag(name, previous, VersionTag.REPLACED_BY, version)
        client.set_model_version_tag(name, previous, VersionTag.REPLACED_AT, when)
        return previous
    return None


def demote(name: str, alias: str = CHAMPION, *, by: str | None = None) -> str:
    """Remove `alias` from the version holding it; returns that version. Tags who and when."""
    client = MlflowClient()
    aliases = _aliases(client, name)
    if alias not in aliases:
        held = ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "none"
        raise RegistryError(f"model {name!r} has no alias {alias!r} (aliases: {held})")
    version = aliases[alias]
    client.delete_registered_model_alias(name, alias)
    client.set_model_version_tag(name, version, VersionTag.DEMOTED_FROM, alias)
    client.set_model_version_tag(name, version, VersionTag.DEMOTED_BY, by or _user())
    client.set_model_version_tag(name, version, VersionTag.DEMOTED_AT, _now())
    return version


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version (as a string: the sqlite store hands back ints)."""
    return {alias: str(v) for alias, v in _registered_model(client, name).aliases.items()}


def _registered_model(client: MlflowClient, name: str):
    try:
        return client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    known = sorted(m.name for m in client.search_registered_models(max_results=100))
    raise RegistryError(
        f"no registered model named {name!r} (known: {', '.join(known) or 'none'})"
    ) from None


def _model_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    if not str(version).isdigit():
        raise RegistryError(f"a model version is a number, got {version!r}")
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    known = [v.version for v in list_versions(name)]
    raise RegistryError(
        f"model {name!r} has no version {version} (versions: {', '.join(known) or 'none'})"
    ) from None


def _run_git_commit(client: MlflowClient, run_id: str | None) -> str:
    if not run_id:
        return "unknown"
    try:
        return client.get_run(run_id).data.tags.get(MlflowTag.GIT_COMMIT, "unknown")
    except MlflowException:
        return "unknown"


def _user() -> str:
    try:
        return os.environ.get("HISTOMLF_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _iso(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(timespec="seconds")


def stored_gate_score(model_uri: str, kind: str) -> float:
    """The `gate_score` a registered version stored when it was gated, for a version whose
    `kind` tag is `kind` (a CV-final model's out-of-fold score cannot be re-scored on a
    split: it came from K models each scoring the patients it never saw)."""
    name, _, version = model_uri.removeprefix("models:/").partition("/")
    tags = MlflowClient().get_model_version(name, version).tags
    if tags.get(VersionTag.KIND) != kind:
        raise RegistryError(
            f"{model_uri} is a {tags.get(VersionTag.KIND, 'train')!r} version, not {kind!r}: its "
            "score is not out-of-fold on the same folds"
        )
    return float(tags[VersionTag.GATE_SCORE])


def describe_version(name: str, version: str, text: str) -> None:
    """Replace a version's description (the gate writes a test-split one)."""
    MlflowClient().update_model_version(name, version, description=text)
