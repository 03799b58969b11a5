"""`histomlf data ...`: scan a data folder, split it by patient, make synthetic data, fetch it.

Library errors (missing folder, bad manifest, no network) become one-line click errors with
a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def data() -> None:
    """Scan, split, synthesise or fetch IDC patch data."""


@data.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for manifest.csv and quarantine.csv (default: the scan cache, "
    "$HISTOMLF_CACHE/scans/<hash> or ./.histomlf-cache/scans/<hash>).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of counts.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Processes (default: all CPUs)."
)
def scan(data_dir: Path, out: Path | None, as_json: bool, workers: int | None) -> None:
    """Check every patch in DATA_DIR (Kaggle layout) and write a manifest and a quarantine."""
    from histomlf.data.scan import ScanError, scan_to_cache

    try:
        result = scan_to_cache(data_dir, out=out, workers=workers, refresh=True)
    except (ScanError, OSError) as error:
        raise click.ClickException(str(error)) from error
    stats = result.stats
    if as_json:
        click.echo(json.dumps({k: v for k, v in stats.items() if k != "fingerprint"}))
        return
    click.echo(
        f"{stats['patches']:,} patches of {stats['patients']} patients "
        f"({stats['positives']:,} IDC, {stats['negatives']:,} no IDC) in {stats['seconds']:.1f} s"
    )
    click.echo(
        f"{stats['duplicates_skipped']:,} duplicates skipped, {stats['quarantined']:,} "
        f"quarantined, {stats['ignored']:,} other files ignored"
    )
    click.echo(f"manifest:   {stats['manifest']}")
    click.echo(f"quarantine: {stats['quarantine']}")
    click.echo(f"digest:     {stats['dataset_digest']}")


def _manifest_path(path: Path) -> Path:
    return path / "manifest.csv" if path.is_dir() else path


@data.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Split CSV."
)
@click.option("--val-fraction", type=float, default=0.15, show_default=True, help="Of patients.")
@click.option("--test-fraction", type=float, default=0.15, show_default=True, help="Of patients.")
@click.option("--seed", type=int, default=42, show_default=True, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def split(
    manifest: Path,
    out: Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    as_json: bool,
) -> None:
    """Split the patients of MANIFEST (a manifest.csv or a scan folder) into train/val/test."""
    from histomlf.data.manifest import ManifestError, read_manifest
    from histomlf.data.splits import (
        SplitError,
        make_patient_split,
        save_split,
        split_digest,
        split_summary,
    )

    try:
        frame = read_manifest(_manifest_path(manifest))
        split_df = make_patient_split(frame, val_fraction, test_fraction, seed)
        save_split(split_df, out)
    except (ManifestError, SplitError) as error:
        raise click.ClickException(str(error)) from error
    summary = split_summary(frame, split_df)
    if as_json:
        rows = {
            name: {k: (float(v) if k == "positive_rate" else int(v)) for k, v in row.items()}
            for name, row in summary.to_dict(orient="index").items()
        }
        click.echo(json.dumps({"split": str(out), "digest": split_digest(split_df), **rows}))
        return
    click.echo(f"{'split':<6} {'patients':>8} {'patches':>9} {'positive':>9}")
    for name, row in summary.iterrows():
        click.echo(
            f"{name:<6} {int(row['patients']):>8} {int(row['patches']):>9,} "
            f"{row['positive_rate']:>8.1%}"
        )
    click.echo(f"split: {out} (digest {split_digest(split_df)[:12]})")


@data.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--patients", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--patches-per-patient", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--duplicate-folder/--no-duplicate-folder",
    default=True,
    show_default=True,
    help="Also write byte-identical copies under IDC_regular_ps50_idx5/, as the archive does.",
)
@click.option(
    "--border-fraction",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Share of slide-border patches (50 px wide, fewer rows).",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Processes (default: all CPUs)."
)
def synth(
    out: Path,
    patients: int,
    patches_per_patient: int,
    seed: int,
    duplicate_folder: bool,
    border_fraction: float,
    workers: int | None,
) -> None:
    """Write a synthetic H&E-like IDC dataset in the Kaggle layout into OUT.

    Each patient is a slide: one piece of tissue on the 50-px grid with a few IDC blobs in it.
    """
    from histomlf.data.synth import generate_dataset

    stats = generate_dataset(
        out,
        patients,
        patches_per_patient,
        seed,
        duplicate_folder=duplicate_folder,
        border_fraction=border_fraction,
        workers=workers,
    )
    click.echo(
        f"{stats['patches']:,} patches of {stats['patients']} patients "
        f"({stats['positives']:,} IDC), {stats['files']:,} files in {stats['out']}"
    )


@data.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=8.0,
    show_default=True,
    help="Seconds to wait for www.kaggle.com before giving up.",
)
def fetch(dest: Path, timeout: float) -> None:
    """Download the Kaggle IDC dataset into DEST (needs network and Kaggle credentials)."""
    from histomlf.data.fetch import FetchError, fetch_dataset

    try:
        path = fetch_dataset(dest, timeout=timeout)
    except FetchError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"downloaded to {path}; next: histomlf data scan {path}")
