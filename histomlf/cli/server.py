"""`histomlf server start|stop|status`: the production-shaped tracking stack on this machine.

PostgreSQL + SeaweedFS (S3) + `mlflow server` with basic-auth; configured through environment
variables (see docs/tracking-stack.md), state under `$HISTOMLF_SERVER_DIR`.
"""

from __future__ import annotations

import click


@click.group()
def server() -> None:
    """Run the tracking stack: MLflow on PostgreSQL, S3 artifacts (SeaweedFS), basic-auth."""


@server.command()
def start() -> None:
    """Start the stack (idempotent) and print the tracking URL.

    Needs MLFLOW_AUTH_ADMIN_PASSWORD (at least 12 characters).
    """
    from histomlf.stack import StackError, start_stack

    try:
        settings = start_stack()
    except (StackError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"tracking URI: {settings.tracking_uri}")
    click.echo(f"server dir:   {settings.server_dir}")
    click.echo(
        f"log in as '{settings.admin_username}' with MLFLOW_TRACKING_USERNAME / "
        "MLFLOW_TRACKING_PASSWORD"
    )


@server.command()
@click.option("--grace", type=float, default=10.0, show_default=True,
              help="Seconds to wait after TERM before KILL.")
def stop(grace: float) -> None:
    """Stop the stack; its data stays in the server dir."""
    from histomlf.stack import StackError, resolve_settings, stop_stack

    try:
        stop_stack(resolve_settings(), grace=grace)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("stopped")


@server.command()
def status() -> None:
    """Show each component and the tracking URL; exit 1 unless all run."""
    from histomlf.stack import resolve_settings, stack_status

    settings = resolve_settings()
    rows = stack_status(settings)
    for row in rows:
        state = f"running (pid {row.pid})" if row.running else "stopped"
        click.echo(f"{row.name:<13} {state:<22} {row.address}")
    click.echo(f"tracking URI: {settings.tracking_uri}")
    if not all(row.running for row in rows):
        raise SystemExit(1)
