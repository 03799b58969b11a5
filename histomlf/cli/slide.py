"""`histomlf slide predict MODEL_URI SLIDE|FOLDER --out DIR`: whole-slide images.

Options have snake_case twins (`--slide_mpp`): `mlflow run -e slide -P slide_mpp=0.25` passes
undeclared parameters as `--slide_mpp 0.25`.
"""

from __future__ import annotations

from pathlib import Path

import click

from histomlf.cli.errors import check_tracking_server, user_errors
from histomlf.cli.options import engine_options
from histomlf.schema import SlideArtifact


@click.group()
def slide() -> None:
    """Whole-slide images (Aperio SVS, generic tiled TIFF, NDPI, MIRAX, DICOM via OpenSlide)."""


@slide.command()
@click.argument("model_uri")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="output folder (a folder of slides: one sub-folder per slide plus "
    f"{SlideArtifact.FOLDER_SUMMARY})",
)
@click.option(
    "--slide-mpp",
    "--slide_mpp",
    type=float,
    default=None,
    help="the slide's level-0 µm/px, for slides whose metadata lacks it (overrides it)",
)
@click.option(
    "--patch-mpp",
    "--patch_mpp",
    type=float,
    default=None,
    help="the model's µm/px, only for models logged before they recorded it (Kaggle IDC: 4)",
)
@click.option(
    "--min-tissue",
    "--min_tissue",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="score a tile when at least this share of it is tissue (0: every tile, glass too)",
)
@click.option(
    "--stride",
    type=int,
    default=None,
    help="step between tiles in model pixels (default: the patch size, no overlap; e.g. 25 "
    "for half-overlapping tiles averaged per pixel)",
)
@click.option(
    "--ink-filter/--no-ink-filter",
    "ink_filter",
    default=True,
    show_default=True,
    help="leave out pen-marker strokes (saturated but not H&E-coloured)",
)
@click.option(
    "--tissue-threshold",
    "--tissue_threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="fixed HSV-saturation threshold of the tissue mask (default: Otsu, clipped)",
)
@click.option("--workers", type=int, default=2, show_default=True, help="tile-reading threads")
@engine_options(
    "local: in this process; spark: one Spark task per slide (OUT on a shared filesystem)"
)
def predict(
    model_uri: str,
    source: Path,
    out: Path,
    slide_mpp: float | None,
    patch_mpp: float | None,
    min_tissue: float,
    stride: int | None,
    ink_filter: bool,
    tissue_threshold: float | None,
    workers: int,
    engine: str,
    master: str,
) -> None:
    """Score SOURCE (a slide file or a folder of them) with MODEL_URI at the model's scale.

    Writes heatmap.png, tissue.png, tiles.csv, tiles.geojson, idc_regions.geojson and
    summary.json per slide, tracked as MLflow runs of kind `slide`.
    """
    from histomlf.slides.predict import SlideOptions
    from histomlf.slides.reader import SlideError

    try:
        options = SlideOptions(
            slide_mpp=slide_mpp, min_tissue=min_tissue, stride=stride, ink_filter=ink_filter,
            tissue_threshold=tissue_threshold, workers=workers,
        )  # fmt: skip
    except SlideError as error:
        raise click.ClickException(str(error)) from error
    check_tracking_server()
    if engine == "spark":
        result = _on_spark(model_uri, source, out, options, patch_mpp, master)
    else:
        result = _in_process(model_uri, source, out, options, patch_mpp)
    _report(result, out)


def _on_spark(model_uri, source, out, options, patch_mpp, master):
    from histomlf.spark.session import SparkSettings, SparkUnavailable, java_executable

    try:
        java_executable()  # before TensorFlow, MLflow or a JVM: seconds, one line
        from histomlf.recipes.spark_slide import spark_predict_slides

        return spark_predict_slides(model_uri, source, out, options, patch_mpp=patch_mpp,
                                    settings=SparkSettings(master=master))
    except (SparkUnavailable, *user_errors()) as error:
        raise click.ClickException(_one_line(error)) from error


def _in_process(model_uri, source, out, options, patch_mpp):
    from tqdm.auto import tqdm

    from histomlf.recipes.slide import predict_slides

    bars: dict[Path, tqdm] = {}

    def progress(path: Path, done: int, total: int) -> None:
        bar = bars.get(path)
        if bar is None:
            bar = bars[path] = tqdm(total=total, unit="tile", desc=path.name, leave=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    try:
        return predict_slides(
            model_uri, source, out, options, patch_mpp=patch_mpp, progress=progress
        )
    except user_errors() as error:
        raise click.ClickException(_one_line(error)) from error


def _report(result, out: Path) -> None:
    for row in result.rows:
        if row["status"] == "ok":
            click.echo(
                f"{row['slide']}: {row['tiles']} tiles, tissue {row['tissue_area_mm2']:.2f} mm², "
                f"IDC {row['idc_area_mm2']:.2f} mm² ({100 * row['idc_share']:.1f} %), "
                f"{row['idc_foci']} foci"
            )
        else:
            click.echo(f"{row['slide']}: FAILED: {row['error']}", err=True)
    click.echo(f"wrote {out} (run {result.run_id})")
    if result.failures:
        message = (f"{len(result.failures)} of {len(result.rows)} slides failed "
                   f"(see {SlideArtifact.FOLDER_SUMMARY})")
        if len(result.failures) == len(result.rows):
            raise click.ClickException(message)  # nothing scored: a failed command
        click.echo(f"warning: {message}", err=True)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


@slide.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--size-px", type=click.IntRange(min=1000), default=40_000, show_default=True,
              help="width and height of level 0 in pixels")
@click.option("--mpp", type=click.Choice(["0.25", "0.5", "1", "2", "4"]), default="0.25",
              show_default=True, help="level-0 µm/px (a divisor of the patches' 4 µm/px)")
@click.option("--seed", type=int, default=0, show_default=True)
def synth(out: Path, size_px: int, mpp: str, seed: int) -> None:
    """Write a synthetic H&E slide (pyramidal TIFF) from the spatial synthetic generator.

    One ragged piece of tissue with coherent IDC blobs, each 200 µm cell one synthetic patch,
    written tile by tile (a 40,000² px slide never exists in memory), for demos and benchmarks.
    """
    from histomlf.slides.stitch import synthetic_slide

    levels = tuple(d for d in (4, 16) if size_px // d >= 512)
    path = synthetic_slide(out, size_px=size_px, mpp=float(mpp), seed=seed, downsamples=levels)
    pyramid = ", x".join(map(str, (1, *levels)))
    click.echo(f"wrote {path} ({size_px}² px at {mpp} µm/px, levels x{pyramid})")
