"""Node commands: ``offload nodes``."""

from __future__ import annotations

import json
import sys
import time

import click
from rich import box
from rich.console import Console
from rich.table import Table

from offload.broker.connection import translated
from offload.broker.core import Broker
from offload.broker.nodes import NodeInfo
from offload.cli import cli, handle_errors, settings_of

console = Console(highlight=False)
STATE_STYLE = {"up": "green", "draining": "yellow", "engine down": "red", "lost": "red"}


def node_dict(n: NodeInfo, now: float) -> dict[str, object]:
    return {
        "name": n.name,
        "provider": n.provider,
        "classes": list(n.classes),
        "slots": n.slots,
        "cpus": n.cpus,
        "memory": n.memory,
        "gpus": n.gpus,
        "running": list(n.running),
        "heartbeat_age": round(max(0.0, now - n.heartbeat_at), 3),
        "started_at": n.started_at,
        "state": n.state,
        "engine_down_at": n.engine_down_at or None,
    }


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handle_errors
def nodes(ctx: click.Context, as_json: bool) -> None:
    """List worker nodes: classes, slots, running jobs, last heartbeat, and state: up,
    draining, engine down (its Docker engine does not answer: it takes no work) or lost.

    Tab-separated when stdout is not a terminal.
    """
    now = time.time()
    with translated():
        found = Broker(settings_of(ctx)).nodes.nodes(now)
    if as_json:
        click.echo(json.dumps([node_dict(n, now) for n in found], indent=2))
        return
    rows = [
        (n.name, n.provider, ",".join(n.classes), str(n.slots), str(len(n.running)),
         ",".join(n.running) or "-", f"{max(0.0, now - n.heartbeat_at):.1f}s", n.state)
        for n in found
    ]  # fmt: skip
    if not sys.stdout.isatty():
        for row in rows:
            click.echo("\t".join(row))
        return
    if not rows:
        console.print("no worker nodes registered")
        return
    table = Table(
        "name", "provider", "classes", "slots", "running", "jobs", "beat", "state",
        box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
    )  # fmt: skip
    short = console.width < 120  # a narrow terminal shows id prefixes (tab/JSON: in full)
    for col in table.columns:
        col.no_wrap = True
    for n, row in zip(found, rows, strict=True):
        ids = [j[:8] + "…" if short else j for j in n.running] or ["-"]
        style = STATE_STYLE.get(n.state, "")
        table.add_row(
            *row[:2], "\n".join(n.classes), *row[3:5], "\n".join(ids), row[6],
            f"[{style}]{n.state}[/]",
        )  # fmt: skip
    console.print(table)
