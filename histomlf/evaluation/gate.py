"""The champion gate's policy: which registered version serves as `champion`, and why.

Pure: the new version's score and digests and the current champion's version, tags and (only
when the comparison is fair) its re-scored score go in, a `GateDecision` comes out.
`histomlf.tracking.registry` makes the MLflow calls around it and writes the verdict as tags.

A new version takes `champion` automatically only when the comparison is fair: the champion is
re-scored on the same data and the same patient split (equal `data_digest` and `split_digest`)
and the new score is strictly better. Across different data or splits the numbers are not
comparable, so the new version waits as `challenger` with a reason and a human decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from histomlf.evaluation.metrics import UnknownMetricError, metric_named
from histomlf.evaluation.text import headline_line
from histomlf.schema import ModelMeta

CHAMPION = "champion"
CHALLENGER = "challenger"
DIGEST_KEYS = (ModelMeta.DATA_DIGEST, ModelMeta.SPLIT_DIGEST)
_METRIC_PREFIXES = ("test_", "val_", "eval_")


class RegistryError(ValueError):
    """A registry request that cannot be done (unknown model, version, alias or gate metric);
    one line."""


@dataclass(frozen=True)
class GateDecision:
    """What the gate did with a new version, and why (also written on the version as tags)."""

    name: str
    version: str
    alias: str
    promoted: bool
    reason: str
    gate_metric: str
    new_score: float
    champion_version: str | None = None
    champion_score: float | None = None


def higher_is_better(metric: str) -> bool:
    """Direction of a gate metric (`test_`/`val_`/`eval_` prefixes allowed) from the metric
    table; an unknown name is a `RegistryError`."""
    try:
        return metric_named(metric, _METRIC_PREFIXES).higher_is_better
    except UnknownMetricError as error:
        raise RegistryError(f"unknown gate metric {metric!r}: {error}") from None


def is_better(metric: str, new: float, old: float) -> bool:
    """Strictly better in the metric's direction; NaN is never better."""
    if math.isnan(new) or math.isnan(old):
        return False
    return new > old if higher_is_better(metric) else new < old


def decide(
    name: str,
    version: str,
    metric: str,
    new_score: float,
    digests: Mapping[str, str],
    champion_version: str | None,
    champion_tags: Mapping[str, str],
    score_champion: Callable[[str], float],
) -> GateDecision:
    """The verdict on version `version` of `name` against the current champion.

    `champion_tags` are the champion version's tags (its digests); `score_champion(uri)`
    re-scores it on the new version's split and is called only when both digests match. A
    champion that cannot be re-scored, a NaN score or different digests never lose the alias.
    """
    def verdict(
        promoted: bool, reason: str, champion: str | None = None, score: float | None = None
    ) -> GateDecision:
        alias = CHAMPION if promoted else CHALLENGER
        return GateDecision(name, version, alias, promoted, reason, metric, new_score, champion,
                            score)  # fmt: skip

    if math.isnan(new_score):
        return verdict(False, f"new {metric} is NaN", champion_version)
    if champion_version is None:
        return verdict(True, f"no champion yet: first gated version ({metric} {new_score:.6g})")
    differing = [key for key in DIGEST_KEYS if champion_tags.get(key) != str(digests[key])]
    if differing:
        details = "; ".join(
            f"{key} champion {champion_tags.get(key, '(none)')} vs new {digests[key]}"
            for key in differing
        )
        return verdict(
            False,
            f"not compared with champion v{champion_version}: different {', '.join(differing)} "
            f"({details}); scores on other data are not comparable, promote by hand",
            champion_version,
        )
    try:
        champion_score = float(score_champion(f"models:/{name}/{champion_version}"))
    except Exception as error:  # noqa: BLE001 - any failure keeps the champion in place
        return verdict(
            False,
            f"could not re-score champion v{champion_version}: {type(error).__name__}: {error}",
            champion_version,
        )
    direction = "higher" if higher_is_better(metric) else "lower"
    if is_better(metric, new_score, champion_score):
        return verdict(
            True,
            f"{metric} {new_score:.6g} beats champion v{champion_version}'s {champion_score:.6g} "
            f"on the same split ({direction} is better)",
            champion_version,
            champion_score,
        )
    return verdict(
        False,
        f"{metric} {new_score:.6g} does not beat champion v{champion_version}'s "
        f"{champion_score:.6g} on the same split ({direction} is better)",
        champion_version,
        champion_score,
    )


def version_description(gate_metric: str, decision: str, reason: str,
                        metrics: Mapping[str, float] | None) -> str:
    """The registered version's description: the gate's verdict and the headline metrics."""
    text = f"Gate on test {gate_metric}: {decision} — {reason}."
    if metrics:
        text += f"\n\nTest, patient-level split: {headline_line(metrics)}."
    return text
