"""The ``offload`` command. Every error of the :mod:`offload.errors` tree becomes a clear
message on stderr and that branch's exit code."""

from __future__ import annotations

import functools
import gc
import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from offload.errors import OffloadError

if TYPE_CHECKING:
    from offload.config import Settings

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


def settings_of(ctx: click.Context) -> Settings:
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        from offload.config import load_settings  # pydantic: only for a command that runs

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


# Each command's module and one-line help: a command's module (and what it imports: Celery,
# docker, boto3) is imported only when that command runs, so `offload --help`, `status` and
# `ls` start quickly. tests/test_quick_cli.py keeps this table equal to the commands' own.
COMMANDS: dict[str, tuple[str, str]] = {
    "acl": ("aclcmd", "Print the Redis ACL users for each role (producer, worker, autoscaler, "
            "monitor)."),
    "autoscaler": ("scalecmd", "Scale worker nodes on queue depth, per resource class (limits "
                   "from OFFLOAD_AUTOSCALE*)."),
    "cache": ("cachecmd", "The node's local content cache: its size, its health, its "
              "clean-up."),
    "cancel": ("jobs", "Cancel a job: at once when waiting or queued; a running one is killed "
               "by its worker."),
    "down": ("platform", "Stop what `offload up` started."),
    "flower": ("platform", "Run the Flower monitoring UI against the broker."),
    "get": ("jobs", "Fetch, verify and decrypt OBJECT_ID (an output's sha256 id) into a file "
            "(-o), or every output of one or more jobs (JOB_ID...) into a folder (--to)."),
    "hold": ("controlcmd", "Start no new job of CLASS (running ones finish; the others wait "
             "and say why)."),
    "key": ("keycmd", "The cluster key that names and encrypts every stored object."),
    "limit": ("controlcmd", "Cluster-wide caps on running jobs per label value (limit set "
              "db=orders 2)."),
    "logs": ("jobs", "Print a job's output (stdout to stdout, stderr to stderr)."),
    "ls": ("jobs", "List jobs, live and archived, newest first, a page at a time "
           "(tab-separated when stdout is not a terminal; the next page's cursor goes to "
           "stderr)."),
    "map": ("mapcmd", "Submit an array: one job running IMAGE (optionally with COMMAND) per "
            "item of --each; prints the array's id."),
    "nodes": ("nodescmd", "List worker nodes: classes, slots, running jobs, last heartbeat, "
              "CPUs / memory / GPUs in use (of what the node gives jobs) and free, and state: "
              "up,..."),
    "put": ("jobs", "Store FILES; prints each one's id, usable as a job input."),
    "release": ("controlcmd", "Start jobs of a held CLASS again; the jobs that waited on the "
                "hold are queued."),
    "schedule": ("schedulecmd", "Run a job on a cron expression or every so often (fired by "
                 "`offload scheduler`)."),
    "scheduler": ("schedulecmd", "Fire the schedules (one active scheduler in the cluster; "
                  "others stand by)."),
    "status": ("jobs", "Show a job's status, timeline and outputs; its parents and children, "
               "and for a waiting job what it waits for."),
    "submit": ("submitcmd", "Submit a job running IMAGE (optionally with COMMAND); prints its "
               "id."),
    "up": ("platform", "Start the embedded platform: local Redis, one worker, the autoscaler, "
           "Flower."),
    "worker": ("platform", "Run a worker node serving the resource classes this machine can "
               "take."),
}  # fmt: skip


def import_quietly(module: str) -> None:
    """Import a command's module with the cyclic garbage collector paused, then freeze what
    the import made (modules, classes, functions: they live as long as the process) out of
    its reach. An import allocates much and frees little, so the collections it would
    trigger find nothing to free; on this 2-core machine they were a tenth of `offload
    status`'s start-up. Collection resumes as before for what the command allocates."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        importlib.import_module(module)
    finally:
        if enabled:
            gc.freeze()
            gc.enable()


class LazyGroup(click.Group):
    """A group whose commands' modules are imported when a command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            import_quietly(f"offload.cli.{COMMANDS[cmd_name][0]}")
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="offload")
def cli() -> None:
    """offload: run batch jobs in containers, with the data handled for you."""


def load_all() -> None:
    """Import every command's module (for a caller that wants ``cli.commands`` complete)."""
    for module in sorted({m for m, _ in COMMANDS.values()}):
        importlib.import_module(f"offload.cli.{module}")


def main() -> None:
    cli(prog_name="offload")
