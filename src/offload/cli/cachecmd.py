"""Cache commands for the node-local content cache (``store_dir``): ``offload cache stats``,
``offload cache verify`` and ``offload cache gc``."""

from __future__ import annotations

import dataclasses
import json

import click
from rich.console import Console

from offload.cache import maintenance
from offload.cache.factory import local_tier
from offload.cache.keys import load_key
from offload.cli import cli, handle_errors, settings_of
from offload.errors import IntegrityError
from offload.spec import parse_memory

console = Console(highlight=False, soft_wrap=True)


def human_size(n: int) -> str:
    """``12582912`` → ``12.0 MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@click.group()
def cache() -> None:
    """The node's local content cache: its size, its health, its clean-up."""


@cache.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@handle_errors
def stats(ctx: click.Context, as_json: bool) -> None:
    """Objects, bytes and budget of the local cache, and its pinned, held and quarantined
    blobs (held: waiting to be uploaded to the shared S3 tier)."""
    settings = settings_of(ctx)
    with local_tier(settings) as local:
        s = local.stats()
    if as_json:
        click.echo(json.dumps({"dir": str(settings.store_dir), **dataclasses.asdict(s)}))
        return
    budget = "none" if s.budget is None else f"{s.budget} ({human_size(s.budget)})"
    rows = [
        ("cache", str(settings.store_dir)),
        ("objects", str(s.count)),
        ("bytes", f"{s.bytes} ({human_size(s.bytes)})"),
        ("budget", budget),
        ("pinned", str(s.pinned)),
        ("held", f"{s.held} (uploads pending to S3)"),
        ("quarantined", str(s.quarantined)),
    ]
    for label, value in rows:
        console.print(f"{label:<12} {value}")


@cache.command("verify")
@click.pass_context
@handle_errors
def verify(ctx: click.Context) -> None:
    """Check every blob of the local cache against the cluster key; quarantine the damaged.

    Exits 5 when a blob was damaged or stored under the wrong name (each is quarantined and
    named), 2 when the blobs were sealed under another key (nothing is quarantined then).
    """
    settings = settings_of(ctx)
    key = load_key(settings.key_path)
    with local_tier(settings) as local:
        report = maintenance.verify(key, local)
    for name, why in report.bad:
        console.print(f"quarantined {name}: {why}")
    console.print(
        f"verified {report.checked} blobs: {report.ok} ok, {len(report.bad)} bad (quarantined)"
        + (f", {report.gone} gone while checking" if report.gone else "")
    )
    if report.bad:
        raise IntegrityError(
            f"{len(report.bad)} blob(s) in {settings.store_dir} were damaged or misnamed and "
            f"were quarantined in {local.quarantine_dir}"
        )


def _parse_budget(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_memory(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@cache.command("gc")
@click.option(
    "--budget",
    metavar="SIZE",
    callback=_parse_budget,
    help="Evict least recently used blobs down to SIZE (e.g. 512m, 2g) this once, "
    "instead of the configured OFFLOAD_CACHE_BUDGET.",
)
@click.pass_context
@handle_errors
def gc(ctx: click.Context, budget: int | None) -> None:
    """Remove dead temp files and evict least recently used blobs down to the budget.

    Blobs in use (pinned) or held for upload are never evicted.
    """
    settings = settings_of(ctx)
    with local_tier(settings, budget) as local:
        report = maintenance.gc(local)
    freed, s = report.freed, report.stats
    console.print(
        f"freed {freed} bytes ({human_size(freed)}); "
        f"{s.count} objects, {s.bytes} bytes ({human_size(s.bytes)}) remain"
    )
    if s.budget is None:
        console.print("no budget set (OFFLOAD_CACHE_BUDGET or --budget): nothing was evicted")
    elif report.over_budget:
        console.print(
            f"still over the budget of {human_size(s.budget)}: the rest is pinned or held"
        )


cli.add_command(cache)
