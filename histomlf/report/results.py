"""The results table: one row per train run, per search winner and per CV; traceable cells.

Every cell keeps the run id and the metric key it came from, so the HTML can carry them
(`title`, `data-run-id`, `data-metric`) and a reader or a test can follow any number back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from histomlf.evaluation.metrics import TABLED
from histomlf.report.model import RunRecord, Study
from histomlf.schema import RunKind, Tag

TABLE_METRICS = tuple((m.name, m.label) for m in TABLED)
"""Columns of the results table (`Metric.tabled`, labels from the metric table)."""
METRIC_ORDER = tuple(name for name, _ in TABLE_METRICS)
SHORT_LABELS = {m.name: m.short_label for m in TABLED}

PUBLISHED_SOURCE = "The classic study's published test numbers: random patch-level split"
PUBLISHED_ROWS = (
    ("VGG16", {"accuracy": 0.8673, "precision": 0.8892, "recall": 0.8343, "f1": 0.8609}),
    ("ResNet50", {"accuracy": 0.8848, "precision": 0.8569, "recall": 0.9196, "f1": 0.8871}),
    ("Keras Tuner", {"accuracy": 0.8760, "precision": 0.8784, "recall": 0.8684, "f1": 0.8734}),
)
PUBLISHED_CAVEAT = (
    "These numbers come from a random split of patches, so patches of the same patient sit in "
    "training and test; neighbouring patches of one slide look alike, so the model is partly "
    "scored on patients it has already seen. The rows above hold out whole patients, which is "
    "how a model meets a new patient's slide: their numbers are lower and more honest."
)


@dataclass(frozen=True)
class Cell:
    """One number of the table and where it came from."""

    run_id: str
    key: str
    value: float | None
    low: float | None = None
    high: float | None = None
    low_key: str = ""
    high_key: str = ""
    sd: float | None = None
    sd_key: str = ""

    @property
    def text(self) -> str:
        return fmt(self.value)

    @property
    def detail(self) -> str:
        """The interval or spread shown under the value ('' when none was logged)."""
        if self.low is not None and self.high is not None:
            return f"{fmt(self.low)}–{fmt(self.high)}"
        if self.sd is not None:
            return f"± {fmt(self.sd)}"
        return ""

    @property
    def title(self) -> str:
        parts = [f"run {self.run_id}", f"{self.key} = {_full(self.value)}"]
        if self.low_key:
            parts.append(f"95 % CI {self.low_key} = {_full(self.low)}, "
                         f"{self.high_key} = {_full(self.high)}")
        if self.sd_key:
            parts.append(f"{self.sd_key} = {_full(self.sd)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Row:
    """A row of the results table."""

    run: RunRecord
    kind: str
    label: str
    detail: str
    metrics: tuple[Cell, ...]
    patient: tuple[Cell, ...]
    test_patients: str

    def cell(self, name: str) -> Cell:
        """The patch-level cell of metric `name` (`roc_auc`, ...)."""
        return self.metrics[METRIC_ORDER.index(name)]


def fmt(value: float | None, digits: int = 3) -> str:
    """A metric as shown: three decimals; missing or NaN is an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _full(value: float | None) -> str:
    return "missing" if value is None else repr(float(value))


def _value(run: RunRecord, key: str) -> float | None:
    value = run.metrics.get(key)
    return None if value is None else float(value)


def _single_cells(run: RunRecord, prefix: str, intervals: bool) -> tuple[Cell, ...]:
    cells = []
    for name, _ in TABLE_METRICS:
        key = f"{prefix}{name}"
        if intervals and f"{key}_ci_low" in run.metrics and f"{key}_ci_high" in run.metrics:
            cells.append(Cell(run.run_id, key, _value(run, key),
                              low=_value(run, f"{key}_ci_low"), high=_value(run, f"{key}_ci_high"),
                              low_key=f"{key}_ci_low", high_key=f"{key}_ci_high"))
        else:
            cells.append(Cell(run.run_id, key, _value(run, key)))
    return tuple(cells)


def _mean_cells(run: RunRecord, prefix: str) -> tuple[Cell, ...]:
    cells = []
    for name, _ in TABLE_METRICS:
        key = f"{prefix}{name}_mean"
        sd_key = f"{prefix}{name}_sd"
        sd = _value(run, sd_key)
        cells.append(Cell(run.run_id, key, _value(run, key), sd=sd,
                          sd_key=sd_key if sd is not None else ""))
    return tuple(cells)


def result_rows(study: Study) -> list[Row]:
    """Rows for every finished train run, search (its winner) and CV parent, in run order."""
    rows = []
    for run in study.runs:
        if not run.finished or run.parent_id:
            continue
        backbone = run.setting("model") or "?"
        if run.kind == RunKind.TRAIN:
            rows.append(Row(run, run.kind, run.name, f"train · {backbone}",
                            _single_cells(run, "test_", True), _single_cells(run, "test_patient_",
                                                                              False),
                            run.params.get("test_patients", "")))
        elif run.kind == RunKind.TUNE:
            trial = run.tags.get(Tag.BEST_TRIAL_ID, "?")
            rows.append(Row(run, run.kind, run.name,
                            f"search winner · trial {trial} · {backbone}",
                            _single_cells(run, "test_", True),
                            _single_cells(run, "test_patient_", False),
                            run.params.get("test_patients", "")))
        elif run.kind == RunKind.CV:
            folds = run.params.get("folds", "?")
            rows.append(Row(run, run.kind, run.name,
                            f"cross-validation · {folds} folds, mean ± sd · {backbone}",
                            _mean_cells(run, "test_"), _mean_cells(run, "test_patient_"),
                            "all (each once)"))
    return rows


def best_row(rows: Sequence[Row]) -> Row | None:
    """The row with the highest test ROC-AUC (for a CV, its mean over folds)."""
    scored = [(r.cell("roc_auc").value, i) for i, r in enumerate(rows)
              if r.cell("roc_auc").value is not None and not math.isnan(r.cell("roc_auc").value)]
    if not scored:
        return None
    return rows[max(scored)[1]]
