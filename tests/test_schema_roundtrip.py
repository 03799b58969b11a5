"""Writer → reader round trip of the run record: every kind the recipes write today, read back
through the report's readers (`ReportStore` → `RunRecord` → `build_context`) and the web page's
(`describe_model`), with every field those readers fill non-empty.

Reuses the session's study store (train ×2, a search with its trials, a CV with its folds and
its registered CV-final ensemble) and adds no training: an evaluate run scores the study's
champion on its own test split (explain off), and a report run is logged over the study, each
into an experiment of its own. A writer
that renames a tag or an artifact the readers look for leaves a field here empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from study_store import CV_FINAL_NAME, StudyStore, invoke_cli, tracking_env

from histomlf.evaluation.metrics import TABLED
from histomlf.report.model import DOCUMENTS, RUN_FIGURES, RunRecord, Study
from histomlf.schema import (
    Artifact,
    Explain,
    GradcamName,
    MlflowTag,
    ModelMeta,
    RunKind,
    Tag,
    VersionTag,
)

pytestmark = pytest.mark.slow

CHAMPION = "models:/idc-study@champion"
CV_FINAL_CHAMPION = f"models:/{CV_FINAL_NAME}@champion"
EVALUATE_EXPERIMENT = "roundtrip-evaluate"
REPORT_EXPERIMENT = "roundtrip-report"


@dataclass(frozen=True)
class RoundTrip:
    client: Any
    records: dict[str, RunRecord]
    study: Study
    context: dict[str, Any]
    evaluate_run_id: str
    report_run_id: str


@pytest.fixture(scope="module")
def roundtrip(study_store: StudyStore, idc_sample: Path,
              tmp_path_factory: pytest.TempPathFactory) -> RoundTrip:
    from histomlf.recipes.evaluate import evaluate
    from histomlf.report.content import build_context
    from histomlf.report.store import ReportStore

    root = tmp_path_factory.mktemp("roundtrip")
    client = MlflowClient(study_store.tracking_uri)
    experiment_id = client.create_experiment(
        EVALUATE_EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri,
                      MLFLOW_EXPERIMENT_NAME=EVALUATE_EXPERIMENT,
                      MLFLOW_EXPERIMENT_ID=experiment_id, HISTOMLF_CACHE=str(root / "cache")):
        evaluated = evaluate(CHAMPION, str(idc_sample), explain=False)
        invoke_cli("report", "--experiment-name", study_store.experiment_name,
                   "--out", str(root / "report.html"), "--log-experiment", REPORT_EXPERIMENT)
        store = ReportStore()
        runs, selection = store.select([study_store.experiment_name, EVALUATE_EXPERIMENT])
    report_experiment = client.get_experiment_by_name(REPORT_EXPERIMENT).experiment_id
    (report_run,) = client.search_runs([report_experiment])
    study = Study(title="round trip", selection=selection, runs=tuple(runs),
                  generated_at="now")
    return RoundTrip(client, {r.run_id: r for r in runs}, study, build_context(study),
                     evaluated["run_id"], report_run.info.run_id)


def _of_kind(trip: RoundTrip, kind: RunKind) -> list[RunRecord]:
    return [r for r in trip.records.values() if r.kind == kind]


def test_every_kind_written_today_is_read_back(roundtrip: RoundTrip) -> None:
    kinds = {r.kind for r in roundtrip.records.values()}
    assert kinds == {RunKind.TRAIN, RunKind.TUNE, RunKind.TUNE_TRIAL, RunKind.CV,
                     RunKind.CV_FOLD, RunKind.CV_FINAL, RunKind.EVALUATE}


def test_train_runs_carry_what_the_report_reads(roundtrip: RoundTrip,
                                                study_store: StudyStore) -> None:
    for run_id in study_store.train_run_ids:
        run = roundtrip.records[run_id]
        assert run.kind == RunKind.TRAIN
        for tag in (Tag.DATA_DIGEST, Tag.SPLIT_DIGEST, Tag.DATA_SOURCE, Tag.DEVICES,
                    Tag.GIT_COMMIT):
            assert run.tags.get(tag), (run.name, tag)
        for path in DOCUMENTS[:3]:  # scan, environment, test confusion matrix
            assert run.documents.get(path), (run.name, path)
        assert {path for path, _ in RUN_FIGURES} <= set(run.images)
        assert run.predictions is not None and len(run.predictions)
        assert run.setting("model") and run.params.get("test_patients")
    explained = roundtrip.records[study_store.train_run_ids[0]]  # --explain true
    assert explained.documents[Explain.INDEX]["gradcam"]
    overlays = [p for p in explained.images if p.startswith(Explain.GRADCAM + "/")]
    assert overlays and all(GradcamName.parse(p) for p in overlays)
    assert any(p.startswith(Explain.PATIENTS + "/") for p in explained.images)


def test_the_search_and_its_trials_carry_what_the_report_reads(
    roundtrip: RoundTrip, study_store: StudyStore
) -> None:
    search = roundtrip.records[study_store.tune_parent_id]
    assert search.kind == RunKind.TUNE
    for tag in (Tag.OBJECTIVE, Tag.TUNER, Tag.BEST_TRIAL_ID, Tag.BEST_RUN_ID,
                Tag.BEST_MODEL_URI, Tag.SEARCH_ID):
        assert search.tags.get(tag), tag
    for path in (Artifact.LEADERBOARD_TABLE, Artifact.BEST_TRIAL, Artifact.SEARCH_SPACE):
        assert search.documents.get(path), path
    trials = roundtrip.study.children(search.run_id)
    assert trials and {t.kind for t in trials} == {RunKind.TUNE_TRIAL}
    assert all(t.tags.get(Tag.TRIAL_ID) and t.tags[Tag.SEARCH_ID] == search.run_id
               for t in trials)
    assert search.tags[Tag.BEST_RUN_ID] in {t.run_id for t in trials}


def test_the_cv_and_its_folds_carry_what_the_report_reads(
    roundtrip: RoundTrip, study_store: StudyStore
) -> None:
    cv = roundtrip.records[study_store.cv_parent_id]
    assert cv.kind == RunKind.CV and cv.documents.get(Artifact.CV_FOLDS)
    children = roundtrip.study.children(cv.run_id)
    folds = [c for c in children if c.kind == RunKind.CV_FOLD]
    assert sorted(f.tags[Tag.FOLD] for f in folds) == ["0", "1"]
    assert all(f.predictions is not None and f.tags.get(Tag.DATA_DIGEST) for f in folds)
    (final,) = [c for c in children if c.kind == RunKind.CV_FINAL]
    assert final.parent_id == cv.run_id and final.finished
    assert final.tags.get(Tag.DATA_DIGEST) and final.tags.get(Tag.SPLIT_DIGEST)
    assert final.params.get("final") == "ensemble" and final.params.get("fold_runs")
    assert {"oof_roc_auc", "oof_ece", "fold_mean_roc_auc"} <= set(final.metrics)
    assert not [k for k in final.metrics if k.startswith("test_")]  # no test split of its own


def test_the_evaluate_run_carries_what_the_report_reads(roundtrip: RoundTrip) -> None:
    run = roundtrip.records[roundtrip.evaluate_run_id]
    assert run.kind == RunKind.EVALUATE
    assert run.tags[Tag.MODEL_URI] == CHAMPION and run.tags[Tag.SPLIT] == "test"
    assert run.tags.get(Tag.DATA_DIGEST) and run.predictions is not None
    assert Artifact.evaluation("test", "confusion_matrix") in run.images
    assert run in roundtrip.context["others"]


def test_every_report_section_is_filled(roundtrip: RoundTrip, study_store: StudyStore) -> None:
    context = roundtrip.context
    assert [r.run.run_id for r in context["rows"]] == list(study_store.top_level_run_ids)
    assert context["datasets"] and all(d["scan"] for d in context["datasets"])
    assert {s["run"].kind for s in context["splits"]} == {RunKind.TRAIN, RunKind.TUNE,
                                                           RunKind.CV_FOLD}
    for method in context["methods"]:
        assert method["devices"] != "–" and method["environment"] != "–" and method["commit"]
    assert {g["run"].run_id for g in context["galleries"]} >= set(study_store.train_run_ids)
    (search,) = context["searches"]
    assert search["columns"] and search["data"] and search["space"] and search["chart"]
    assert search["objective"] and search["tuner"] and search["best_trial"]
    (cv,) = context["cvs"]
    assert len(cv["folds"]) == 2 and cv["chart"]
    assert cv["final"] is not None and cv["final"].kind == RunKind.CV_FINAL
    assert cv["final"] not in context["others"]  # shown in its CV's section, not apart
    (explained,) = context["explanations"]
    captions = [i["caption"] for i in explained["images"]]
    assert any(c.startswith("Grad-CAM ") for c in captions)
    assert any(c.startswith("Patient map: ") for c in captions)
    for entry in context["reproduce"]:
        assert entry["command"] and entry["data_digest"] and entry["commit"]


def test_the_report_run_names_what_it_covers_and_is_never_reported(
    roundtrip: RoundTrip, study_store: StudyStore
) -> None:
    from histomlf.report.store import ReportSelectionError, ReportStore

    run = roundtrip.client.get_run(roundtrip.report_run_id)
    assert run.data.tags[Tag.KIND] == RunKind.REPORT and run.data.tags.get(MlflowTag.NOTE)
    assert set(study_store.top_level_run_ids) <= set(run.data.tags[Tag.REPORT_RUNS].split(","))
    files = {f.path for f in roundtrip.client.list_artifacts(run.info.run_id,
                                                              Artifact.REPORT_FOLDER)}
    assert Artifact.REPORT_RUNS in files
    with pytest.raises(ReportSelectionError):
        ReportStore(study_store.tracking_uri).select([REPORT_EXPERIMENT])


def test_the_web_model_card_reads_the_champion_and_the_search_winner(
    roundtrip: RoundTrip, study_store: StudyStore
) -> None:
    from histomlf.web.model_card import describe_model

    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):
        champion = describe_model(CHAMPION)
        winner = describe_model(roundtrip.records[study_store.tune_parent_id]
                                .tags[Tag.BEST_MODEL_URI])
    assert champion.name == "idc-study" and champion.version and "champion" in champion.aliases
    assert champion.run_id == study_store.train_run_ids[0]
    for card in (champion, winner):
        assert card.backbone and card.weights and card.data_source
        assert card.data_digest and card.split_digest and card.run_name
        assert card.split_sizes.get("test_patients")
        for metric in TABLED:
            assert f"test_{metric.name}" in card.metrics, metric.name
    assert all(f"test_{m.name}_ci_low" in champion.metrics for m in TABLED if m.bootstrap)


def test_the_web_model_card_reads_the_registered_cv_final_ensemble(
    roundtrip: RoundTrip, study_store: StudyStore
) -> None:
    from histomlf.web.model_card import describe_model

    (final,) = [r for r in roundtrip.study.children(study_store.cv_parent_id)
                if r.kind == RunKind.CV_FINAL]
    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):
        card = describe_model(CV_FINAL_CHAMPION)
        version = roundtrip.client.get_model_version(card.name, card.version)
    assert card.name == CV_FINAL_NAME and card.version and "champion" in card.aliases
    assert card.run_id == final.run_id and card.run_name == final.name
    assert card.backbone == version.tags[ModelMeta.MODEL]  # the ensemble's run has no `model`
    assert card.data_digest == final.tags[Tag.DATA_DIGEST]
    assert card.split_digest == final.tags[Tag.SPLIT_DIGEST]
    assert version.tags[VersionTag.KIND] == RunKind.CV_FINAL
    assert version.tags[VersionTag.FOLD_RUNS] and version.tags[VersionTag.GATE_SCORE]
    # Its scores are the out-of-fold ones, shown as such (it has no test split).
    assert card.scope == "oof" and not any(k.startswith("test_") for k in card.metrics)
    assert card.metrics["oof_roc_auc"] == final.metrics["oof_roc_auc"]
