"""What the report says, section by section, as plain data for the template.

Pure: a `Study` in, a dict out. Numbers are the logged ones; text is written from them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from histomlf.report import figures, reproduce
from histomlf.report.model import RUN_FIGURES, RunRecord, Study
from histomlf.report.results import (
    PUBLISHED_CAVEAT,
    PUBLISHED_ROWS,
    PUBLISHED_SOURCE,
    SHORT_LABELS,
    TABLE_METRICS,
    Row,
    best_row,
    fmt,
    result_rows,
)
from histomlf.schema import ROW_KINDS, Artifact, Explain, GradcamName, RunKind, Tag

SPLITS = ("train", "val", "test")


def short(digest: str, length: int = 12) -> str:
    return digest[:length] if digest else "–"


def run_href(study: Study, run: RunRecord) -> str:
    """Link to the run in the MLflow UI when a UI URL was given, else '' (no link)."""
    if not study.mlflow_url:
        return ""
    base = study.mlflow_url.rstrip("/")
    return f"{base}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


def build_context(study: Study) -> dict[str, Any]:
    """Everything the template shows, in the order it shows it."""
    rows = result_rows(study)
    top = [r for r in study.runs if r.parent_id is None and r.kind in ROW_KINDS]
    best = best_row(rows)
    return {
        "title": study.title,
        "generated_at": study.generated_at,
        "selection": study.selection,
        "summary": summary(study, rows),
        "counts": counts(study),
        "columns": TABLE_METRICS,
        "short_labels": SHORT_LABELS,
        "rows": rows,
        "best_id": best.run.run_id if best else "",
        "published": {"source": PUBLISHED_SOURCE, "rows": PUBLISHED_ROWS,
                      "caveat": PUBLISHED_CAVEAT},
        "datasets": datasets(study),
        "splits": split_rows(study),
        "methods": [methods(run) for run in top],
        "overlay": overlay(study, rows),
        "galleries": galleries(study, rows),
        "searches": [search(study, run) for run in top if run.kind == RunKind.TUNE],
        "cvs": [cross_validation(study, run) for run in top if run.kind == RunKind.CV],
        "explanations": explanations(study),
        "reproduce": [reproduction(study, run) for run in top],
        "unfinished": [r for r in study.runs if not r.finished],
        "others": others(study),
        "href": lambda run: run_href(study, run),
        "fmt": fmt,
        "short": short,
    }


def counts(study: Study) -> dict[str, int]:
    kinds = Counter(r.kind for r in study.runs)
    return {
        "runs": len(study.runs),
        "train": kinds.get(RunKind.TRAIN, 0),
        "tune": kinds.get(RunKind.TUNE, 0),
        "trials": kinds.get(RunKind.TUNE_TRIAL, 0),
        "cv": kinds.get(RunKind.CV, 0),
        "folds": kinds.get(RunKind.CV_FOLD, 0),
        "unfinished": sum(not r.finished for r in study.runs),
    }


# ---- summary ------------------------------------------------------------------------------
def summary(study: Study, rows: list[Row]) -> str:
    """One paragraph written from the numbers: what ran, the best model, the data."""
    c = counts(study)
    parts = [
        f"This report covers {c['runs']} MLflow runs ({study.selection}): {c['train']} training "
        f"run{'s' * (c['train'] != 1)}, {c['tune']} tuning search{'es' * (c['tune'] != 1)} "
        f"({c['trials']} trials) and {c['cv']} cross-validation{'s' * (c['cv'] != 1)} "
        f"({c['folds']} folds)."
    ]
    if c["unfinished"]:
        parts.append(f"{c['unfinished']} of them did not finish (listed under Run status).")
    best = best_row(rows)
    if best is None:
        parts.append("No finished run logged a test ROC-AUC, so no model can be singled out.")
    else:
        auc, bac = best.cell("roc_auc"), best.cell("balanced_accuracy")
        what = f"{best.label} ({best.detail})"
        if best.kind == RunKind.CV:
            parts.append(
                f"The best model by test ROC-AUC is {what}: over its folds, every patient tested "
                f"once, ROC-AUC {fmt(auc.value)} {auc.detail} and balanced accuracy "
                f"{fmt(bac.value)} {bac.detail} (mean ± sd over folds)."
            )
        else:
            patients = best.test_patients or "?"
            parts.append(
                f"The best model by test ROC-AUC is {what}: on {patients} held-out test "
                f"patients, ROC-AUC {fmt(auc.value)} (95 % patient-bootstrap interval "
                f"{auc.detail or 'not logged'}) and balanced accuracy {fmt(bac.value)} "
                f"({bac.detail or 'not logged'})."
            )
        patient_auc = best.patient[[n for n, _ in TABLE_METRICS].index("roc_auc")]
        if patient_auc.value is not None:
            parts.append(f"Averaged per patient, its ROC-AUC is {fmt(patient_auc.value)}.")
    data = datasets(study)
    if data:
        described = "; ".join(
            f"{d['scan'].get('patients', '?')} patients, {d['scan'].get('patches', '?')} patches "
            f"({d['scan'].get('positives', '?')} IDC-positive), dataset digest {short(d['digest'])}"
            for d in data
        )
        parts.append(f"Data: {described}. Every split keeps each patient in one split only.")
    return " ".join(parts)


# ---- data ---------------------------------------------------------------------------------
def datasets(study: Study) -> list[dict[str, Any]]:
    """One entry per dataset digest: its scan facts and the runs that used it."""
    found: dict[str, dict[str, Any]] = {}
    for run in study.runs:
        digest = run.tags.get(Tag.DATA_DIGEST, "")
        if not digest:
            continue
        entry = found.setdefault(digest, {"digest": digest, "scan": {}, "runs": []})
        entry["runs"].append(run)
        scan = run.documents.get(Artifact.SCAN)
        if scan and not entry["scan"]:
            entry["scan"] = scan
            entry["scan_run"] = run
    return list(found.values())


def split_rows(study: Study) -> list[dict[str, Any]]:
    """Patients / patches / positives per split for every run that made a split."""
    rows = []
    for run in study.runs:
        if run.kind == RunKind.TUNE_TRIAL or "test_patches" not in run.params:
            continue
        counts_ = {
            split: {
                field: run.params.get(f"{split}_{field}", "")
                for field in ("patients", "patches", "positives")
            }
            for split in SPLITS
        }
        how = "patient-level split, stratified by IDC share"
        if run.kind == RunKind.CV_FOLD:
            how = f"fold {run.tags.get(Tag.FOLD, '?')} of a patient k-fold"
        rows.append({
            "run": run,
            "how": how,
            "seed": run.setting("seed"),
            "fractions": f"val {run.setting('val_fraction')} / test {run.setting('test_fraction')}",
            "max_samples": run.setting("max_samples"),
            "split_digest": run.tags.get(Tag.SPLIT_DIGEST, ""),
            "counts": counts_,
        })
    return rows


# ---- methods ------------------------------------------------------------------------------
def _phases(run: RunRecord) -> str:
    epochs, lr = run.setting("epochs"), run.setting("learning_rate")
    pretrained = run.setting("weights") not in ("", "none")
    text = f"phase 1: {epochs} epochs at lr {lr}" + (" (head only)" if pretrained else "")
    fine = run.setting("fine_tune_epochs", "0")
    if fine not in ("", "0"):
        layers = run.setting("fine_tune_layers", "0")
        top = "all layers" if layers in ("", "0") else f"top {layers} layers"
        text += (f"; phase 2: {fine} epochs, {top} unfrozen, "
                 f"lr {run.setting('fine_tune_learning_rate')}")
    return text


def methods(run: RunRecord) -> dict[str, Any]:
    """How one run trained, in the words a methods section uses."""
    facts = run.documents.get(Artifact.ENVIRONMENT) or {}
    packages: Mapping[str, str] = facts.get("packages", {})
    environment = ", ".join(
        [f"Python {facts['python']}"] if "python" in facts else []
    ) + "".join(f", {name} {packages[name]}" for name in
                ("tensorflow-cpu", "tensorflow", "keras", "keras-tuner", "mlflow")
                if name in packages)
    threshold = run.metrics.get("decision_threshold")
    policy = run.setting("threshold_policy")
    if threshold is not None:
        policy += f" → {threshold:.3f} (chosen on validation)"
    tuned = ""
    best = run.documents.get(Artifact.BEST_TRIAL)
    if run.kind == RunKind.TUNE and best:
        tuned = ", ".join(f"{k}={v}" for k, v in sorted(best.get("hyperparameters", {}).items()))
    elif run.kind == RunKind.CV:
        tuned = f"{run.setting('folds')} patient folds"
    return {
        "run": run,
        "backbone": run.setting("model"),
        "weights": run.setting("weights"),
        "image_size": run.setting("image_size"),
        "phases": _phases(run),
        "optimiser": f"{run.setting('optimizer')}, {run.setting('lr_schedule')} schedule, "
                     f"batch {run.setting('batch_size')}",
        "head": f"dropout {run.setting('dropout')}, dense {run.setting('dense_units')}",
        "early_stopping": run.setting("early_stopping_patience"),
        "augment": run.setting("augment"),
        "balance": run.setting("balance"),
        "threshold": policy,
        "devices": run.tags.get(Tag.DEVICES, "–"),
        "environment": environment or "–",
        "commit": run.tags.get(Tag.GIT_COMMIT, ""),
        "dirty": run.tags.get(Tag.GIT_DIRTY, "") == "true",
        "extra": tuned,
    }


# ---- figures ------------------------------------------------------------------------------
def _curve(study: Study, row: Row) -> figures.Curve | None:
    frames = []
    if row.kind == RunKind.CV:
        frames = [f.predictions for f in study.children(row.run.run_id)
                  if f.finished and f.predictions is not None]
    elif row.run.predictions is not None:
        frames = [row.run.predictions]
    if not frames:
        return None
    labels = np.concatenate([f["label"].to_numpy() for f in frames])
    probabilities = np.concatenate([f["probability"].to_numpy() for f in frames])
    suffix = " (folds pooled)" if row.kind == RunKind.CV else ""
    return figures.Curve(row.label + suffix, labels, probabilities)


def overlay(study: Study, rows: list[Row]) -> str:
    """ROC and PR of every row from its logged test predictions ('' when none logged any)."""
    curves = [c for c in (_curve(study, row) for row in rows) if c is not None]
    if not curves:
        return ""
    return figures.figure_data_uri(figures.roc_pr_overlay(curves))


def galleries(study: Study, rows: list[Row]) -> list[dict[str, Any]]:
    """The per-run figures the runs logged (confusion, reliability, training curves)."""
    out = []
    for row in rows:
        images = [
            {"caption": caption, "path": path, "uri": figures.png_data_uri(row.run.images[path])}
            for path, caption in RUN_FIGURES
            if path in row.run.images
        ]
        if images:
            out.append({"run": row.run, "label": row.label, "images": images})
    return out


# ---- tuning and cross-validation ----------------------------------------------------------
def _table(document: Mapping[str, Any] | None) -> tuple[list[str], list[list[Any]]]:
    """A pandas `split` table (`columns`, `data`) as logged by `mlflow.log_table`."""
    if not document:
        return [], []
    return list(document.get("columns", [])), [list(r) for r in document.get("data", [])]


def _space_rows(space: Any) -> list[tuple[str, str]]:
    rows = []
    for name, spec in (space or {}).items():
        if isinstance(spec, Mapping):
            text = ", ".join(f"{k} {v}" for k, v in spec.items())
        elif isinstance(spec, list):
            text = "one of " + ", ".join(str(v) for v in spec)
        else:
            text = f"fixed {spec}"
        rows.append((str(name), text))
    return rows


def search(study: Study, run: RunRecord) -> dict[str, Any]:
    """A tuning search: its leaderboard (trial runs linked), space, winner and chart."""
    columns, data = _table(run.documents.get(Artifact.LEADERBOARD_TABLE))
    objective = run.tags.get(Tag.OBJECTIVE, run.setting("objective"))
    best_trial = run.tags.get(Tag.BEST_TRIAL_ID, "")
    trials = {r.run_id: r for r in study.children(run.run_id)}
    chart = ""
    if "trial" in columns and objective in columns:
        t, o = columns.index("trial"), columns.index(objective)
        points = [(str(r[t]), r[o]) for r in data if isinstance(r[o], (int, float))
                  and not math.isnan(r[o])]
        if points:
            chart = figures.figure_data_uri(figures.leaderboard_chart(
                [p[0] for p in points], [p[1] for p in points], objective, best_trial))
    return {
        "run": run,
        "objective": objective,
        "tuner": run.tags.get(Tag.TUNER, run.setting("tuner")),
        "best_trial": best_trial,
        "best_run_id": run.tags.get(Tag.BEST_RUN_ID, ""),
        "columns": columns,
        "data": data,
        "trials": trials,
        "space": _space_rows(run.documents.get(Artifact.SEARCH_SPACE)),
        "chart": chart,
        "counts": {k: run.metrics.get(f"trials_{k}") for k in ("total", "completed", "failed")},
    }


def cross_validation(study: Study, run: RunRecord) -> dict[str, Any]:
    """A CV parent: per-fold rows (from the fold runs) and the mean ± sd chart."""
    children = study.children(run.run_id)
    folds = sorted((c for c in children if c.kind == RunKind.CV_FOLD),
                   key=lambda r: int(r.tags.get(Tag.FOLD, 0)))
    final = next((c for c in children if c.kind == RunKind.CV_FINAL), None)
    names = [name for name, _ in TABLE_METRICS]
    means = [run.metrics.get(f"test_{n}_mean") for n in names]
    sds = [run.metrics.get(f"test_{n}_sd", 0.0) for n in names]
    chart = ""
    if any(m is not None for m in means):
        chart = figures.figure_data_uri(figures.cv_chart(
            [label for _, label in TABLE_METRICS],
            [m if m is not None else 0.0 for m in means],
            [s if s is not None and not math.isnan(s) else 0.0 for s in sds],
            f"{run.name}: {len(folds)} folds"))
    return {"run": run, "folds": folds, "chart": chart, "final": final}


# ---- explanations -------------------------------------------------------------------------
def explain_caption(path: str) -> str:
    """`explain/gradcam/tp_1_8863_x1_y51.png` -> `Grad-CAM TP #1: patient 8863, patch (1, 51)`."""
    name = path.rsplit("/", 1)[-1].removesuffix(".png")
    if path.startswith(Explain.PATIENTS + "/"):
        return f"Patient map: patient {name}"
    parsed = GradcamName.parse(path)
    if path.startswith(Explain.GRADCAM + "/") and parsed:
        return (f"Grad-CAM {parsed.kind.upper()} #{parsed.rank}: patient {parsed.patient_id}, "
                f"patch ({parsed.x}, {parsed.y})")
    return path.removeprefix(Explain.ROOT + "/")


def explanations(study: Study) -> list[dict[str, Any]]:
    """Grad-CAM panels and patient maps of runs that logged `explain/index.json`."""
    out = []
    for run in study.runs:
        if Explain.INDEX not in run.documents:
            continue
        images = [
            {"path": path, "caption": explain_caption(path),
             "uri": figures.png_data_uri(png)}
            for path, png in sorted(run.images.items())
            if path.startswith(Explain.ROOT + "/")
        ]
        if images:
            out.append({"run": run, "images": images})
    return out


# ---- reproduce ----------------------------------------------------------------------------
def reproduction(study: Study, run: RunRecord) -> dict[str, Any]:
    """A run's rerun command, the digests its rerun must match, and its commit."""
    digests = {run.tags.get(Tag.DATA_DIGEST, "")} - {""}
    source = run
    if run.kind == RunKind.CV and not digests:  # the parent logs none; its folds do
        folds = [f for f in study.children(run.run_id) if f.tags.get(Tag.DATA_DIGEST)]
        digests = {f.tags[Tag.DATA_DIGEST] for f in folds}
        source = folds[0] if folds else run
    return {
        "run": run,
        "digest_run_id": source.run_id,
        "checkout": reproduce.checkout_command(run),
        "command": reproduce.mlflow_run_command(run),
        "data_digest": ", ".join(sorted(digests)),
        "split_digest": run.tags.get(Tag.SPLIT_DIGEST, ""),
        "commit": run.tags.get(Tag.GIT_COMMIT, ""),
        "dirty": run.tags.get(Tag.GIT_DIRTY, "") == "true",
        "space": run.kind == RunKind.TUNE,
    }


def others(study: Study) -> list[RunRecord]:
    """Finished runs that are neither rows nor in a search/CV section (evaluate runs, ...)."""
    ids = {r.run_id for r in study.runs}
    return [
        r for r in study.runs
        if r.finished
        and r.kind not in ROW_KINDS
        and not (r.kind in (RunKind.TUNE_TRIAL, RunKind.CV_FOLD, RunKind.CV_FINAL)
                 and r.parent_id in ids)
    ]
