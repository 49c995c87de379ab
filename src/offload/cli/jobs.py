"""Job commands: submit, status, ls, logs, cancel, get, put."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import DownloadColumn, Progress, TaskID
from rich.table import Table

from offload.broker.status import JobStatus, Reason
from offload.cli import cli, handle_errors, settings_of
from offload.errors import SpecError
from offload.producer.client import Client
from offload.producer.job import Job, JobResult

console = Console(highlight=False)
EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 130
EXIT_OOM = 137
EXIT_FAILED = 7


class UploadProgress:
    """A progress bar on stderr for files over 32 MiB while they are sealed and stored."""

    THRESHOLD = 32 * 1024 * 1024

    def __init__(self) -> None:
        self.bars: dict[Path, tuple[Progress, TaskID]] = {}

    def __call__(self, path: Path, done: int, total: int) -> None:
        if total < self.THRESHOLD:
            return
        if path not in self.bars:
            bar = Progress(
                *Progress.get_default_columns(), DownloadColumn(), console=Console(stderr=True)
            )
            bar.start()
            self.bars[path] = (bar, bar.add_task(f"upload {path.name}", total=total))
        bar, task = self.bars[path]
        bar.update(task, completed=done)
        if done >= total:
            bar.stop()


def _client(ctx: click.Context) -> Client:
    return Client(settings_of(ctx), progress=UploadProgress())


def _pairs(option: str, values: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(option, f"expected KEY=VALUE, got {item!r}")
        out.append((key, value))
    return out


def _params(values: tuple[str, ...], option: str = "--param") -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in _pairs(option, values):
        if key.endswith(":"):
            try:
                params[key[:-1]] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise SpecError(f"{option} {key[:-1]}", f"K:=VALUE needs JSON: {exc}") from None
        else:
            params[key] = value
    return params


def outcome_code(result: JobResult) -> int:
    """The process exit code for a finished job."""
    if result.ok:
        return 0
    if result.reason == Reason.EXIT_CODE and result.exit_code:
        return result.exit_code
    return {
        JobStatus.TIMED_OUT: EXIT_TIMED_OUT,
        JobStatus.CANCELLED: EXIT_CANCELLED,
    }.get(result.status, EXIT_OOM if result.reason == Reason.OOM_KILLED else EXIT_FAILED)


def print_logs(job: Job, follow: bool) -> None:
    for line in job.logs(follow=follow):
        stream = sys.stdout if line.stream == "out" else sys.stderr
        stream.write(line.text + "\n")
        stream.flush()


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option("--cpu", type=float, default=1.0, show_default=True, help="CPUs (fractional).")
@click.option("--memory", default="512m", show_default=True, help="Memory: 512m, 4g, 2GiB.")
@click.option("--gpus", type=int, default=0, show_default=True)
@click.option("--input", "inputs", multiple=True, metavar="NAME=PATH|NAME=sha256:…")
@click.option("--param", "params", multiple=True, metavar="K=V | K:=JSON")
@click.option("--secret", "secrets", multiple=True, metavar="K=V", help="A param never shown.")
@click.option("--env", "env", multiple=True, metavar="K=V")
@click.option("--timeout", type=float, default=None, help="Seconds before the job is killed.")
@click.option("--retries", type=int, default=0, show_default=True)
@click.option("--network", is_flag=True, help="Give the container network access.")
@click.option("--no-cache", is_flag=True, help="Run even if an identical job succeeded before.")
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
    params: tuple[str, ...],
    secrets: tuple[str, ...],
    env: tuple[str, ...],
    timeout: float | None,
    retries: int,
    network: bool,
    no_cache: bool,
    name: str | None,
    labels: tuple[str, ...],
    wait: bool,
) -> None:
    """Submit a job running IMAGE (optionally with COMMAND); prints its id."""
    client = _client(ctx)
    job = client.submit(
        image,
        list(command) or None,
        inputs=dict(_pairs("--input", inputs)),
        params=_params(params),
        secrets=_params(secrets, "--secret"),
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        timeout=timeout,
        retries=retries,
        env=dict(_pairs("--env", env)),
        network=network,
        cache=not no_cache,
        name=name,
        labels=dict(_pairs("--label", labels)),
    )
    if not wait:
        click.echo(job.id)
        return
    click.echo(job.id, err=True)
    print_logs(job, follow=True)
    result = job.result(raise_on_failure=False)
    _print_outcome(result)
    sys.exit(outcome_code(result))


def _print_outcome(result: JobResult) -> None:
    err = Console(stderr=True, highlight=False)
    if result.ok:
        for path, oid in result.outputs.items():
            err.print(f"[green]output[/] {path} {oid}")
        hit = f" (cached: outputs of job {result.cache_hit})" if result.cache_hit else ""
        err.print(f"[green]succeeded[/] in {result.duration or 0:.2f}s{hit}")
    else:
        err.print(f"[red]{result.status}[/]: {result.reason} — {result.message}")


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handle_errors
def status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job's status, timeline and outputs."""
    job = _client(ctx).job(job_id)
    rec = job.record()
    timeline = job.timeline()
    if as_json:
        data = {
            "id": rec.id,
            "name": rec.name,
            "class": rec.resource_class,
            "status": rec.status.value,
            "attempt": rec.attempt,
            "node": rec.node,
            "exit_code": rec.exit_code,
            "reason": rec.reason,
            "message": rec.message,
            "outputs": rec.outputs,
            "spec": rec.view,
            "timings": rec.timings,
            "cache_hit": rec.cache_hit,
            "waiting": job.why_waiting(),
            "timeline": [
                {
                    "status": e.status.value,
                    "at": e.at,
                    "node": e.node,
                    "attempt": e.attempt,
                    "reason": e.reason,
                }
                for e in timeline
            ],
        }
        click.echo(json.dumps(data, indent=2))
        return
    console.print(f"[bold]{rec.id}[/]  {rec.name}  ({rec.resource_class})")
    console.print(f"status: [bold]{rec.status}[/]  attempt {rec.attempt}  node {rec.node or '-'}")
    if rec.reason:
        console.print(f"reason: {rec.reason} — {rec.message or ''}  exit code {rec.exit_code}")
    if rec.status is JobStatus.QUEUED:
        console.print(f"waiting: {job.why_waiting()}")
    t0 = rec.created_at
    for e in timeline:
        extra = f" ({e.reason})" if e.reason else ""
        console.print(f"  +{e.at - t0:7.3f}s  {e.status}{extra}  {e.node}")
    for path, oid in rec.outputs.items():
        console.print(f"output {path} {oid}")


@cli.command(name="ls")
@click.option("-n", "--limit", type=int, default=20, show_default=True)
@click.pass_context
@handle_errors
def ls(ctx: click.Context, limit: int) -> None:
    """List recent jobs (tab-separated when stdout is not a terminal)."""
    now = time.time()
    rows = [
        (rec.id, rec.name, rec.resource_class, rec.status.value, rec.reason or "",
         f"{now - rec.created_at:.0f}s")
        for rec in _client(ctx).jobs(limit)
    ]  # fmt: skip
    if not sys.stdout.isatty():
        for row in rows:
            click.echo("\t".join(row))
        return
    table = Table("id", "name", "class", "status", "reason", "age")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@cli.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep following until the job ends.")
@click.pass_context
@handle_errors
def logs(ctx: click.Context, job_id: str, follow: bool) -> None:
    """Print a job's output (stdout to stdout, stderr to stderr)."""
    print_logs(_client(ctx).job(job_id), follow)


@cli.command()
@click.argument("job_id")
@click.pass_context
@handle_errors
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: at once when queued; a running one is killed by its worker."""
    state = _client(ctx).job(job_id).cancel()
    if state is JobStatus.CANCELLED:
        click.echo(f"{job_id} cancelled")
    elif state.terminal:
        click.echo(f"{job_id} already {state}")
    else:
        click.echo(f"{job_id} cancel requested (was {state})")


@cli.command()
@click.argument("object_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.pass_context
@handle_errors
def get(ctx: click.Context, object_id: str, output: Path, force: bool) -> None:
    """Fetch, verify and decrypt OBJECT_ID (an output's sha256 id) into a file."""
    _client(ctx).download(object_id, output, overwrite=force)
    click.echo(str(output))


@cli.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.pass_context
@handle_errors
def put(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Store FILES; prints each one's id, usable as a job input."""
    client = _client(ctx)
    for f in files:
        click.echo(f"{client.put(f)}  {f}")
