"""Job commands: status, ls, logs, cancel, get, put (``submit`` is in :mod:`.submitcmd`)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from offload.broker.records import JobRecord
from offload.broker.status import JobStatus, Reason
from offload.cli import arrayview, cli, handle_errors
from offload.cli.common import client_of
from offload.cli.controlcmd import why_lines
from offload.cli.graphview import graph, graph_lines
from offload.errors import SpecError
from offload.producer.job import Job, JobResult

console = Console(highlight=False)
EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 130
EXIT_OOM = 137
EXIT_FAILED = 7


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


def print_outcome(result: JobResult) -> None:
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
    """Show a job's status, timeline and outputs; its parents and children, and for a
    waiting job what it waits for. For an ARRAY (the id `offload map` printed): its items
    counted by status, its rate, time left and first failures; ARRAY:INDEX is its item."""
    client = client_of(ctx)
    if arrayview.is_array(job_id):
        arrayview.show_status(client, job_id, as_json)
        return
    job = client.job(arrayview.item_job_id(client, job_id))
    rec = job.record()
    timeline = job.timeline()
    deps = graph(job.broker, rec)
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
            "fetched": rec.fetched,
            "delivered": rec.delivered,
            "deliver_error": rec.deliver_error or None,
            "spec": rec.view,
            "timings": rec.timings,
            "cache_hit": rec.cache_hit,
            "redis": dataclasses.asdict(job.broker.redis_usage()),
            "waiting": job.broker.limits.why(rec) or job.why_waiting(),
            "route": route_line(rec),
            **deps,
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
    if rec.status is JobStatus.QUEUED and rec.retry_at:
        when = time.strftime("%H:%M:%S", time.localtime(rec.retry_at))
        console.print(f"next retry: at {when} (in {max(0.0, rec.retry_at - time.time()):.0f}s)")
    elif rec.status is JobStatus.QUEUED:
        console.print(f"waiting: {job.why_waiting()}")
    route = route_line(rec)
    if route:
        console.print(f"route: {route}")
    for line in why_lines(job.broker, rec):  # a concurrency limit or a held class
        console.print(line)
    for line in graph_lines(deps):  # parents, children, what a waiting job waits for
        console.print(line)
    if rec.cache_hit:
        console.print(
            f"cache hit: outputs made by job {rec.cache_hit} (offload logs shows its logs)"
        )
    t0 = rec.created_at
    for e in timeline:
        extra = f" ({e.reason})" if e.reason else ""
        console.print(f"  +{e.at - t0:7.3f}s  {e.status}{extra}  {e.node}")
        if e.message and e.status is JobStatus.QUEUED and e.attempt:
            console.print(f"             {e.message}")  # a retry: when, with what resources
    for name, oid in rec.fetched.items():
        console.print(f"input {name} fetched as {oid}")
    for path, oid in rec.outputs.items():
        where = rec.delivered.get(path)
        console.print(f"output {path} {oid}" + (f" -> {where}" if where else ""))
    if rec.deliver_error:
        console.print(f"[red]delivery failed[/]: {rec.deliver_error}")
    usage = job.broker.redis_usage()
    if usage.full:  # why new work is refused now
        console.print(f"[yellow]redis: {usage.describe()}[/]")


def route_line(rec: JobRecord) -> str | None:
    """Where locality routing sent the job's last message and why: ``routed to node X: holds
    240 MiB of 256 MiB inputs`` or ``class queue cpu-small: no live node holds its inputs``."""
    if not rec.route_why:
        return None
    node, why = rec.routed_to, rec.route_why
    where = f"routed to node {node}" if node else f"class queue {rec.resource_class}"
    return f"{where}: {why}"


class When(click.ParamType):
    """A time: ``1h`` / ``30m`` / ``2d`` / ``90s`` / ``1w`` ago, unix seconds, or ISO 8601."""

    name = "time"
    UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

    def convert(self, value: object, param: click.Parameter | None, ctx: object) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text)
        if m:
            return time.time() - float(m.group(1)) * self.UNITS[m.group(2)]
        try:
            return float(text)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            self.fail(
                f"{text!r} is no time: give an age (30m, 1h, 2d, 1w), unix seconds, or an "
                "ISO 8601 date/time (2026-12-04T10:00)",
                param,
                None,
            )


@cli.command(name="ls")
@click.option("-n", "--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in JobStatus]),
    help="Only jobs in this status (repeatable): --status waiting lists the jobs waiting for "
    "their parents (or an identical job in flight).",
)
@click.option("--class", "classes", multiple=True, help="Only jobs of this class (repeatable).")
@click.option(
    "--label", "labels", multiple=True, help="Only jobs labelled so, KEY=VALUE (repeatable)."
)
@click.option("--name", default="", help="Only jobs whose name starts with this.")
@click.option("--array", default="", metavar="ARRAY", help="Only the items of this array.")
@click.option("--since", type=When(), help="Submitted since: 1h, 2d, unix seconds or ISO 8601.")
@click.option("--until", type=When(), help="Submitted until (same forms as --since).")
@click.option("--after", "cursor", help="The page after this cursor (printed by the last page).")
@click.option("--json", "as_json", is_flag=True, help="JSON: the jobs and the next cursor.")
@click.pass_context
@handle_errors
def ls(
    ctx: click.Context,
    limit: int,
    statuses: tuple[str, ...],
    classes: tuple[str, ...],
    labels: tuple[str, ...],
    name: str,
    array: str,
    since: float | None,
    until: float | None,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List jobs, live and archived, newest first, a page at a time (tab-separated when
    stdout is not a terminal; the next page's cursor goes to stderr)."""
    if array and not arrayview.is_array(array):
        raise SpecError("--array", f"expected an array id (24 hex digits), got {array!r}")
    wanted: dict[str, str] = {}
    for label in labels:
        key, eq, value = label.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{label!r} is not KEY=VALUE", param_hint="'--label'")
        wanted[key] = value
    page = client_of(ctx).job_page(
        limit,
        status=statuses,
        resource_class=classes,
        labels=wanted,
        name=name,
        since=since,
        until=until,
        after=cursor,
        array=array,
    )
    if as_json:
        jobs = [
            {"id": r.id, "name": r.name, "class": r.resource_class, "status": r.status.value,
             "reason": r.reason, "created_at": r.created_at, "finished_at": r.finished_at,
             "labels": r.spec.labels}
            for r in page.jobs
        ]  # fmt: skip
        data: dict[str, Any] = {"jobs": jobs, "next": page.next}
        if array:
            data["not_fed"] = arrayview.not_fed(client_of(ctx), array)
        click.echo(json.dumps(data, indent=2))
        return
    now = time.time()
    rows = [
        (rec.id, rec.name, rec.resource_class, rec.status.value, rec.reason or "",
         f"{now - rec.created_at:.0f}s")
        for rec in page.jobs
    ]  # fmt: skip
    more = f"next page: offload ls --after {page.next}" if page.next else None
    unfed = arrayview.not_fed(client_of(ctx), array) if array else 0
    if unfed:  # no record yet: listed nowhere, counted by `offload status ARRAY`
        note = (f"{unfed:,} more items of {array} wait in it to be fed to the queue "
                f"({'cancelled' if arrayview.is_cancelled(client_of(ctx), array) else 'queued'}"
                f"; offload status {array})")  # fmt: skip
        more = f"{more}\n{note}" if more else note
    if not sys.stdout.isatty():
        for row in rows:
            click.echo("\t".join(row))
        if more:
            click.echo(more, err=True)
        return
    from rich.table import Table  # a terminal's table: not for a pipe, nor for `status`

    table = Table("id", "name", "class", "status", "reason", "age")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if more:
        console.print(more)


@cli.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep following until the job ends.")
@click.pass_context
@handle_errors
def logs(ctx: click.Context, job_id: str, follow: bool) -> None:
    """Print a job's output (stdout to stdout, stderr to stderr).

    JOB_ID may be ARRAY:INDEX, an item of an array."""
    client = client_of(ctx)
    print_logs(client.job(arrayview.item_job_id(client, job_id)), follow)


@cli.command()
@click.argument("job_id")
@click.option(
    "--with-descendants",
    is_flag=True,
    help="Cancel every job downstream of JOB_ID too (else those waiting for it fail "
    "upstream_failed).",
)
@click.pass_context
@handle_errors
def cancel(ctx: click.Context, job_id: str, with_descendants: bool) -> None:
    """Cancel a job: at once when waiting or queued; a running one is killed by its worker.
    ARRAY: every item of the array not ended yet."""
    client = client_of(ctx)
    if arrayview.is_array(job_id) and not with_descendants:
        arrayview.cancel(client, job_id)
        return
    job_id = arrayview.item_job_id(client, job_id)
    job = client.job(job_id)
    if not with_descendants:
        _say_cancelled(job_id, job.cancel())
        return
    for each, state in job.broker.pipeline.cancel_with_descendants(job_id).items():
        _say_cancelled(each, state)


def _say_cancelled(job_id: str, state: JobStatus) -> None:
    if state is JobStatus.CANCELLED:
        click.echo(f"{job_id} cancelled")
    elif state.terminal:
        click.echo(f"{job_id} already {state}")
    else:
        click.echo(f"{job_id} cancel requested (was {state})")


@cli.command()
@click.argument("ids", nargs=-1, required=True, metavar="OBJECT_ID | JOB_ID|ARRAY...")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option(
    "--to", "to", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Every output of the JOB_IDs into this folder (in parallel, resumable).",
)  # fmt: skip
@click.option(
    "--name", "template", default=None, metavar="TEMPLATE",
    help="Where each output goes under --to: {job_id} {index} {name} {output} (default "
    "{output} for one job, {index}/{output} for a map's jobs, else {job_id}/{output}).",
)  # fmt: skip
@click.option("-j", "--parallel", type=int, default=16, show_default=True)
@click.pass_context
@handle_errors
def get(
    ctx: click.Context,
    ids: tuple[str, ...],
    output: Path | None,
    force: bool,
    to: Path | None,
    template: str | None,
    parallel: int,
) -> None:
    """Fetch, verify and decrypt OBJECT_ID (an output's sha256 id) into a file (-o), or every
    output of one or more jobs (JOB_ID...) into a folder (--to).

    An ARRAY stands for all its items, ARRAY:INDEX for one."""
    if ids[0].startswith("sha256:"):
        if len(ids) != 1 or output is None or to is not None:
            raise SpecError("OBJECT_ID", "give one object id and -o FILE (or job ids and --to)")
        client_of(ctx).download(ids[0], output, overwrite=force)
        click.echo(str(output))
        return
    if to is None or output is not None:
        raise SpecError("--to", "job ids take --to DIR (-o FILE is for one object id)")
    from offload.cli.getcmd import bulk_download  # its progress bars: only for `get`

    client = client_of(ctx)
    bulk_download(client, arrayview.expand(client, list(ids)), to, template, parallel)


@cli.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.pass_context
@handle_errors
def put(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Store FILES; prints each one's id, usable as a job input."""
    client = client_of(ctx)
    for f in files:
        click.echo(f"{client.put(f)}  {f}")
