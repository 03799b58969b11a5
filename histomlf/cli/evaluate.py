"""`histomlf evaluate`, `histomlf predict` and `histomlf cv`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from histomlf.choices import FINAL_CHOICES
from histomlf.cli.errors import check_tracking_server, shown_as_one_line
from histomlf.cli.options import (
    config_options,
    engine_options,
    experiment_name_option,
    experiment_option,
    load_checked_config,
    use_experiment_name,
)
from histomlf.errors import UserError
from histomlf.evaluation.metrics import BRIEF, headline_keys
from histomlf.model_uri import check_model_uri
from histomlf.tracking.lookup import check_model_exists


def check_inputs(model_uri: str, data: str) -> None:
    """A malformed model URI or a missing DATA is one line before MLflow or TensorFlow loads."""
    check_model_uri(model_uri)
    if not data.startswith("s3://") and not Path(data).expanduser().exists():
        raise UserError(f"no data at {data!r}: give a dataset folder or a manifest CSV")


@click.command()
@click.argument("model_uri")
@click.argument("data")
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train", "all"]),
    default="test",
    show_default=True,
    help="which patient split to score; `all` scores every row",
)
@click.option(
    "--split-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="patient split CSV (default: the one the model's training run logged)",
)
def evaluate(model_uri: str, data: str, split: str, split_file: Path | None) -> None:
    """Score MODEL_URI on DATA (a dataset folder or manifest CSV) and log the metrics."""
    with shown_as_one_line():
        check_inputs(model_uri, data)
    check_tracking_server()
    with shown_as_one_line():
        check_model_exists(model_uri)
    from histomlf.recipes.evaluate import evaluate as evaluate_recipe

    with shown_as_one_line():
        result = evaluate_recipe(model_uri, data, split=split, split_file=split_file)
    click.echo(json.dumps(result, default=float))


@click.command()
@click.argument("model_uri")
@click.argument("data")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("predictions.csv"),
    show_default=True,
    help="per-patch CSV; the per-patient summary goes beside it (--engine spark: a folder)",
)
@click.option("--batch-size", type=int, default=256, show_default=True)
@engine_options("local: in this process; spark: on Apache Spark (DATA may also be s3://bucket/prefix)")
def predict(model_uri: str, data: str, out: Path, batch_size: int, engine: str,
            master: str) -> None:
    """Predict every patch of DATA (a dataset folder or manifest CSV) with MODEL_URI."""
    with shown_as_one_line():
        check_inputs(model_uri, data)
    if engine == "spark":
        from histomlf.cli.spark import check_java

        check_java()  # an environment check first: without Java nothing else matters
    check_tracking_server()
    with shown_as_one_line():
        check_model_exists(model_uri)
    if engine == "spark":
        from histomlf.cli.spark import predict_on_spark

        predict_on_spark(model_uri, data, out, master)
        return
    if out.is_dir():
        raise click.ClickException(f"--out is a folder ({out}); the local engine writes a CSV")
    from histomlf.recipes.evaluate import predict as predict_recipe

    with shown_as_one_line():
        patches, patients = predict_recipe(model_uri, data, out, batch_size=batch_size)
    click.echo(f"wrote {patches} and {patients}")


@click.command()
@experiment_option
@experiment_name_option
@click.option("--folds", type=int, default=5, show_default=True, help="number of patient folds")
@click.option(
    "--only-folds",
    default="",
    help="comma-separated fold numbers (1-based) to train, e.g. 1,2: a screen on a subset of "
    "the same seeded folds",
)
@click.option(
    "--log-models",
    type=bool,
    default=False,
    show_default=True,
    help="log each fold's model (true/false), e.g. to rescore the folds with TTA later",
)
@click.option(
    "--final",
    type=click.Choice(FINAL_CHOICES),
    default="none",
    show_default=True,
    help="ensemble: after the folds, their models averaged into one calibrated model with "
    "out-of-fold scores; refit: one model trained on every patient for the folds' median "
    "epochs, with the same threshold, calibration and out-of-fold scores (a nested cv-final "
    "run; registered with --register-as)",
)
@config_options("cv")
def cv(
    experiment: str,
    experiment_name: str,
    folds: int,
    only_folds: str,
    log_models: bool,
    final: str,
    **options,
) -> None:
    """K-fold cross-validation by patient: a nested run per fold, mean and sd on the parent;
    with --final ensemble, the fold models as one calibrated, registered final model (with
    --final refit, one model trained on every patient)."""
    if folds < 2:
        raise click.ClickException("--folds must be at least 2")
    try:
        chosen = tuple(int(part) for part in only_folds.split(",") if part.strip())
    except ValueError:
        raise click.ClickException(
            f"--only-folds takes fold numbers like 1,2; got {only_folds!r}"
        ) from None
    if not all(1 <= fold <= folds for fold in chosen):
        raise click.ClickException(f"--only-folds: fold numbers run from 1 to {folds}")
    if final == "none" and options.get("register_as"):
        raise click.ClickException(
            "--register-as registers the final model of --final ensemble|refit; a plain cv "
            "has none"
        )
    with shown_as_one_line():
        config, _ = load_checked_config(experiment, options)
        use_experiment_name(experiment_name)
        from histomlf.recipes.cv_final import check_final

        check_final(final, config.calibrate, folds, chosen)
    check_tracking_server()
    from histomlf.recipes.cv import cross_validate

    with shown_as_one_line():
        result = cross_validate(
            config,
            folds,
            chosen,
            log_models=log_models,
            final=final,
            register_as=config.register_as if final != "none" else "",
        )
    for key in headline_keys("test_", BRIEF):
        mean, sd = result["summary"].get(f"{key}_mean"), result["summary"].get(f"{key}_sd")
        if mean is not None:
            click.echo(f"{key:24s} {mean:.4f} ± {sd:.4f}")
    click.echo(f"run {result['run_id']}")
    if "final" in result:
        done = result["final"]
        scores = done["metrics"]
        click.echo(
            f"final {done['final']} {done['model_uri']}: "
            f"out-of-fold on {done['patients']} patients "
            f"ROC-AUC {scores['oof_roc_auc']:.4f}, ECE {scores['oof_ece_uncalibrated']:.3f} -> "
            f"{scores['oof_ece']:.3f} after calibration"
        )
        if "gate" in done:
            gate = done["gate"]
            click.echo(f"registered {gate.name} v{gate.version} as @{gate.alias}: {gate.reason}")
