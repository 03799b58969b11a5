"""The end of a search, logged on its parent run: leaderboard, best trial, winner on TEST.

The winner is the oracle's best trial. Its model is reloaded from the weights its trial was
scored with (kept in the trial folder) or, where that folder is on another machine, retrained
with its hyperparameters; it is then scored on the validation split (threshold) and, for the
first and only time in the search, on the TEST split with the full metric set. The model is
logged in the best trial's run (unless `log_models=all` already did) and, with `register_as`,
registered through the champion gate.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from histomlf.tracking import runs
from histomlf.tracking.tune_trial import SearchRun, log_trial_model


def summarise_search(tuner: Any, spec: Any, data: Any, search_run: SearchRun) -> dict[str, Any]:
    """Log the leaderboard, best trial and test evaluation; returns a result summary."""
    from histomlf.tracking.tune_run import SearchError, children_by_trial, leaderboard

    client = MlflowClient()
    settings = spec.settings
    oracle = tuner.oracle
    trials = list(oracle.trials.values())
    children = children_by_trial(client, search_run)
    board = leaderboard(trials, children, settings.objective, settings.objective_direction)
    mlflow.log_table(board, "search/leaderboard.json")
    runs.log_frame(board, "search/leaderboard.csv")
    counts = {f"trials_{status.lower()}": float(sum(t.status == status for t in trials))
              for status in ("COMPLETED", "FAILED", "INVALID")}
    mlflow.log_metrics({**counts, "trials_total": float(len(trials))})
    if settings.tuner == "hyperband":
        tag_hyperband_outcomes(client, trials, children)

    best_trials = [t for t in oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if not best_trials:
        raise SearchError(f"no trial of search {search_run.parent_run_id} completed; see the "
                          "FAILED trial runs' histomlf.error tags")
    best = best_trials[0]
    best_run = children.get(best.trial_id)
    best_run_id = best_run.info.run_id if best_run is not None else ""
    values = dict(best.hyperparameters.values)
    mlflow.set_tags({
        "histomlf.best_trial_id": best.trial_id,
        "histomlf.best_run_id": best_run_id,
        **{f"histomlf.best.{k.replace('/', '.')}": str(v) for k, v in values.items()},
    })  # fmt: skip
    mlflow.log_metric(f"best_{settings.objective}", float(best.score))
    runs.log_json({"trial_id": best.trial_id, "run_id": best_run_id, "objective":
                   settings.objective, "score": float(best.score), "hyperparameters": values},
                  "search/best.json")
    if best_run_id:
        client.set_tag(best_run_id, "histomlf.best_trial", "true")

    model, source, config = best_model(tuner, best)
    outcome = evaluate_best(config, data, model)
    mlflow.log_metrics(outcome.metrics())
    log_test_evaluation(outcome)
    mlflow.set_tag("histomlf.best_model_source", source)
    model_uri = log_best_model(client, best_run, model, outcome, settings.log_models)
    mlflow.set_tag("histomlf.best_model_uri", model_uri)
    result: dict[str, Any] = {
        "run_id": search_run.parent_run_id, "best_trial_id": best.trial_id,
        "best_run_id": best_run_id, "best_score": float(best.score),
        "objective": settings.objective, "model_uri": model_uri,
        "trials": {k: int(v) for k, v in counts.items()}, "metrics": outcome.metrics(),
    }  # fmt: skip
    if spec.config.register_as:
        from histomlf.tracking.train_run import register

        result["gate"] = register(config, outcome, model_uri, search_run.parent_run_id)
    return result


def best_model(tuner: Any, best: Any) -> tuple[Any, str, Any]:
    """(model, "reloaded" | "retrained", its config) for the best trial."""
    from histomlf.tuning.hypermodel import schedule

    hypermodel = tuner.hypermodel
    values = best.hyperparameters.values
    config = schedule(hypermodel.trial_config(best.hyperparameters), values.get("tuner/epochs"))
    saved = tuner.saved_model(best)
    if saved is not None:
        return saved[0], "reloaded", config
    observer, hypermodel.observer = hypermodel.observer, None
    try:
        hypermodel.start_trial(f"{best.trial_id}-retrain")
        model = hypermodel.build(best.hyperparameters)
        hypermodel.fit(best.hyperparameters, model, epochs=values.get("tuner/epochs"))
    finally:
        hypermodel.observer = observer
    return model, "retrained", config


def evaluate_best(config: Any, data: Any, model: Any) -> Any:
    """Threshold on val, then val/test/train metrics, patient metrics and bootstrap CIs."""
    from histomlf.training.workflow import TrainOutcome, evaluate_model

    return TrainOutcome(config=config, data=data, model=model, fit=None,
                        **evaluate_model(config, data, model))


def log_test_evaluation(outcome: Any) -> None:
    """The winner's test figures and predictions, named as `histomlf train` names them."""
    from histomlf.evaluation import plots
    from histomlf.evaluation.metrics import confusion

    test = outcome.test
    labels = test.rows["label"].to_numpy()
    probabilities, threshold = test.probabilities, outcome.threshold
    runs.log_json(confusion(labels, probabilities, threshold),
                  "evaluation/test_confusion_matrix.json")
    runs.log_figure(plots.confusion_matrix_figure(labels, probabilities, threshold),
                    "evaluation/test_confusion_matrix.png")
    runs.log_figure(plots.roc_figure(labels, probabilities, threshold), "evaluation/test_roc.png")
    runs.log_figure(plots.pr_figure(labels, probabilities, threshold), "evaluation/test_pr.png")
    runs.log_figure(plots.reliability_figure(labels, probabilities),
                    "evaluation/test_reliability.png")
    runs.log_frame(test.predictions_frame(threshold), "predictions/test_predictions.csv")
    runs.log_frame(outcome.patient_table, "predictions/test_patients.csv")
    runs.log_json({k: list(v) for k, v in outcome.test_ci.items()},
                  "evaluation/test_bootstrap_ci.json")


def log_best_model(client: MlflowClient, best_run: Any, model: Any, outcome: Any,
                   log_models: str) -> str:
    """The winner's model URI: logged by its trial already (`all`), else logged there now."""
    if best_run is None:
        return log_trial_model(model, outcome.threshold, outcome.config).model_uri
    logged = best_run.data.tags.get("histomlf.model_uri")
    if log_models == "all" and logged:
        return logged
    end_time = best_run.info.end_time
    with mlflow.start_run(run_id=best_run.info.run_id, nested=True):
        info = log_trial_model(model, outcome.threshold, outcome.config)
        mlflow.set_tag("histomlf.model_uri", info.model_uri)
    client.set_terminated(best_run.info.run_id, "FINISHED", end_time=end_time)
    return info.model_uri


def tag_hyperband_outcomes(client: MlflowClient, trials: list[Any],
                           children: dict[str, Any]) -> None:
    """`histomlf.hyperband.outcome`: promoted (continued in the next round), discarded, final."""
    promoted = {t.hyperparameters.values.get("tuner/trial_id") for t in trials} - {None}
    for trial in trials:
        run = children.get(trial.trial_id)
        values = trial.hyperparameters.values
        if run is None or "tuner/round" not in values:
            continue
        if trial.trial_id in promoted:
            outcome = "promoted"
        elif int(values["tuner/round"]) < int(values["tuner/bracket"]):
            outcome = "discarded"
        else:
            outcome = "final"
        client.set_tag(run.info.run_id, "histomlf.hyperband.outcome", outcome)
        client.set_tag(run.info.run_id, "histomlf.hyperband.discarded",
                       str(outcome == "discarded").lower())
