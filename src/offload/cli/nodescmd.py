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
from offload.broker.room import Share
from offload.cli import cli, handle_errors, settings_of
from offload.spec.sizes import format_size

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
        "machine": n.machine,
        "used": share_dict(n.used),
        "free": share_dict(n.free),
        "engine_down_at": n.engine_down_at or None,
    }


def share_dict(s: Share) -> dict[str, float | int]:
    return {"cpus": round(s.cpus, 3), "memory": s.memory, "gpus": s.gpus}


def room_cells(n: NodeInfo) -> tuple[str, str, str, str]:
    """CPUs, memory and GPUs its jobs hold of what it gives jobs, and its free room (what its
    machine's nodes together leave)."""
    return (
        f"{n.used.cpus:g}/{n.cpus:g}",
        f"{format_size(n.used.memory)}/{format_size(n.memory)}",
        f"{n.used.gpus}/{n.gpus}",
        n.free.describe(),
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handle_errors
def nodes(ctx: click.Context, as_json: bool) -> None:
    """List worker nodes: classes, slots, running jobs, last heartbeat, CPUs / memory / GPUs
    in use (of what the node gives jobs) and free, and state: up, draining, engine down (its
    Docker engine does not answer: it takes no work) or lost.

    Tab-separated when stdout is not a terminal.
    """
    now = time.time()
    broker = Broker(settings_of(ctx))
    with translated():
        found = broker.nodes.nodes(now)
    usage = broker.redis_usage()
    if as_json:
        click.echo(json.dumps([node_dict(n, now) for n in found], indent=2))
        return
    rows = [
        (n.name, n.provider, ",".join(n.classes), str(n.slots), str(len(n.running)),
         ",".join(n.running) or "-", f"{max(0.0, now - n.heartbeat_at):.1f}s", n.state,
         *room_cells(n))
        for n in found
    ]  # fmt: skip
    if not sys.stdout.isatty():
        for row in rows:
            click.echo("\t".join(row))
        return
    console.print(f"redis: {usage.describe()}")
    if not rows:
        console.print("no worker nodes registered")
        return
    table = Table(
        "name", "provider", "classes", "slots", "running", "jobs", "beat", "state",
        "cpus", "memory", "gpus", "free",
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
            f"[{style}]{n.state}[/]", *row[8:],
        )  # fmt: skip
    console.print(table)
