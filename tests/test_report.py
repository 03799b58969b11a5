"""`histomlf report` on the shared study (two backbones, a search, a CV): the HTML's numbers
are the logged ones, the file is self-contained, the reproduce commands parse back to the
runs' settings, Chromium renders it and prints a PDF, and failed runs are reported as failed.

The study is built once per session (tests/study_store.py); these tests add no training. Runs
they add (report runs, a failed run) go in experiments of their own, never in the study's.
"""

from __future__ import annotations

import base64
import io
import math
import re
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from study_store import Chromium, StudyStore, invoke_cli, tracking_env

from histomlf.evaluation.metrics import TABLED

pytestmark = pytest.mark.slow

REPORT_EXPERIMENT = "report-tests"
ROW_METRICS = tuple(m.name for m in TABLED)  # the results table's columns, from the table


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""


class Elements(HTMLParser):
    """Every start tag with its attributes and the text directly inside it (enough here)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in ("img", "meta", "br", "link", "input"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data


def parse(html: str) -> list[Element]:
    parser = Elements()
    parser.feed(html)
    return parser.elements


@dataclass(frozen=True)
class Report:
    html_path: Path
    pdf_path: Path
    html: str
    elements: list[Element]
    output: str
    client: MlflowClient


@pytest.fixture(scope="module")
def report(
    study_store: StudyStore, chromium: Chromium, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Report]:
    """The study reported once (HTML + PDF), logged in an experiment of its own."""
    out = tmp_path_factory.mktemp("report")
    client = MlflowClient(study_store.tracking_uri)
    client.create_experiment(REPORT_EXPERIMENT, artifact_location=(out / "artifacts").as_uri())
    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri,
                      HISTOMLF_CHROMIUM=str(chromium.browser)):
        result = invoke_cli(
            "report", "--experiment-name", study_store.experiment_name,
            "--out", str(out / "report.html"), "--pdf", str(out / "report.pdf"),
            "--title", "Smoke study", "--log-experiment", REPORT_EXPERIMENT,
        )
    html = (out / "report.html").read_text(encoding="utf-8")
    yield Report(out / "report.html", out / "report.pdf", html, parse(html), result.output,
                 client)


def same(shown: str, logged: float) -> bool:
    """The value in an attribute is the logged float exactly (NaN equals NaN)."""
    value = float(shown)
    return value == logged or (math.isnan(value) and math.isnan(logged))


def metric_cells(report: Report) -> list[Element]:
    return [e for e in report.elements
            if "data-metric" in e.attrs and e.attrs.get("data-source") != "published"]


def test_table_values_equal_the_logged_metrics(report: Report, study_store: StudyStore) -> None:
    rows = [e for e in report.elements if e.tag == "tr" and "data-kind" in e.attrs]
    assert [r.attrs["data-run-id"] for r in rows] == list(study_store.top_level_run_ids)
    assert [r.attrs["data-kind"] for r in rows] == ["train", "train", "tune", "cv"]

    runs = {}
    cells = metric_cells(report)
    assert len(cells) >= 4 * 2 * len(ROW_METRICS)
    for cell in cells:
        run_id, key = cell.attrs["data-run-id"], cell.attrs["data-metric"]
        run = runs.setdefault(run_id, report.client.get_run(run_id))
        assert cell.attrs["title"].startswith(f"run {run_id}")
        logged = run.data.metrics.get(key)
        if logged is None:
            assert cell.attrs["data-value"] == "" and cell.text.strip().startswith("–"), key
            continue
        assert same(cell.attrs["data-value"], logged), (run_id, key)
        if cell.tag == "td" or "num" in cell.attrs.get("class", "").split():
            # a table cell or a number in the text (the CV-final's out-of-fold scores): three
            # decimals (then its interval or spread)
            shown = "–" if math.isnan(logged) else f"{logged:.3f}"
        else:  # a count in the text
            shown = str(int(logged))
        assert cell.text.strip().startswith(shown), (run_id, key, cell.text)
        for bound in ("low", "high"):
            if f"data-ci-{bound}-metric" in cell.attrs:
                bound_key = cell.attrs[f"data-ci-{bound}-metric"]
                assert same(cell.attrs[f"data-ci-{bound}"], run.data.metrics[bound_key])
        if "data-sd-metric" in cell.attrs:
            assert same(cell.attrs["data-sd"], run.data.metrics[cell.attrs["data-sd-metric"]])

    # every row shows every tabled metric twice (patch level and per-patient average)
    train_id = study_store.train_run_ids[0]
    keys = {c.attrs["data-metric"] for c in cells if c.attrs["data-run-id"] == train_id}
    assert {f"test_{m}" for m in ROW_METRICS} | {f"test_patient_{m}" for m in ROW_METRICS} <= keys
    cv_keys = {c.attrs["data-metric"] for c in cells
               if c.attrs["data-run-id"] == study_store.cv_parent_id}
    assert {f"test_{m}_mean" for m in ROW_METRICS} <= cv_keys
    # intervals shown where logged
    auc = next(c for c in cells if c.attrs["data-run-id"] == train_id
               and c.attrs["data-metric"] == "test_roc_auc")
    assert auc.attrs["data-ci-low-metric"] == "test_roc_auc_ci_low"

    # params cells (split counts) trace back too
    for cell in (e for e in report.elements if "data-param" in e.attrs and e.tag == "td"):
        run = runs.setdefault(cell.attrs["data-run-id"],
                              report.client.get_run(cell.attrs["data-run-id"]))
        key = cell.attrs["data-param"]
        if re.fullmatch(r"(train|val|test)_(patients|patches|positives)", key):
            assert cell.text.strip() == run.data.params[key], (key, cell.text)

    # the published numbers are there, apart and labelled as a patch-level split
    published = [e for e in report.elements if e.attrs.get("data-source") == "published"
                 and e.tag == "td"]
    assert {e.attrs["data-value"] for e in published} >= {"0.8673", "0.8848", "0.876"}
    assert "random patch-level split" in report.html


def test_the_html_is_self_contained_and_every_image_decodes(report: Report) -> None:
    assert "<script" not in report.html.lower() and "<link" not in report.html.lower()
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', report.html)
    references += re.findall(r"url\(\s*['\"]?([^'\")]*)", report.html)
    outside = [r for r in references if not r.startswith("data:image/png;base64,")]
    assert outside == [], outside[:5]

    images = [e for e in report.elements if e.tag == "img"]
    # overlay + 3 logged figures for each of 3 runs (tune has no training curves) + search + CV
    assert len(images) >= 1 + 3 + 3 + 2 + 2
    for image in images:
        payload = image.attrs["src"].removeprefix("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as decoded:
            decoded.load()
            assert decoded.format == "PNG" and min(decoded.size) > 50


def _cli_params(verb: str, command: str) -> dict:
    """The options `mlflow run` would hand the verb: declared MLproject parameters go
    through the entry point's command, the rest as `--key value`; parsed by click itself."""
    from histomlf.cli import main

    words = shlex.split(command)
    assert words[:3] == ["mlflow", "run", "."]
    assert words[words.index("-e") + 1] == verb
    pairs = [words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "-P"]
    argv = []
    for key, value in pairs:
        argv += [f"--{key.replace('_', '-')}" if key in ("experiment", "data_dir") else f"--{key}",
                 value]
    context = main.commands[verb].make_context(verb, argv)
    return {"pairs": dict(pairs), "params": context.params}


def test_reproduce_commands_parse_back_to_the_runs_settings(
    report: Report, study_store: StudyStore
) -> None:
    from histomlf.cli.options import load_checked_config

    commands = {e.attrs["data-run-id"]: e for e in report.elements
                if e.tag == "pre" and "command" in e.attrs.get("class", "")}
    assert set(commands) == set(study_store.top_level_run_ids)
    verbs = {"train": "train", "tune": "tune", "cv": "cv"}
    for run_id, element in commands.items():
        run = report.client.get_run(run_id)
        checkout, command = element.text.strip().splitlines()
        assert checkout == f"git checkout {run.data.tags['histomlf.git_commit']}"
        parsed = _cli_params(verbs[element.attrs["data-kind"]], command)
        config, _ = load_checked_config(parsed["params"]["experiment"], parsed["params"])
        logged = run.data.params
        for key, value in config.as_params().items():
            assert str(value) == logged[key] or float(value) == float(logged[key]), (key, value)
        if element.attrs["data-kind"] == "cv":
            assert parsed["params"]["folds"] == int(logged["folds"]) == 2
        if element.attrs["data-kind"] == "tune":
            for key in ("tuner", "max_trials", "objective", "executions_per_trial"):
                assert str(parsed["params"][key]) == logged[key], key


def test_chromium_renders_it_and_the_pdf_has_the_results_table(
    report: Report, chromium: Chromium, study_store: StudyStore
) -> None:
    import pypdf

    shot = report.html_path.with_name("first-page.png")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [str(chromium.browser), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", f"--user-data-dir={profile}",
             "--hide-scrollbars", "--window-size=1280,1000", f"--screenshot={shot}",
             report.html_path.as_uri()],
            check=True, capture_output=True, timeout=120,
        )
    with Image.open(shot) as image:
        pixels = image.convert("L")
        assert pixels.size == (1280, 1000)
        dark = sum(1 for v in pixels.getdata() if v < 200) / (1280 * 1000)
        colours = len(image.convert("RGB").getcolors(maxcolors=1_000_000) or [])
    assert dark > 0.02 and colours > 50, (dark, colours)

    reader = pypdf.PdfReader(report.pdf_path)
    assert len(reader.pages) >= 2
    text = " ".join(page.extract_text() for page in reader.pages)
    flat = re.sub(r"\s+", "", text)
    assert "Results" in text and "ROC-AUC" in text
    for run_id in study_store.top_level_run_ids:
        assert run_id[:8] in flat, run_id
    train = report.client.get_run(study_store.train_run_ids[0]).data.metrics
    assert f"{train['test_roc_auc']:.3f}" in flat and f"{train['test_accuracy']:.3f}" in flat


def test_the_report_is_logged_next_to_its_data(report: Report, study_store: StudyStore) -> None:
    experiment = report.client.get_experiment_by_name(REPORT_EXPERIMENT)
    (run,) = report.client.search_runs([experiment.experiment_id])
    assert run.data.tags["histomlf.kind"] == "report" and run.info.status == "FINISHED"
    assert f"logged as run {run.info.run_id}" in report.output
    covered = run.data.tags["histomlf.report.runs"].split(",")
    assert set(study_store.top_level_run_ids) <= set(covered)
    files = {f.path for f in report.client.list_artifacts(run.info.run_id, "report")}
    assert files == {"report/report.html", "report/report.pdf", "report/runs.json"}

    # a report run is never a row, even when named in --runs
    out = report.html_path.with_name("with-report-run.html")
    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):
        invoke_cli("report", "--runs", f"{run.info.run_id},{study_store.train_run_ids[0]}",
                   "--out", str(out), "--no-log")
    elements = parse(out.read_text())
    assert [e.attrs["data-run-id"] for e in elements if e.tag == "tr" and "data-kind" in e.attrs
            ] == [study_store.train_run_ids[0]]
    assert run.info.run_id not in {e.attrs.get("data-run-id") for e in elements}


def test_a_failed_run_is_reported_as_failed(
    study_store: StudyStore, tmp_path: Path
) -> None:
    client = MlflowClient(study_store.tracking_uri)
    experiment_id = client.create_experiment(
        "report-failed", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    empty = tmp_path / "no-patches"
    empty.mkdir()
    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri,
                      MLFLOW_EXPERIMENT_NAME="report-failed", MLFLOW_EXPERIMENT_ID=experiment_id,
                      HISTOMLF_CACHE=str(tmp_path / "cache")):
        failed = invoke_cli("train", "--experiment", "smoke", "--data-dir", str(empty),
                            expect_exit=1)
    # one error line (MLflow's own INFO log lines land in the same captured stream)
    assert failed.output.strip().splitlines()[-1].startswith("Error: data dir is empty")
    assert "Traceback" not in failed.output
    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "FAILED"

    out = tmp_path / "report.html"
    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):
        invoke_cli("report", "--runs", f"{run.info.run_id},{study_store.train_run_ids[0]}",
                   "--out", str(out), "--no-log")
    elements = parse(out.read_text())
    status = [e for e in elements if e.tag == "tr" and "data-status" in e.attrs]
    assert [(e.attrs["data-run-id"], e.attrs["data-status"]) for e in status] == [
        (run.info.run_id, "FAILED")
    ]
    assert "FAILED" in status[0].text
    rows = [e.attrs["data-run-id"] for e in elements if e.tag == "tr" and "data-kind" in e.attrs]
    assert rows == [study_store.train_run_ids[0]]


def test_an_empty_selection_is_a_one_line_error(
    study_store: StudyStore, tmp_path: Path
) -> None:
    MlflowClient(study_store.tracking_uri).create_experiment(
        "report-empty", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):
        for args, message in (
            (("--experiment-name", "report-empty"), "nothing to report"),
            (("--experiment-name", "no-such-experiment"), "no experiment named"),
            (("--runs", "0123456789abcdef0123456789abcdef"), "no run"),
            ((), "give --experiment-name"),
        ):
            result = invoke_cli("report", *args, "--out", str(tmp_path / "r.html"),
                                expect_exit=1)
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "r.html").exists()
