"""Key commands: ``offload key init`` writes the cluster key, ``offload key show`` checks it."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from offload.cache.keys import init_key, load_key
from offload.cli import cli, handle_errors, settings_of
from offload.config import Settings

console = Console(highlight=False, soft_wrap=True)


def key_file_of(settings: Settings) -> Path:
    """The key file: the ``key_file`` setting (``OFFLOAD_KEY_FILE``), else ``<home>/key``."""
    configured: Path | None = getattr(settings, "key_file", None)
    return Path(configured) if configured is not None else settings.home / "key"


@click.group()
def key() -> None:
    """The cluster key that names and encrypts every stored object."""


@key.command("init")
@click.option(
    "--force", is_flag=True, help="Replace an existing key (old objects become unreadable)."
)
@click.pass_context
@handle_errors
def init(ctx: click.Context, force: bool) -> None:
    """Write a new random cluster key, readable only by its owner."""
    path = init_key(key_file_of(settings_of(ctx)), force=force)
    fingerprint = load_key(path).fingerprint
    console.print(f"wrote {path} (key {fingerprint})")
    console.print(
        "Keep a copy somewhere safe: objects sealed with this key cannot be read without it. "
        "Every node and producer of a cluster needs the same file (mode 600)."
    )


@key.command("show")
@click.pass_context
@handle_errors
def show(ctx: click.Context) -> None:
    """Check the key file and print its path and public fingerprint."""
    path = key_file_of(settings_of(ctx))
    console.print(f"{path} (key {load_key(path).fingerprint})")


cli.add_command(key)
