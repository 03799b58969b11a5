"""`histomlf explain`: Grad-CAM overlays and patient maps of a logged model on any data."""

from __future__ import annotations

from pathlib import Path

import click

from histomlf.cli.errors import check_tracking_server, shown_as_one_line
from histomlf.schema import Folder


@click.command()
@click.argument("model_uri")
@click.argument("data")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help=f"folder to write {Folder.EXPLAIN}/ into (must not already hold one)",
)
@click.option("--patients", default="", help="comma-separated patient ids to map (default: "
              "the few with most patches and the worst by error)")
@click.option("--patches", "patches_per_kind", type=int, default=2, show_default=True,
              help="Grad-CAM overlays per kind (TP, TN, FP, FN)")
@click.option("--smoothgrad", is_flag=True, help="average gradients over noisy copies")
def explain(model_uri: str, data: str, out: Path, patients: str, patches_per_kind: int,
            smoothgrad: bool) -> None:
    """Explain MODEL_URI (runs:/..., models:/NAME@champion) on DATA (a folder or manifest CSV)."""
    check_tracking_server()
    from histomlf.recipes.explain import explain_model

    chosen = [p.strip() for p in patients.split(",")] if patients.strip() else None
    with shown_as_one_line():
        index = explain_model(model_uri, data, out, patients=chosen,
                              patches_per_kind=patches_per_kind, smoothgrad=smoothgrad)
    click.echo(f"wrote {len(index['gradcam'])} Grad-CAM overlays and "
               f"{len(index['patients'])} patient maps under {out / 'explain'}")
