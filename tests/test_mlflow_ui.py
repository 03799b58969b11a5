"""What a user sees in the MLflow UI, in a real browser over a real `mlflow server`.

The session's study store (two train runs, a search, a CV) is served read-only; Chromium checks
that the experiment opens on its runs with their names, that the compare view shows both train
runs' test ROC-AUC, that a run's artifact view renders its confusion matrix, and that the
registry shows the champion with its gate verdict. Screenshots go to the test's tmp folder (and
to docs/ with HISTOMLF_DOCS_SCREENSHOTS=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import body_text, headless_chrome, scroll_until, wait_until
from helpers_wait import answers, free_port, wait_for
from mlflow.tracking import MlflowClient

from histomlf.tracking.runs import experiment_link

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[1] / "docs"
LOAD_S = 90


@pytest.fixture(scope="module")
def mlflow_ui(study_store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-ui") / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               study_store.tracking_uri, "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/health", timeout=2), 120,
                 "the mlflow server to answer /health", process=server, log=log)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.save_screenshot(str(path))
    assert path.stat().st_size > 20_000, f"{name}: screenshot looks empty"
    if os.environ.get("HISTOMLF_DOCS_SCREENSHOTS"):
        page.save_screenshot(str(DOCS / f"mlflow-ui-{name}.png"))
    return path


def test_a_user_finds_runs_comparisons_plots_and_the_champion(
    mlflow_ui: str, study_store, chromium, tmp_path: Path
) -> None:
    client = MlflowClient(study_store.tracking_uri)
    runs = [client.get_run(r) for r in study_store.top_level_run_ids]
    first, second = (client.get_run(r) for r in study_store.train_run_ids)
    experiment = study_store.experiment_id

    with headless_chrome(chromium.browser, chromium.driver) as page:
        # the link histomlf prints opens the experiment on its training runs (MLflow 3.17's
        # UI picks GenAI or model-training navigation from `workflowType`, GenAI by default),
        # every top-level run's name visible
        page.get(f"{mlflow_ui}/{experiment_link(experiment)}")
        for run in runs:
            wait_until(lambda run=run: run.info.run_name in body_text(page), LOAD_S,
                       f"run {run.info.run_name} in the runs table", page)
        text = body_text(page)
        assert "Token usage" not in text and "Detect issues in your traces" not in text
        shot(page, tmp_path, "runs")

        # the compare view of the two train runs lists both, and test_roc_auc among their
        # metrics (its metric table is virtualised: scrolled into view to be rendered)
        ids = json.dumps([first.info.run_id, second.info.run_id])
        page.get(f"{mlflow_ui}/#/compare-runs?runs={ids}&experiments={json.dumps([experiment])}")
        wait_until(lambda: "Comparing 2 Runs" in body_text(page), LOAD_S, "the compare view", page)
        text = body_text(page)
        assert first.info.run_name in text and second.info.run_name in text
        shot(page, tmp_path, "compare")
        scroll_until(page, ">test_roc_auc<", LOAD_S)

        # a run's artifact view renders its confusion matrix
        path = "evaluation/test_confusion_matrix.png"
        page.get(f"{mlflow_ui}/#/experiments/{experiment}/runs/{first.info.run_id}/"
                 f"artifacts/{path}")
        wait_until(
            lambda: any(img.get_property("naturalWidth") > 100
                        for img in page.find_elements("tag name", "img")),
            LOAD_S, "the confusion-matrix image", page)
        shot(page, tmp_path, "artifact")

        # the registry page shows the champion with the gate's verdict
        version = client.get_model_version_by_alias("idc-study", "champion")
        page.get(f"{mlflow_ui}/#/models/idc-study/versions/{version.version}")
        wait_until(lambda: "Gate on test roc_auc" in body_text(page), LOAD_S,
                   "the champion's description", page)
        assert "champion" in body_text(page)
        shot(page, tmp_path, "registry")
