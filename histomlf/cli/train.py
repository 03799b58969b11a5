"""`histomlf train`: the train recipe, tracked in MLflow (the `train`/`main` entry points)."""

from __future__ import annotations

import json

import click

from histomlf.cli.errors import check_tracking_server, user_errors
from histomlf.cli.options import experiment_option, load_checked_config, train_config_options
from histomlf.evaluation.metrics import HEADLINE, headline_keys


@click.command()
@experiment_option
@train_config_options
@click.option(
    "--json", "as_json", is_flag=True, help="print the run id, model URI and metrics as JSON"
)
def train(experiment: str, as_json: bool, **options) -> None:
    """Train one backbone on a patient-level split and log everything to MLflow."""
    check_tracking_server()
    config, _ = load_checked_config(experiment, options)

    from histomlf.recipes.train import train as train_recipe

    try:
        result = train_recipe(config)
    except user_errors() as error:
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    print_summary(result)


def print_summary(result: dict) -> None:
    """The run, its headline test metrics, the gate's verdict and the next three commands."""
    metrics = result["metrics"]
    click.echo(f"run {result['run_id']}  model {result['model_uri']}")
    for name in headline_keys("test_", HEADLINE):
        click.echo(f"  {name:24s} {metrics[name]:.4f}")
    gate = result.get("gate")
    if gate is not None:
        click.echo(f"registry: {gate.name} v{gate.version} -> {gate.alias} ({gate.reason})")
    if result.get("data_source") == "synthetic":
        click.echo(
            f"\nThese data were SYNTHETIC (experiment {result.get('experiment')}): generated "
            "patches whose classes differ by texture. The scores say nothing about real tissue."
        )
    click.echo("\nNext:")
    ui_path = result.get("ui_path", "")
    click.echo(f"  1. compare runs:   mlflow ui   (then open http://127.0.0.1:5000/{ui_path})")
    if gate is not None:
        click.echo(
            f"  2. serve it:       mlflow models serve -m models:/{gate.name}@champion "
            "--env-manager local -p 5001"
        )
        click.echo(
            "     then:           curl -s localhost:5001/invocations -H 'Content-Type: "
            "application/json' -d \"{\\\"dataframe_split\\\": {\\\"columns\\\": "
            "[\\\"image\\\"], \\\"data\\\": [[\\\"$(base64 -w0 patch.png)\\\"]]}}\""
        )
    click.echo(
        "  3. real data:      mlflow run . --env-manager local -P data_dir=/path/to/idc   "
        "(the Kaggle layout; `histomlf data fetch DEST` downloads it)"
    )
