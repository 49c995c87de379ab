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
    from offload.broker.connection import check
    from offload.worker.main import run_worker

    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_of(ctx)
    check(settings, unreachable_ok=True)  # fail closed: a TLS failure names OFFLOAD_REDIS_CA
    run_worker(settings, loglevel=loglevel)


@cli.command()
@click.pass_context
@handle_errors
def flower(ctx: click.Context) -> None:
    """Run the Flower monitoring UI against the broker.

    Beyond loopback it needs authentication: OFFLOAD_FLOWER_AUTH=user:password (or Flower's
    OAuth); its pages, API and /metrics all ask for it.
    """
    from offload.broker.flower import run_flower

    run_flower(settings_of(ctx))


@cli.command()
@click.pass_context
@handle_errors
def up(ctx: click.Context) -> None:
    """Start the embedded platform: local Redis, one worker, the autoscaler, Flower."""
    for s in embedded.up(settings_of(ctx)):
        console.print(f"[green]{s.name:10}[/] {s.state:8} {s.detail}")


@cli.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Wait at most this long for running jobs, then stop as --force does "
    "[default: wait until they finish].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Do not wait: stop the workers now and hand their running jobs back to the queue "
    "(their containers removed); they run again after the next `offload up`.",
)
@click.pass_context
@handle_errors
def down(ctx: click.Context, timeout: float | None, force: bool) -> None:
    """Stop what `offload up` started.

    The workers first finish their running jobs (the command shows which it waits for); the
    queue and the job records outlive `down` (Redis keeps them on disk) for the next `up`.
    Ctrl-C stops waiting and leaves Redis up while the workers finish.
    """

    shown = [0]  # jobs listed last time

    def waiting(running: dict[str, list[str]]) -> None:
        jobs = sum(len(j) for j in running.values())
        if not jobs:
            if shown[0]:
                console.print("the running jobs finished; waiting for the workers to exit")
            shown[0] = 0
            return
        shown[0] = jobs
        hint = "" if force else " (Ctrl-C to stop waiting; --force hands them back to the queue)"
        console.print(f"waiting for {jobs} running job(s){hint}:")
        for node, node_jobs in running.items():
            for job in node_jobs:
                console.print(f"  {node}  {job}")

    try:
        stopped = embedded.down(settings_of(ctx), timeout=timeout, force=force, progress=waiting)
    except KeyboardInterrupt:
        console.print("stopped waiting: the workers finish their jobs and exit; Redis is still up")
        ctx.exit(130)
    for s in stopped:
        colour = "yellow" if s.state in ("stopped", "handed back") else "red"
        console.print(f"[{colour}]{s.name:10}[/] {s.state} ({s.detail})")
    if not stopped:
        console.print("nothing was running")
