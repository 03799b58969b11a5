"""`histomlf data push DATA_DIR s3://bucket/prefix`: upload a dataset folder to S3."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("s3_uri")
@click.option("--endpoint-url", default=None,
              help="S3 endpoint (default: MLFLOW_S3_ENDPOINT_URL / AWS_ENDPOINT_URL / AWS).")
@click.option("--workers", type=int, default=8, show_default=True,
              help="Parallel uploads.")
def push(data_dir: Path, s3_uri: str, endpoint_url: str | None, workers: int) -> None:
    """Upload DATA_DIR to S3_URI, skipping files already there unchanged (same size and MD5)."""
    from histomlf.data.s3sync import S3SyncError, push_dir

    try:
        stats = push_dir(data_dir, s3_uri, endpoint_url=endpoint_url, workers=workers)
    except S3SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{s3_uri}: {stats.transferred} uploaded ({stats.bytes} bytes), "
        f"{stats.skipped} unchanged"
    )
