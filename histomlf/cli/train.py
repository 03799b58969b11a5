"""`histomlf train`: the train recipe, tracked in MLflow (the `train`/`main` entry points)."""

from __future__ import annotations

import json

import click

from histomlf.cli.errors import check_tracking_server, shown_as_one_line
from histomlf.cli.options import (
    config_options,
    experiment_name_option,
    experiment_option,
    load_checked_config,
    use_experiment_name,
)
from histomlf.evaluation.metrics import HEADLINE, headline_keys


@click.command()
@experiment_option
@experiment_name_option
@config_options("train")
@click.option(
    "--json", "as_json", is_flag=True, help="print the run id, model URI and metrics as JSON"
)
def train(experiment: str, experiment_name: str, as_json: bool, **options) -> None:
    """Train one backbone on a patient-level split and log everything to MLflow."""
    with shown_as_one_line():  # every check before MLflow or TensorFlow is imported
        config, _ = load_checked_config(experiment, options)
        use_experiment_name(experiment_name)
    check_tracking_server()

    from histomlf.recipes.train import train as train_recipe

    with shown_as_one_line():
        result = train_recipe(config)
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    print_summary(result)


def next_steps(result: dict) -> list[str]:
    """What to do after a run, in order; the list is numbered as printed."""
    gate = result.get("gate")
    steps = [
        f"compare runs:   mlflow ui   (then open http://127.0.0.1:5000/{result.get('ui_path', '')})"
    ]
    if gate is not None:
        champion = f"models:/{gate.name}@champion"
        steps.append(
            f"serve it:       mlflow models serve -m {champion} --env-manager local -p 5001\n"
            "     then:           curl -s localhost:5001/invocations -H 'Content-Type: "
            "application/json' -d \"{\\\"dataframe_split\\\": {\\\"columns\\\": "
            "[\\\"image\\\"], \\\"data\\\": [[\\\"$(base64 -w0 patch.png)\\\"]]}}\""
        )
        steps.append(
            f"the website:    histomlf web --model {champion}   (then open "
            "http://127.0.0.1:8080: upload patches or a patient's zip)"
        )
    steps.append(
        "real data:      mlflow run . --env-manager local -P data_dir=/path/to/idc   "
        "(the Kaggle layout; `histomlf data fetch DEST` downloads it)"
    )
    return steps


def print_summary(result: dict) -> None:
    """The run, its headline test metrics, the gate's verdict and what to do next."""
    metrics = result["metrics"]
    click.echo(f"run {result['run_id']}  model {result['model_uri']}")
    for name in headline_keys("test_", HEADLINE):
        click.echo(f"  {name:24s} {metrics[name]:.4f}")
    calibration = result.get("calibration")
    if calibration:
        click.echo(f"calibration: {calibration}")
    gate = result.get("gate")
    if gate is not None:
        click.echo(f"registry: {gate.name} v{gate.version} -> {gate.alias} ({gate.reason})")
    if result.get("data_source") == "synthetic":
        click.echo(
            f"\nThese data were SYNTHETIC (experiment {result.get('experiment')}): generated "
            "patches whose classes differ by texture. The scores say nothing about real tissue."
        )
    click.echo("\nNext:")
    for number, step in enumerate(next_steps(result), start=1):
        click.echo(f"  {number}. {step}")
