"""The report's renderer on hand-made runs (no store, no training): the explanations section
appears only when a run logged `explain/index.json`, unfinished runs are listed and never rows,
missing and NaN metrics show as a dash, MLflow links appear only when asked for."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from histomlf.report.model import RunRecord, Study
from histomlf.report.render import render_html


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def train_run(run_id: str, **changes) -> RunRecord:
    fields = dict(
        run_id=run_id,
        name=f"run-{run_id[:4]}",
        experiment_id="1",
        experiment_name="hand",
        status="FINISHED",
        kind="train",
        params={"model": "simplecnn", "weights": "none", "epochs": "2", "experiment": "smoke",
                "data_dir": "/data", "test_patients": "5", "test_patches": "40"},
        tags={"histomlf.git_commit": "abc123", "histomlf.git_dirty": "true",
              "histomlf.data_digest": "d" * 64},
        metrics={"test_roc_auc": 0.75, "test_roc_auc_ci_low": 0.6, "test_roc_auc_ci_high": 0.9,
                 "test_balanced_accuracy": 0.7, "test_precision": float("nan")},
        predictions=None,
    )
    fields.update(changes)
    return RunRecord(**fields)


def study(*runs: RunRecord, mlflow_url: str = "") -> Study:
    return Study("Hand study", "runs by hand", tuple(runs), "2026-12-01 00:00 UTC", mlflow_url)


def cells(html: str, run_id: str) -> dict[str, str]:
    """data-metric -> shown text of one run's result cells."""
    found = re.findall(
        rf'data-run-id="{run_id}" data-metric="([^"]+)"[^>]*>([^<]*)', html
    )
    return dict(found)


def test_explanations_only_when_logged() -> None:
    explained = train_run(
        "a" * 32,
        documents={"explain/index.json": {"gradcam": ["x"]}},
        images={"explain/gradcam/tp_1_8863_x1_y51.png": png((200, 0, 0)),
                "explain/patients/8863.png": png((0, 0, 200))},
    )
    html = render_html(study(explained))
    assert 'id="explanations"' in html
    assert 'data-artifact="explain/gradcam/tp_1_8863_x1_y51.png"' in html
    assert 'data-artifact="explain/patients/8863.png"' in html
    assert "Grad-CAM TP #1: patient 8863, patch (1, 51)" in html
    assert 'id="explanations"' not in render_html(study(train_run("b" * 32)))


def test_unfinished_runs_are_listed_not_rows_and_missing_numbers_are_dashes() -> None:
    done = train_run("c" * 32)
    killed = train_run("d" * 32, status="KILLED", metrics={})
    running = train_run("e" * 32, status="RUNNING", metrics={})
    html = render_html(study(done, killed, running))
    rows = re.findall(r'<tr data-run-id="(\w+)" data-kind=', html)
    assert rows == [done.run_id]
    status = re.findall(r'<tr data-run-id="(\w+)" data-status="(\w+)"', html)
    assert status == [(killed.run_id, "KILLED"), (running.run_id, "RUNNING")]
    assert "2 of them did not finish" in html
    shown = cells(html, done.run_id)
    assert shown["test_roc_auc"] == "0.750"
    assert shown["test_precision"] == "–"  # NaN
    assert shown["test_accuracy"] == "–"  # never logged
    assert "0.600–0.900" in html
    assert "dirty" in html


def test_links_only_to_the_given_mlflow_ui() -> None:
    run = train_run("f" * 32, predictions=None)
    assert "href=" not in render_html(study(run))
    html = render_html(study(run, mlflow_url="http://mlflow.example:5000/"))
    links = set(re.findall(r'href="([^"]+)"', html))
    assert links == {f"http://mlflow.example:5000/#/experiments/1/runs/{run.run_id}"}


def test_user_text_is_escaped() -> None:
    run = train_run("0" * 32, name='<img src="http://evil/x.png">')
    html = render_html(study(run))
    assert "http://evil" not in re.findall(r'src="([^"]+)"', html)
    assert "&lt;img" in html


def test_roc_overlay_from_predictions() -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    predictions = pd.DataFrame({"label": labels, "probability": rng.random(200),
                                "patient_id": ["1"] * 200})
    html = render_html(study(train_run("9" * 32, predictions=predictions)))
    assert 'alt="ROC and PR curves of all runs overlaid"' in html
