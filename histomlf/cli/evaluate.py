"""`histomlf evaluate`, `histomlf predict` and `histomlf cv`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from histomlf.cli.errors import check_tracking_server, user_errors
from histomlf.cli.options import experiment_option, load_checked_config, train_config_options


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
    check_tracking_server()
    from histomlf.recipes.evaluate import evaluate as evaluate_recipe

    try:
        result = evaluate_recipe(model_uri, data, split=split, split_file=split_file)
    except user_errors() as error:
        raise click.ClickException(str(error)) from error
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
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: in this process; spark: on Apache Spark (DATA may also be s3://bucket/prefix)",
)
@click.option("--master", default="local[*]", show_default=True,
              help="Spark master URL for --engine spark (local[N], spark://host:port, k8s://...)")
def predict(model_uri: str, data: str, out: Path, batch_size: int, engine: str,
            master: str) -> None:
    """Predict every patch of DATA (a dataset folder or manifest CSV) with MODEL_URI."""
    check_tracking_server()
    if engine == "spark":
        from histomlf.cli.spark import predict_on_spark

        predict_on_spark(model_uri, data, out, master)
        return
    if out.is_dir():
        raise click.ClickException(f"--out is a folder ({out}); the local engine writes a CSV")
    from histomlf.recipes.evaluate import predict as predict_recipe

    try:
        patches, patients = predict_recipe(model_uri, data, out, batch_size=batch_size)
    except user_errors() as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {patches} and {patients}")


@click.command()
@experiment_option
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
@train_config_options
def cv(experiment: str, folds: int, only_folds: str, log_models: bool, **options) -> None:
    """K-fold cross-validation by patient: a nested run per fold, mean and sd on the parent."""
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
    check_tracking_server()
    config, _ = load_checked_config(experiment, options)
    from histomlf.recipes.cv import cross_validate

    try:
        result = cross_validate(config, folds, chosen, log_models=log_models)
    except user_errors() as error:
        raise click.ClickException(str(error)) from error
    for key in ("test_roc_auc", "test_balanced_accuracy", "test_f1"):
        mean, sd = result["summary"].get(f"{key}_mean"), result["summary"].get(f"{key}_sd")
        if mean is not None:
            click.echo(f"{key:24s} {mean:.4f} ± {sd:.4f}")
    click.echo(f"run {result['run_id']}")
