"""``offload submit``: one job, with every option the Python API has."""

from __future__ import annotations

import sys
from typing import Any

import click

from offload.cli import cli, handle_errors
from offload.cli.common import (
    INPUT_HELP,
    client_of,
    job_options,
    parse_after,
    parse_inputs,
    parse_job_options,
)
from offload.cli.jobs import outcome_code, print_logs, print_outcome


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option(
    "--input", "inputs", multiple=True, metavar="NAME=PATH|sha256:…|JOB_ID:OUTPUT", help=INPUT_HELP
)
@click.option(
    "--after",
    "after",
    multiple=True,
    metavar="JOB_ID",
    help="Start only once job JOB_ID succeeded (order without data; fails with "
    "upstream_failed if it does not). Repeatable.",
)
@job_options
@click.option("--name", default=None)
@click.option("--wait", is_flag=True, help="Follow the logs and exit with the job's outcome.")
@click.pass_context
@handle_errors
def submit(
    ctx: click.Context,
    image: str,
    command: tuple[str, ...],
    inputs: tuple[str, ...],
    after: tuple[str, ...],
    name: str | None,
    wait: bool,
    **options: Any,
) -> None:
    """Submit a job running IMAGE (optionally with COMMAND); prints its id.

    A job whose inputs name other jobs' outputs (--input NAME=JOB_ID:OUTPUT) or that runs
    --after other jobs is `waiting` until they succeed, then queued with those outputs.
    """
    client = client_of(ctx)
    opts = parse_job_options(
        inputs=parse_inputs(inputs), after=parse_after(after), name=name, **options
    )
    job = client.submit(image, list(command) or None, opts)
    if not wait:
        click.echo(job.id)
        return
    click.echo(job.id, err=True)
    print_logs(job, follow=True)
    result = job.result(raise_on_failure=False)
    print_outcome(result)
    sys.exit(outcome_code(result))
