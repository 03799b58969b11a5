"""The run record a user sees is unchanged: same params, metric keys, tags and artifact paths.

`tests/data/run_record_keys.json` was recorded on commit a5fd88d (before the run record became
one schema, `histomlf/schema.py`) from the session's study store (two train runs, a search, a
CV) plus a report run over it (`tests/run_record.py`). The copy it was recorded from had no
`.git`, so `histomlf.git_commit` / `histomlf.git_dirty` (logged with the environment from a
checkout) were added by hand to the kinds that log the environment. A change to this list is a
change users and old stores' readers see: update the file in the same commit and say why.
Since then it gained only what main added on purpose (the commit that updated it lists them):
the study's cv with `--log-models true --final ensemble` (cv params `final`, `calibrate`; the
`cv-final` child; the fold models' `serving_*` params) and the patch scale (`patch_mpp`,
`patch_px`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from run_record import difference, fold_metrics, normalise, record
from study_store import StudyStore, invoke_cli, tracking_env

from histomlf.evaluation.metrics import METRICS, Metric

RECORDED = Path(__file__).parent / "data" / "run_record_keys.json"
REPORT_EXPERIMENT = "run-record-keys"


def test_normalise_folds_numbers_and_logged_image_names() -> None:
    assert normalise("explain/gradcam/tp_1_8863_x1_y51.png") == "explain/gradcam/tp_N_N_xN_yN.png"
    assert normalise(
        "images/gradcam~tp_1+step+0+timestamp+17+ab12-cd+compressed.webp"
    ) == "images/gradcam~tp_N+compressed.webp"


def test_a_metric_family_folds_to_one_template_only_when_it_covers_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = {f"test_{name}" for name in METRICS}
    intervals = {f"test_{name}_ci_low" for name, m in METRICS.items() if m.bootstrap}
    keys = values | intervals | {"epoch/val_loss", "decision_threshold"}
    assert fold_metrics(keys) == {"test_{metric}", "test_{metric}_ci_low", "epoch/val_loss",
                                  "decision_threshold"}
    assert fold_metrics(keys - {"test_f1"}) == (values - {"test_f1"}) | {
        "test_{metric}_ci_low", "epoch/val_loss", "decision_threshold"}

    # A metric added to the table is expected in every family, without editing the record.
    monkeypatch.setitem(METRICS, "new_metric", Metric("new_metric", True, "one more"))
    assert "test_{metric}" not in fold_metrics(keys)
    assert fold_metrics(keys | {"test_new_metric", "test_new_metric_ci_low"}) == {
        "test_{metric}", "test_{metric}_ci_low", "epoch/val_loss", "decision_threshold"}


@pytest.mark.slow
def test_the_study_logs_exactly_the_recorded_keys(
    study_store: StudyStore, tmp_path_factory: pytest.TempPathFactory
) -> None:
    client = MlflowClient(study_store.tracking_uri)
    out = tmp_path_factory.mktemp("keys-report") / "report.html"
    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):  # the report run apart
        invoke_cli("report", "--experiment-name", study_store.experiment_name, "--out", str(out),
                   "--log-experiment", REPORT_EXPERIMENT)
    reports = client.get_experiment_by_name(REPORT_EXPERIMENT).experiment_id
    today = record(client, study_store.experiment_id, reports)
    assert difference(json.loads(RECORDED.read_text()), today) == []
