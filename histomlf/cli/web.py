"""`histomlf web`: the study's web page for one registered model (see `histomlf.web`)."""

from __future__ import annotations

import click

from histomlf.cli.errors import check_tracking_server, user_errors
from histomlf.web.security import (  # stdlib only: the CLI stays fast
    DEFAULT_SCORING_SLOTS,
    DEFAULT_SLIDE_MB,
    DEFAULT_SLIDE_SLOTS,
    MAX_SLIDE_MB,
)

DEFAULT_MODEL = "models:/idc-classifier@champion"



@click.command()
@click.option("--model", "model_uri", default=DEFAULT_MODEL, show_default=True,
              help="model URI to serve (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0 exposes the page to the network; it has no "
              "login: put an authenticating reverse proxy in front, see the README)")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="TCP port to listen on")
@click.option("--mlflow-ui-url", default=None,
              help="base URL of the MLflow UI (e.g. http://127.0.0.1:5000) to link the run")
@click.option("--scoring-slots", type=click.IntRange(1, 64), default=DEFAULT_SCORING_SLOTS,
              show_default=True,
              help="uploads scored at once; one more is answered 503 with Retry-After")
@click.option("--slide-max-mb", type=click.IntRange(1, MAX_SLIDE_MB), default=DEFAULT_SLIDE_MB,
              show_default=True,
              help="largest whole-slide file accepted, in MB (streamed to a private temporary "
              "file; 413 past it)")
@click.option("--slide-slots", type=click.IntRange(1, 8), default=DEFAULT_SLIDE_SLOTS,
              show_default=True,
              help="slides uploaded or scored at once, apart from --scoring-slots; one more "
              "is answered 503 with Retry-After")
def web(model_uri: str, host: str, port: int, mlflow_ui_url: str | None,
        scoring_slots: int, slide_max_mb: int, slide_slots: int) -> None:
    """Serve the web page: upload patches, a patient's zip or a whole-slide image; see P(IDC),
    Grad-CAM, the patient map, the slide's heatmap."""
    check_tracking_server()
    from histomlf.web.model_card import ModelCardError, describe_model

    try:  # before TensorFlow is imported: a wrong URI fails in seconds
        card = describe_model(model_uri)
    except ModelCardError as error:
        raise click.ClickException(str(error)) from None
    from histomlf.web.server import serve

    try:
        serve(card, host=host, port=port, mlflow_ui_url=mlflow_ui_url,
              scoring_slots=scoring_slots, slide_max_mb=slide_max_mb, slide_slots=slide_slots)
    except user_errors() as error:
        raise click.ClickException(str(error).strip().splitlines()[-1]) from error
