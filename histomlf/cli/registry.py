"""`histomlf registry`: list versions with their gate verdicts, promote and demote by hand.

The automatic gate (`histomlf.tracking.registry.register_and_gate`) never promotes across
different data or splits; these commands are how a person does, and each leaves a tag saying
who and when. MLflow is imported inside the commands so `histomlf --help` stays fast.
"""

from __future__ import annotations

import click

from histomlf.schema import ModelMeta, VersionTag

# Columns of `registry list`: (header, tag or field, width cap).
_COLUMNS = (
    ("VERSION", "version", 7),
    ("ALIASES", "aliases", 20),
    ("MODEL", ModelMeta.MODEL, 16),
    ("METRIC", VersionTag.GATE_METRIC, 12),
    ("SCORE", VersionTag.GATE_SCORE, 8),
    ("SCORED ON", VersionTag.SCORES, 32),
    ("CHAMP", VersionTag.GATE_CHAMPION_SCORE, 8),
    ("DECISION", VersionTag.GATE_DECISION, 10),
    ("DATA", ModelMeta.DATA_DIGEST, 12),
    ("SPLIT", ModelMeta.SPLIT_DIGEST, 12),
    ("CREATED", "created", 25),
    ("REASON", VersionTag.GATE_REASON, 200),
)


@click.group()
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    help="tracking/registry server or database (default: $MLFLOW_TRACKING_URI, then "
    "sqlite:///mlflow.db)",
)
@click.pass_context
def registry(ctx: click.Context, tracking_uri: str | None) -> None:
    """Registered models: versions, gate verdicts, the champion and challenger aliases."""
    ctx.obj = {"tracking_uri": tracking_uri}


@registry.command("list")
@click.argument("name")
@click.pass_context
def list_command(ctx: click.Context, name: str) -> None:
    """Show every version of NAME with its aliases, digests and gate tags."""
    from histomlf.tracking.registry import list_versions

    versions = _call(ctx, list_versions, name)
    rows = [[_cell(v, key, cap) for _, key, cap in _COLUMNS] for v in versions]
    headers = [header for header, _, _ in _COLUMNS]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


@registry.command()
@click.argument("name")
@click.argument("version")
@click.option("--reason", default="", help="why, kept as the version's promotion_reason tag")
@click.pass_context
def promote(ctx: click.Context, name: str, version: str, reason: str) -> None:
    """Make VERSION of NAME the champion (the previous champion is tagged as replaced)."""
    from histomlf.tracking.registry import promote as promote_version

    previous = _call(ctx, promote_version, name, version, reason=reason)
    replaced = f" (was v{previous})" if previous else ""
    click.echo(f"{name}: v{version} is now champion{replaced}")


@registry.command()
@click.argument("name")
@click.option("--alias", default="champion", show_default=True, help="alias to remove")
@click.pass_context
def demote(ctx: click.Context, name: str, alias: str) -> None:
    """Remove ALIAS (default champion) from the version of NAME holding it."""
    from histomlf.tracking.registry import demote as demote_alias

    version = _call(ctx, demote_alias, name, alias)
    click.echo(f"{name}: v{version} is no longer {alias}")


def _call(ctx: click.Context, function, *args, **kwargs):
    """Run a registry function against the chosen store; any failure is one line, exit 1."""
    from histomlf.evaluation.gate import RegistryError
    from histomlf.tracking.errors import one_line, tracking_errors
    from histomlf.tracking.probe import use_tracking_uri

    try:
        use_tracking_uri(ctx.obj["tracking_uri"])
        return function(*args, **kwargs)
    except (RegistryError, *tracking_errors()) as error:
        raise click.ClickException(one_line(error)) from error


def _cell(version, key: str, cap: int) -> str:
    if key == "aliases":
        value = ",".join(version.aliases)
    elif key in ("version", "created"):
        value = getattr(version, key)
    elif key == VersionTag.SCORES:  # CV-final versions say "out-of-fold on N patients"
        value = version.tags.get(key) or ("test split" if version.tags.get(VersionTag.GATE_SCORE)
                                          else "")
    else:
        value = version.tags.get(key, "")
    value = str(value).replace("\n", " ")
    return value if len(value) <= cap else value[: cap - 1] + "…"
