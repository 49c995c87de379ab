"""``offload submit``: one job, with every option the Python API has."""

from __future__ import annotations

import sys

import click

from offload.cli import cli, handle_errors
from offload.cli.common import (
    INPUT_HELP,
    client_of,
    pairs,
    parse_after,
    parse_inputs,
    parse_params,
    retry_policy,
)
from offload.cli.jobs import outcome_code, print_logs, print_outcome


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option("--cpu", type=float, default=1.0, show_default=True, help="CPUs (fractional).")
@click.option("--memory", default="512m", show_default=True, help="Memory: 512m, 4g, 2GiB.")
@click.option("--gpus", type=int, default=0, show_default=True)
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
@click.option("--param", "params", multiple=True, metavar="K=V | K:=JSON")
@click.option("--secret", "secrets", multiple=True, metavar="K=V", help="A param never shown.")
@click.option("--env", "env", multiple=True, metavar="K=V")
@click.option("--timeout", type=float, default=None, help="Seconds before the job is killed.")
@click.option("--retries", type=int, default=0, show_default=True, help="Retries at most.")
@click.option(
    "--retry-on",
    default=None,
    metavar="REASON,…",
    help="Failures retried (default exit_code,oom_killed,timeout,start_failed).",
)
@click.option("--retry-never", default=None, metavar="CODE,…", help="Exit codes never retried.")
@click.option("--retry-always", default=None, metavar="CODE,…", help="Exit codes always retried.")
@click.option(
    "--backoff",
    default=None,
    metavar="INITIAL[,FACTOR[,MAX]]",
    help="Seconds before retry n: min(MAX, INITIAL*FACTOR^(n-1)) (default 1,2,300).",
)
@click.option(
    "--memory-factor", type=float, default=None, help="Memory times this after oom_killed (2)."
)
@click.option("--priority", type=int, default=0, show_default=True, help="0-9, 9 first.")
@click.option("--network", is_flag=True, help="Give the container network access.")
@click.option(
    "--no-cache", is_flag=True, help="Run even if an identical job succeeded before or runs now."
)
@click.option("--name", default=None)
@click.option("--label", "labels", multiple=True, metavar="K=V")
@click.option("--wait", is_flag=True, help="Follow the logs and exit with the job's outcome.")
@click.pass_context
@handle_errors
def submit(
    ctx: click.Context,
    image: str,
    command: tuple[str, ...],
    cpu: float,
    memory: str,
    gpus: int,
    inputs: tuple[str, ...],
    after: tuple[str, ...],
    params: tuple[str, ...],
    secrets: tuple[str, ...],
    env: tuple[str, ...],
    timeout: float | None,
    retries: int,
    retry_on: str | None,
    retry_never: str | None,
    retry_always: str | None,
    backoff: str | None,
    memory_factor: float | None,
    priority: int,
    network: bool,
    no_cache: bool,
    name: str | None,
    labels: tuple[str, ...],
    wait: bool,
) -> None:
    """Submit a job running IMAGE (optionally with COMMAND); prints its id.

    A job whose inputs name other jobs' outputs (--input NAME=JOB_ID:OUTPUT) or that runs
    --after other jobs is `waiting` until they succeed, then queued with those outputs.
    """
    client = client_of(ctx)
    job = client.submit(
        image,
        list(command) or None,
        inputs=parse_inputs(inputs),
        after=parse_after(after),
        params=parse_params(params),
        secrets=parse_params(secrets, "--secret"),
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        timeout=timeout,
        retries=retries,
        retry=retry_policy(retry_on, retry_never, retry_always, backoff, memory_factor),
        priority=priority,
        env=dict(pairs("--env", env)),
        network=network,
        cache=not no_cache,
        name=name,
        labels=dict(pairs("--label", labels)),
    )
    if not wait:
        click.echo(job.id)
        return
    click.echo(job.id, err=True)
    print_logs(job, follow=True)
    result = job.result(raise_on_failure=False)
    print_outcome(result)
    sys.exit(outcome_code(result))
