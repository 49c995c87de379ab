"""The ``offload`` command. Every error of the :mod:`offload.errors` tree becomes a clear
message on stderr and that branch's exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from offload.config import Settings, load_settings
from offload.errors import OffloadError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


def settings_of(ctx: click.Context) -> Settings:
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings()
    settings: Settings = obj["settings"]
    return settings


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OffloadError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="offload")
def cli() -> None:
    """offload: run batch jobs in containers, with the data handled for you."""


def main() -> None:
    from offload.cli import (  # noqa: F401  (registers the commands)
        aclcmd,
        cachecmd,
        controlcmd,
        jobs,
        keycmd,
        nodescmd,
        platform,
        scalecmd,
        schedulecmd,
        submitcmd,
    )

    cli(prog_name="offload")
