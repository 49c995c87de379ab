"""Platform commands: worker, flower, up, down."""

from __future__ import annotations

import logging

import click
from rich.console import Console

from offload import embedded
from offload.cli import cli, handle_errors, settings_of

console = Console(highlight=False)


@cli.command()
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
@handle_errors
def worker(ctx: click.Context, loglevel: str) -> None:
    """Run a worker node serving the resource classes this machine can take."""
    from offload.worker.main import run_worker

    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(settings_of(ctx), loglevel=loglevel)


@cli.command()
@click.pass_context
@handle_errors
def flower(ctx: click.Context) -> None:
    """Run the Flower monitoring UI against the broker."""
    from offload.broker.app import make_app

    settings = settings_of(ctx)
    make_app(settings).start(
        ["flower", f"--address={settings.flower_address}", f"--port={settings.flower_port}"]
    )


@cli.command()
@click.pass_context
@handle_errors
def up(ctx: click.Context) -> None:
    """Start the embedded platform: local Redis, one worker, the autoscaler, Flower."""
    for s in embedded.up(settings_of(ctx)):
        console.print(f"[green]{s.name:10}[/] {s.state:8} {s.detail}")


@cli.command()
@click.pass_context
@handle_errors
def down(ctx: click.Context) -> None:
    """Stop what `offload up` started (the worker finishes its running jobs first)."""
    stopped = embedded.down(settings_of(ctx))
    for s in stopped:
        console.print(f"[yellow]{s.name:10}[/] stopped ({s.detail})")
    if not stopped:
        console.print("nothing was running")
