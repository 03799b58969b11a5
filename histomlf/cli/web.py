"""`histomlf web`: the study's web page for one registered model (see `histomlf.web`)."""

from __future__ import annotations

import click

from histomlf.cli.errors import check_tracking_server, user_errors

DEFAULT_MODEL = "models:/idc-classifier@champion"


@click.command()
@click.option("--model", "model_uri", default=DEFAULT_MODEL, show_default=True,
              help="model URI to serve (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0 exposes the page to the network)")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="TCP port to listen on")
@click.option("--mlflow-ui-url", default=None,
              help="base URL of the MLflow UI (e.g. http://127.0.0.1:5000) to link the run")
def web(model_uri: str, host: str, port: int, mlflow_ui_url: str | None) -> None:
    """Serve the web page: upload patches or a patient's zip, see P(IDC), Grad-CAM, the map."""
    check_tracking_server()
    from histomlf.web.model_card import ModelCardError, describe_model

    try:  # before TensorFlow is imported: a wrong URI fails in seconds
        card = describe_model(model_uri)
    except ModelCardError as error:
        raise click.ClickException(str(error)) from None
    from histomlf.web.server import serve

    try:
        serve(card, host=host, port=port, mlflow_ui_url=mlflow_ui_url)
    except user_errors() as error:
        raise click.ClickException(str(error).strip().splitlines()[-1]) from error
