"""Cache commands for the node-local content cache (``store_dir``): ``offload cache stats``,
``offload cache verify`` and ``offload cache gc``."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from typing import BinaryIO

import click
from rich.console import Console

from offload.cache import envelope
from offload.cache.factory import open_store
from offload.cache.localblobs import LocalBlobStore
from offload.cli import cli, handle_errors, settings_of
from offload.config import Settings
from offload.errors import CacheError, ConfigError, IntegrityError, ObjectNotFound, WrongKey
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


def _local(settings: Settings, budget: int | None = None) -> LocalBlobStore:
    """The node's local cache alone (no key needed): stats and gc read no blob's content."""
    return LocalBlobStore(
        settings.store_dir, budget if budget is not None else settings.cache_budget
    )


@contextlib.contextmanager
def _open_pinned(local: LocalBlobStore, name: str) -> Iterator[BinaryIO]:
    """Open blob ``name`` and hold it against eviction (a shared flock, as ``pin`` takes)
    without marking it as recently used: a verify pass must not reorder the LRU.
    ObjectNotFound when it is gone (evicted or deleted meanwhile)."""
    path = local.path(name)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise ObjectNotFound(name) from None
    except OSError as exc:
        raise CacheError(f"cannot open blob {path}: {exc.strerror or exc}") from exc
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH)
            if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:
                raise ObjectNotFound(name)  # evicted (and maybe stored again) as we opened it
        except FileNotFoundError:
            raise ObjectNotFound(name) from None
        except OSError as exc:
            raise CacheError(f"cannot lock blob {path}: {exc.strerror or exc}") from exc
        yield f


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
    with _local(settings) as local:
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
    store = open_store(settings)
    key, local = store.key, store.local
    try:
        ok = gone = 0
        bad: list[tuple[str, str]] = []
        for name in local.names():
            try:
                with _open_pinned(local, name) as f:
                    size = os.fstat(f.fileno()).st_size
                    try:
                        oid = envelope.verify(f, key, total_size=size)
                    except OSError as exc:
                        raise CacheError(
                            f"cannot read blob {local.path(name)}: {exc.strerror or exc}"
                        ) from exc
            except ObjectNotFound:
                gone += 1  # evicted or deleted since the listing: nothing to check
                continue
            except WrongKey as exc:
                # The objects are intact; the key is not theirs. Quarantine nothing, even what
                # an earlier blob failed: with the wrong key configured, trust no verdict.
                raise ConfigError(
                    f"blob {name} in {settings.store_dir}: {exc}. Stopped; nothing was "
                    "quarantined (the blobs may be intact: check OFFLOAD_KEY_FILE)"
                ) from None
            except IntegrityError as exc:
                bad.append((name, str(exc)))
                continue
            if key.name_of(oid) != name:
                bad.append((name, f"holds object {oid}, which is not stored under this name"))
            else:
                ok += 1
        for name, why in bad:
            local.quarantine(name, why)
            console.print(f"quarantined {name}: {why}")
        console.print(
            f"verified {ok + len(bad)} blobs: {ok} ok, {len(bad)} bad (quarantined)"
            + (f", {gone} gone while checking" if gone else "")
        )
    finally:
        local.close()
    if bad:
        raise IntegrityError(
            f"{len(bad)} blob(s) in {settings.store_dir} were damaged or misnamed and were "
            f"quarantined in {local.quarantine_dir}"
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
    with _local(settings, budget) as local:
        freed = local.gc()
        s = local.stats()
    console.print(
        f"freed {freed} bytes ({human_size(freed)}); "
        f"{s.count} objects, {s.bytes} bytes ({human_size(s.bytes)}) remain"
    )
    if local.budget is None:
        console.print("no budget set (OFFLOAD_CACHE_BUDGET or --budget): nothing was evicted")
    elif s.bytes > local.budget:
        console.print(
            f"still over the budget of {human_size(local.budget)}: the rest is pinned or held"
        )


cli.add_command(cache)
