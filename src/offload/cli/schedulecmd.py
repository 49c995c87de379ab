"""``offload schedule add|ls|rm|pause|resume|run`` and ``offload scheduler``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from offload.cli import cli, handle_errors, settings_of
from offload.cli.common import job_options, pairs, parse_job_options
from offload.cli.mapcmd import EACH_HELP, load_items, on_line
from offload.errors import SpecError
from offload.producer.client import Client
from offload.producer.schedules import OVERLAPS, ScheduleInfo, Schedules
from offload.producer.timing import iso
from offload.scheduler import DEFAULT_INTERVAL, DEFAULT_LOCK_TTL, Scheduler
from offload.spec.arrays import MAX_BATCH

console = Console(highlight=False)


def _schedules(ctx: click.Context) -> Schedules:
    return Schedules(Client(settings_of(ctx)))


@cli.group()
def schedule() -> None:
    """Run a job on a cron expression or every so often (fired by `offload scheduler`)."""


@schedule.command(name="add", context_settings={"ignore_unknown_options": False})
@click.argument("name")
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option("--cron", default=None, metavar="EXPR", help="'*/5 * * * *' (UTC), @hourly, …")
@click.option("--every", default=None, metavar="DURATION", help="30s, 5m, 1h30m, 1d.")
@click.option(
    "--overlap",
    type=click.Choice(OVERLAPS),
    default="skip",
    show_default=True,
    help="skip: no new run while the previous one is unfinished; allow: run anyway.",
)
@click.option("--input", "inputs", multiple=True, metavar="NAME=PATH|NAME=sha256:…|NAME=s3://…")
@click.option(
    "--each",
    default=None,
    metavar="ITEMS.jsonl",
    help="Make each run an array, as `offload map --each` does: " + EACH_HELP,
)
@click.option(
    "--batch",
    type=click.IntRange(1, MAX_BATCH),
    default=None,
    metavar="K",
    help="With --each: up to K items a warm container, as `offload map --batch`.",
)
@job_options
@click.pass_context
@handle_errors
def add(
    ctx: click.Context,
    name: str,
    image: str,
    command: tuple[str, ...],
    cron: str | None,
    every: str | None,
    overlap: str,
    inputs: tuple[str, ...],
    each: str | None,
    batch: int | None,
    **options: Any,
) -> None:
    """Add schedule NAME running IMAGE (optionally with COMMAND) on --cron or --every.

    Takes every option of `offload submit`; local input files are uploaded once, now. With
    --each every run is an array of those items (checked now, a bad one named by its line).
    """
    items, lines, source = load_items(each) if each is not None else (None, [], "")
    try:
        s = _schedules(ctx).add(
            name,
            image,
            list(command) or None,
            cron=cron,
            every=every,
            overlap=overlap,  # type: ignore[arg-type]  # click.Choice checked it
            options=parse_job_options(inputs=dict(pairs("--input", inputs)), **options),
            each=items,
            batch=batch,
        )
    except SpecError as exc:
        raise on_line(exc, source, lines) if items is not None else exc from None
    nxt = _schedules(ctx).state(s.name).next_at
    what = f"an array of {len(s.each):,} items" if s.each else "a job"
    click.echo(f"{s.name}: {what} {s.timing.describe()}, next run {iso(nxt)}")


def _row(info: ScheduleInfo, now: float) -> dict[str, str]:
    st = info.state
    if st.paused:
        nxt = "paused"
    elif st.next_at is None:
        nxt = "-"
    else:
        nxt = f"{iso(st.next_at)} (in {max(0.0, st.next_at - now):.0f}s)"
    return {
        "name": info.schedule.name,
        "when": info.schedule.timing.describe(),
        "overlap": info.schedule.overlap,
        "next": nxt,
        "last_run": f"{iso(st.last_run_at)} {st.last_job}" if st.last_job else "-",
        "last_status": info.last_status or "-",
        "last_fire": f"{iso(st.last_at)} {st.last_outcome}" if st.last_at else "-",
    }


@schedule.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handle_errors
def ls(ctx: click.Context, as_json: bool) -> None:
    """List schedules: next fire time, last run and its outcome."""
    schedules = _schedules(ctx)
    infos = schedules.ls()
    now = time.time()
    if as_json:
        out = [
            {
                "name": i.schedule.name,
                "image": i.schedule.image,
                "command": i.schedule.command,
                "cron": i.schedule.timing.cron,
                "every": i.schedule.timing.every,
                "overlap": i.schedule.overlap,
                "paused": i.state.paused,
                "next_at": i.state.next_at,
                "last_at": i.state.last_at,
                "last_outcome": i.state.last_outcome or None,
                "last_job": i.state.last_job,
                "last_run_at": i.state.last_run_at,
                "last_status": i.last_status,
            }
            for i in infos
        ]
        click.echo(json.dumps(out, indent=2))
        return
    rows = [_row(i, now) for i in infos]
    if not sys.stdout.isatty():
        for row in rows:
            click.echo("\t".join(row.values()))
    else:
        table = Table("name", "when", "overlap", "next", "last run", "status", "last fire time")
        for row in rows:
            table.add_row(*row.values())
        console.print(table)
    if infos and schedules.store.active() is None:
        click.echo(
            "warning: no scheduler is running (`offload up` or `offload scheduler`)", err=True
        )


@schedule.command(name="rm")
@click.argument("name")
@click.pass_context
@handle_errors
def rm(ctx: click.Context, name: str) -> None:
    """Remove schedule NAME (its runs so far stay)."""
    _schedules(ctx).rm(name)
    click.echo(f"{name} removed")


@schedule.command()
@click.argument("name")
@click.pass_context
@handle_errors
def pause(ctx: click.Context, name: str) -> None:
    """Stop firing NAME until `resume`."""
    _schedules(ctx).pause(name)
    click.echo(f"{name} paused")


@schedule.command()
@click.argument("name")
@click.pass_context
@handle_errors
def resume(ctx: click.Context, name: str) -> None:
    """Fire NAME again from its next fire time (times missed while paused are not made up)."""
    schedules = _schedules(ctx)
    schedules.resume(name)
    click.echo(f"{name} resumed, next run {iso(schedules.state(name).next_at)}")


@schedule.command(name="run")
@click.argument("name")
@click.pass_context
@handle_errors
def run_now(ctx: click.Context, name: str) -> None:
    """Submit a run of NAME now; prints the job id."""
    click.echo(_schedules(ctx).run(name).id)


@cli.command()
@click.option(
    "--interval", type=click.FloatRange(min=0.05), default=DEFAULT_INTERVAL, show_default=True
)
@click.option(
    "--lock-ttl",
    type=click.FloatRange(min=1),
    default=DEFAULT_LOCK_TTL,
    show_default=True,
    help="Seconds after which a standby scheduler takes over from a dead one.",
)
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
@handle_errors
def scheduler(ctx: click.Context, interval: float, lock_ttl: float, loglevel: str) -> None:
    """Fire the schedules (one active scheduler in the cluster; others stand by)."""
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = Scheduler(Client(settings_of(ctx)), lock_ttl=lock_ttl)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    console.print(f"scheduler {runner.lock.token}: every {interval:g}s, lock {lock_ttl:g}s")
    runner.run(interval, stop)
