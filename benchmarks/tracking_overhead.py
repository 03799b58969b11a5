"""What MLflow tracking costs: a tracked training run and tuning trials against untracked ones.

    .venv/bin/python -m benchmarks.tracking_overhead [--quick] [--json out.json]

Training: the default recipe on the real sample (simplecnn, light augment, class weights,
early stopping off so both runs train the same epochs; ~1 minute of training in full mode)
runs as `histomlf.recipes.train.train` (params, tags, config, environment facts
and pip freeze, dataset input, per-epoch metrics, system metrics, final metrics, plots,
predictions, the pyfunc model) and as the untracked `histomlf.training.workflow.train_and_score`
(prepare_data + train: the same fit and evaluation, nothing logged). Each run is a fresh
process into a fresh sqlite store; scan and packed cache are built beforehand and shared, so
neither pays them; the tracked process creates its store before the clock starts (a user's
very first run pays that once; its seconds are in the details). Untracked and tracked
alternate; the best of each counts, and the median of each tracked run minus the untracked
run before it is printed too. Timed: the call itself (imports excluded; the process wall time
including imports is in the details).

Tuning: a tiny Keras Tuner search (experiments/tune_smoke.yaml, random search) with
`MlflowTrialTracker` (a nested run per trial, params, per-epoch metrics, validation confusion
matrix) and with `NoTracking`; a `TrialClock` around either clocks each trial from the tuner's
`trial_began` to its `trial_ended` (Keras Tuner's `on_trial_begin` to `on_trial_end`).
Target: tracked training wall time <= 1.05x untracked.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_CACHE, SAMPLE_DIR, cli, row, run_python_json

# 24 epochs of the whole sample: about one minute untracked on a quiet 2-core machine.
FULL = {"epochs": 24, "max_samples": 0, "repeats": 5, "trials": 3, "trial_samples": 600}
QUICK = {"epochs": 1, "max_samples": 300, "repeats": 1, "trials": 1, "trial_samples": 100}


def train_overrides(plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "data_dir": str(SAMPLE_DIR),
        "epochs": plan["epochs"],
        "max_samples": plan["max_samples"],
        "early_stopping_patience": 0,
        # Explanations are a feature of their own, timed by benchmarks/explain_speed.py and
        # the runs' seconds_explain; this measures what logging costs.
        "explain": False,
    }


def child_train(mode: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """One training run in this process, `tracked` or `untracked`; returns its seconds."""
    from histomlf.config import load_experiment

    config, _ = load_experiment("default", overrides)
    store_seconds = 0.0
    if mode == "tracked":
        # The store exists, as it does for every run but a user's very first: creating a fresh
        # sqlite store (schema migrations) is a one-off, timed apart.
        import mlflow  # noqa: F401 - imported before the store clock

        store_started = time.perf_counter()
        use_experiment_beside_store(os.environ["MLFLOW_EXPERIMENT_NAME"])
        store_seconds = time.perf_counter() - store_started
    import keras  # noqa: F401 - imports are not timed: TensorFlow's alone takes ~5 s
    import tensorflow  # noqa: F401

    import histomlf.training.workflow as workflow

    fit_seconds = clock_calls(workflow, "train_and_score")  # the same call in both modes
    started = time.perf_counter()
    if mode == "prepare":
        workflow.prepare_data(config)
    elif mode == "untracked":
        with tempfile.TemporaryDirectory() as work:
            data = workflow.prepare_data(config)
            outcome = workflow.train_and_score(config, work_dir=Path(work), data=data)
        epochs = outcome.fit.epochs_run
    else:
        from histomlf.recipes.train import train as train_and_log

        result = train_and_log(config)
        epochs = int(config.epochs)
        assert result["model_uri"]
    seconds = time.perf_counter() - started
    return {
        "mode": mode,
        "seconds": seconds,
        "epochs": 0 if mode == "prepare" else epochs,
        "store_creation_seconds": store_seconds,
        "train_call_seconds": sum(fit_seconds),
    }


def clock_calls(module: Any, name: str) -> list[float]:
    """Wrap `module.name` so each call's seconds are appended to the returned list."""
    original, seconds = getattr(module, name), []

    def clocked(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    setattr(module, name, clocked)
    return seconds


def use_experiment_beside_store(name: str) -> None:
    """Create and select experiment `name` with its artifacts beside the sqlite store (the
    default, ./mlruns, would land in the working directory: the repository)."""
    import mlflow

    store = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=(store / "artifacts").as_uri())
    mlflow.set_experiment(name)


class TrialClock:
    """A `TrialTracker` around another, recording each trial's seconds from begin to end."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.trial_seconds: list[float] = []
        self._clock = 0.0

    def trial_began(self, start: Any) -> None:
        self._clock = time.perf_counter()
        self.inner.trial_began(start)

    def epoch_ended(self, step: int, logs: dict[str, Any]) -> None:
        self.inner.epoch_ended(step, logs)

    def trial_scored(self, outcome: Any) -> None:
        self.inner.trial_scored(outcome)

    def trial_ended(self, trial_id: str, status: str, message: str | None) -> None:
        self.inner.trial_ended(trial_id, status, message)
        self.trial_seconds.append(time.perf_counter() - self._clock)


def child_tune(mode: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A tiny search in this process, with or without trial tracking; per-trial seconds."""
    import mlflow

    from histomlf.tracking.tune_trial import MlflowTrialTracker, SearchRun
    from histomlf.training.workflow import prepare_data
    from histomlf.tuning.hypermodel import IdcHyperModel
    from histomlf.tuning.settings import load_search
    from histomlf.tuning.space import SearchSpace
    from histomlf.tuning.trials import NoTracking
    from histomlf.tuning.tuners import create_tuner

    config, settings = load_search("tune_smoke", overrides)
    data = prepare_data(config)
    space = SearchSpace.from_mapping(settings.space, config)
    with tempfile.TemporaryDirectory() as directory:
        hypermodel = IdcHyperModel(config, settings, space, data=lambda: data,
                                   work_root=Path(directory) / "work")  # fmt: skip
        if mode == "tracked":
            use_experiment_beside_store("bench-tune")
            with mlflow.start_run(run_name="bench-search") as parent:
                search_run = SearchRun(
                    parent.info.run_id,
                    parent.info.experiment_id,
                    settings.tuner,
                    settings.log_models,
                    config.experiment,
                )
                clock = TrialClock(MlflowTrialTracker(search_run))
                create_tuner(hypermodel, settings, config, Path(directory), tracker=clock).search()
        else:
            clock = TrialClock(NoTracking())
            create_tuner(hypermodel, settings, config, Path(directory), tracker=clock).search()
    return {"mode": mode, "trial_seconds": clock.trial_seconds}


def spawn(kind: str, mode: str, overrides: dict[str, Any], store: Path) -> dict[str, Any]:
    """Run a child in a fresh process against a fresh sqlite store under `store`."""
    folder = Path(tempfile.mkdtemp(prefix=f"{kind}-{mode}-", dir=store))
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
        "HISTOMLF_CACHE": str(BENCH_CACHE / "tracking-cache"),
        "MLFLOW_EXPERIMENT_NAME": "bench",
    }
    args = ["-m", "benchmarks.tracking_overhead", "--child", kind, mode, json.dumps(overrides)]
    started = time.perf_counter()
    result = run_python_json(args, timeout=1800, env=env)
    result["process_seconds"] = time.perf_counter() - started
    return result


def run(quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    overrides = train_overrides(plan)
    with tempfile.TemporaryDirectory(prefix="histomlf-track-bench-") as tmp:
        store = Path(tmp)
        if not quick:  # builds scan and packed cache, so neither timed run pays for them
            spawn("train", "prepare", overrides, store)
        runs: dict[str, list[dict]] = {"untracked": [], "tracked": []}
        for _ in range(plan["repeats"]):
            for mode in ("untracked", "tracked"):
                runs[mode].append(spawn("train", mode, overrides, store))
        tune_overrides = {"data_dir": str(SAMPLE_DIR), "max_trials": plan["trials"],
                          "max_samples": plan["trial_samples"]}  # fmt: skip
        trials = {mode: spawn("tune", mode, tune_overrides, store)["trial_seconds"]
                  for mode in ("untracked", "tracked")}  # fmt: skip
    best = {mode: min(r["seconds"] for r in results) for mode, results in runs.items()}
    ratio = best["tracked"] / best["untracked"]
    # Each tracked run against the untracked run just before it (same load, minutes apart).
    paired = [
        t["seconds"] - u["seconds"] for u, t in zip(runs["untracked"], runs["tracked"], strict=True)
    ]
    store_creation = statistics.median(r["store_creation_seconds"] for r in runs["tracked"])
    # Seconds outside `workflow.train_and_score` (the same fit and evaluation in both modes): what
    # logging adds before and after the fit, without the fit's run-to-run noise.
    around = {
        mode: statistics.median(r["seconds"] - r["train_call_seconds"] for r in results)
        for mode, results in runs.items()
    }
    trial_mean = {mode: statistics.fmean(values) for mode, values in trials.items()}
    rows = [
        row("tracking_overhead", f"recipe vs untracked train ({plan['epochs']} epochs)",
            best["tracked"], "s", baseline=best["untracked"], baseline_name="untracked train",
            target="<= 1.05x", met=ratio <= 1.05,
            note=f"overhead {best['tracked'] - best['untracked']:+.1f} s, best of "
                 f"{plan['repeats']}; paired median {statistics.median(paired):+.1f} s; "
                 f"outside the fit {around['tracked']:.1f} vs {around['untracked']:.1f} s; "
                 f"store exists (a fresh sqlite store costs {store_creation:.1f} s once)"),
        row("tracking_overhead", f"tuning trial, tracked ({plan['trials']} trials)",
            trial_mean["tracked"], "s/trial", baseline=trial_mean["untracked"],
            baseline_name="untracked trial",
            note=f"overhead {trial_mean['tracked'] - trial_mean['untracked']:+.2f} s/trial"),
    ]  # fmt: skip
    return {"benchmark": "tracking_overhead", "rows": rows, "plan": plan, "train_runs": runs,
            "paired_overhead_seconds": paired, "outside_fit_seconds": around,
            "trial_seconds": trials}  # fmt: skip


def child_main(argv: list[str]) -> None:
    kind, mode, overrides = argv[0], argv[1], json.loads(argv[2])
    result = child_train(mode, overrides) if kind == "train" else child_tune(mode, overrides)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        cli(__doc__.splitlines()[0], run)
