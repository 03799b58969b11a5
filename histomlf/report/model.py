"""The plain data a study report is made from: one `RunRecord` per MLflow run, no MLflow types.

`histomlf.report.store` fills these from a tracking store (through the thin queries of
`histomlf.tracking.queries`); everything else in `histomlf.report` is a pure function of
them, so the report can be tested and re-rendered without a store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from histomlf.schema import Artifact, Explain, Tag

FINISHED = "FINISHED"

# What the report reads of each run (`histomlf.report.store` fetches exactly these).
RUN_FIGURES = (
    (Artifact.evaluation("test", "confusion_matrix"), "Confusion matrix (test, chosen threshold)"),
    (Artifact.evaluation("test", "reliability"), "Reliability diagram (test)"),
    (Artifact.TRAINING_CURVES, "Training curves"),
)
"""The per-run figures of the report's gallery, with their captions."""
DOCUMENTS = (
    Artifact.SCAN,
    Artifact.ENVIRONMENT,
    Artifact.evaluation("test", "confusion_matrix", "json"),
    Artifact.BEST_TRIAL,
    Artifact.LEADERBOARD_TABLE,
    Artifact.SEARCH_SPACE,
    Artifact.CV_FOLDS,
    Explain.INDEX,
)
"""JSON/YAML artifacts parsed into `RunRecord.documents`."""
IMAGES = tuple(path for path, _ in RUN_FIGURES)
PREDICTIONS = Artifact.predictions("test")
EXPLAIN_FOLDERS = {Explain.GRADCAM: 12, Explain.PATIENTS: 6}
"""Explanation figures shown per run, at most this many per folder (keeps the file small)."""



@dataclass(frozen=True)
class RunRecord:
    """What the report needs of one run: its identity, status, settings, numbers and files."""

    run_id: str
    name: str
    experiment_id: str
    experiment_name: str
    status: str
    kind: str
    parent_id: str | None = None
    start_time_ms: int | None = None
    end_time_ms: int | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    documents: Mapping[str, Any] = field(default_factory=dict)
    """Artifact path -> parsed JSON/YAML (`data/scan.json`, `search/leaderboard.json`, ...)."""
    images: Mapping[str, bytes] = field(default_factory=dict)
    """Artifact path -> PNG bytes (`evaluation/test_roc.png`, `explain/gradcam/...png`)."""
    predictions: pd.DataFrame | None = None
    """The logged test predictions (`label`, `probability`, `patient_id`), when present."""

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def setting(self, key: str, default: str = "") -> str:
        """The value that ran: `histomlf.resolved.<key>` where present, else the param."""
        return self.tags.get(Tag.resolved(key), self.params.get(key, default))


@dataclass(frozen=True)
class Study:
    """A selection of runs plus how it was chosen, ready to render."""

    title: str
    selection: str
    """How the runs were chosen, in words (`experiment "study"`, `runs a1b2…, c3d4…`)."""
    runs: tuple[RunRecord, ...]
    generated_at: str
    mlflow_url: str = ""
    """Base URL of an MLflow UI; when set, run ids link there (the only external links)."""

    def children(self, parent_id: str) -> list[RunRecord]:
        return [r for r in self.runs if r.parent_id == parent_id]
