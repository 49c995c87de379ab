"""Job control commands: ``offload limit set|ls|rm``, ``offload hold``, ``offload release``;
and :func:`why_lines`, what ``offload status`` says of a job a limit or a hold keeps back."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click
from rich.console import Console

from offload.broker.core import Broker
from offload.broker.limits import parse_limit, parse_max
from offload.broker.records import JobRecord
from offload.cli import cli, handle_errors, settings_of
from offload.producer.client import Client

console = Console(highlight=False)


def why_lines(broker: Broker, rec: JobRecord) -> list[str]:
    """``waiting: …`` when a concurrency limit or a held class keeps ``rec``'s job back."""
    why = broker.limits.why(rec)
    return [f"waiting: {why}"] if why else []


@cli.group()
def limit() -> None:
    """Cluster-wide caps on running jobs per label value (limit set db=orders 2)."""


@limit.command(name="set", context_settings={"ignore_unknown_options": True})
@click.argument("label_value", metavar="LABEL=VALUE")
@click.argument("max_running", metavar="MAX")
@click.pass_context
@handle_errors
def limit_set(ctx: click.Context, label_value: str, max_running: str) -> None:
    """At most MAX jobs labelled LABEL=VALUE run at once, across all nodes (0: none)."""
    name = parse_limit(label_value)  # named first when both are wrong
    u = Client(settings_of(ctx)).set_limit(name, parse_max(max_running))
    click.echo(f"limit {u.name}: at most {u.max} running ({u.running} now, {u.waiting} waiting)")


@limit.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handle_errors
def limit_ls(ctx: click.Context, as_json: bool) -> None:
    """List limits with their usage: running (permits held) and waiting jobs."""
    usages = Client(settings_of(ctx)).limits()
    if as_json:
        click.echo(json.dumps([asdict(u) for u in usages], indent=2))
        return
    rows = [(u.name, str(u.max), str(u.running), str(u.waiting)) for u in usages]
    if not sys.stdout.isatty():
        for row in rows:
            click.echo("\t".join(row))
        return
    from rich.table import Table  # not for `status`, which imports this module

    table = Table("limit", "max", "running", "waiting")
    for row in rows:
        table.add_row(*row)
    console.print(table if rows else "no limits set")


@limit.command(name="rm")
@click.argument("label_value", metavar="LABEL=VALUE")
@click.pass_context
@handle_errors
def limit_rm(ctx: click.Context, label_value: str) -> None:
    """Remove a limit; the jobs waiting for it are queued."""
    if Client(settings_of(ctx)).remove_limit(label_value):
        click.echo(f"limit {label_value} removed")
    else:
        click.echo(f"no limit {label_value} was set")


@cli.command()
@click.argument("resource_class", metavar="CLASS")
@click.pass_context
@handle_errors
def hold(ctx: click.Context, resource_class: str) -> None:
    """Start no new job of CLASS (running ones finish; the others wait and say why)."""
    newly = Client(settings_of(ctx)).hold(resource_class)
    click.echo(f"class {resource_class} {'held' if newly else 'was held already'}")


@cli.command()
@click.argument("resource_class", metavar="CLASS")
@click.pass_context
@handle_errors
def release(ctx: click.Context, resource_class: str) -> None:
    """Start jobs of a held CLASS again; the jobs that waited on the hold are queued."""
    resumed = Client(settings_of(ctx)).release(resource_class)
    click.echo(f"class {resource_class} released; {len(resumed)} waiting job(s) queued")
