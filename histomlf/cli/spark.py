"""`histomlf predict --engine spark`: the Spark branch of `predict`, kept apart so the verb's
module stays small."""

from __future__ import annotations

import json
from pathlib import Path

import click

from histomlf.cli.errors import user_errors


def check_java() -> None:
    """Java for Spark, before TensorFlow, MLflow or a JVM: seconds, one line."""
    from histomlf.spark.session import SparkUnavailable, java_executable

    try:
        java_executable()
    except SparkUnavailable as error:
        raise click.ClickException(str(error)) from error


def predict_on_spark(model_uri: str, data: str, out: Path, master: str) -> None:
    """Run `recipes.spark_predict` and print its result as one JSON line; errors are one line."""
    from histomlf.spark.session import SparkSettings, SparkUnavailable

    if out == Path("predictions.csv"):  # the CSV default of the in-process engine
        out = Path("predictions")
    try:  # Java was checked by `check_java`, before the store was asked for the model
        from histomlf.recipes.spark_predict import spark_predict

        result = spark_predict(model_uri, data, out, settings=SparkSettings(master=master))
    except (SparkUnavailable, *user_errors()) as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(result, default=float))
