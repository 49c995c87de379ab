"""``offload map``: one job per line of a JSON Lines file, submit's options in common."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any

import click

from offload.cli import cli, handle_errors
from offload.cli.common import INPUT_HELP, client_of, job_options, parse_inputs, parse_job_options
from offload.errors import SpecError
from offload.producer.array import JobArray
from offload.spec.arrays import MAX_BATCH

EACH_HELP = (
    "The items: a JSON Lines file (or - for stdin), one JSON object a line with the fields "
    "of a Python map item — params, inputs, env, labels, secrets, name, cpu, memory, gpus, "
    "timeout, retries, priority, … Its inputs, params, env, labels and secrets are merged "
    "over the common ones (--input, --param, …), the other fields replace them. Blank lines "
    "are skipped."
)


def read_items(stream: IO[str], source: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The items of a JSON Lines stream and the line each came from. A line that is not a
    JSON object is refused naming ``<source>:<line>``."""
    items: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(
                f"{source}:{number}", f"not JSON: {exc.msg} (column {exc.colno})"
            ) from None
        if not isinstance(item, dict):
            raise SpecError(
                f"{source}:{number}",
                f"expected a JSON object of job options, got {type(item).__name__}",
            )
        items.append(item)
        lines.append(number)
    if not items:
        raise SpecError("--each", f"{source} holds no items (one JSON object a line)")
    return items, lines


def load_items(each: str) -> tuple[list[dict[str, Any]], list[int], str]:
    """``--each``'s items (a JSON Lines file, or ``-`` for stdin), the line each came from,
    and the name of where they came from."""
    source = "<stdin>" if each == "-" else each
    if each == "-":
        items, lines = read_items(sys.stdin, source)
        return items, lines, source
    try:
        with open(each, encoding="utf-8") as f:
            items, lines = read_items(f, source)
    except OSError as exc:
        raise SpecError("--each", f"cannot read {each!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SpecError("--each", f"{each!r} is not UTF-8 text: {exc.reason}") from None
    return items, lines, source


def on_line(exc: SpecError, source: str, lines: Sequence[int]) -> SpecError:
    """``each[i].field`` named by the line of the items file it came from."""
    head, _, rest = exc.field.partition(".")
    if head.startswith("each[") and head.endswith("]"):
        index = int(head[5:-1])
        field = f"{source}:{lines[index]} ({head}){'.' + rest if rest else ''}"
        return type(exc)(field, exc.message)
    return exc


def watch(array: JobArray) -> Counter[str]:
    """A live bar of the items ended, with counts by status, until every item has ended;
    the final counts by status."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    counts: Counter[str] = Counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(f"array {array.id}", total=len(array), counts="")
        while True:
            st = array.status()  # counters and live items: the same cost at any size
            counts = Counter({s.value: n for s, n in st.by_status.items()})
            shown = "  ".join(f"{s} {n}" for s, n in sorted(counts.items()))
            bar.update(task, completed=st.ended, counts=shown)
            if st.done:
                return counts
            time.sleep(0.5)


@cli.command("map", context_settings={"ignore_unknown_options": False})
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option("--each", "each", required=True, metavar="ITEMS.jsonl", help=EACH_HELP)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=PATH|sha256:…|JOB_ID:OUTPUT",
    help=INPUT_HELP,
)
@job_options
@click.option("--name", default=None, help="The jobs' name (an item's own name replaces it).")
@click.option(
    "--batch",
    type=click.IntRange(1, MAX_BATCH),
    default=None,
    metavar="K",
    help="Run up to K consecutive items one after another in one warm container (for tiny "
    "items: one container start per K); each item keeps its own exit code, timeout, logs, "
    "outputs and retries. Unset: one container per item.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Show a live bar of the items done, failed and running; exit 0 when every item "
    "succeeded, 1 otherwise.",
)
@click.pass_context
@handle_errors
def map_(
    ctx: click.Context,
    image: str,
    command: tuple[str, ...],
    each: str,
    inputs: tuple[str, ...],
    name: str | None,
    batch: int | None,
    wait: bool,
    **options: Any,
) -> None:
    """Submit an array: one job running IMAGE (optionally with COMMAND) per item of --each;
    prints the array's id.

    Item i is the job ARRAY:i for status, logs and cancel; `offload status ARRAY` counts
    the items by status, `offload cancel ARRAY` cancels every item not ended.

    Every item is checked (and its local input files uploaded) before anything is queued:
    a bad item is refused naming its line, and no job of the map exists. Each job sees its
    place in OFFLOAD_TASK_INDEX / OFFLOAD_TASK_COUNT.
    """
    items, lines, source = load_items(each)
    client = client_of(ctx)
    common = parse_job_options(inputs=parse_inputs(inputs), name=name, **options)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("checking items", total=len(items))

    def progress(stage: str, done: int, total: int) -> None:
        bar.update(task, description=f"{stage} items", completed=done, total=total)

    try:
        with bar:
            array = client.map(image, list(command) or None, each=items, options=common,
                               batch=batch, progress=progress)  # fmt: skip
    except SpecError as exc:
        raise on_line(exc, source, lines) from None
    click.echo(array.id)
    click.echo(
        f"array {array.id}: {len(array):,} items queued (offload status {array.id}; item i is "
        f"{array.id}:i)" + (f"; {batch} items a container" if batch else ""),
        err=True,
    )
    if not wait:
        return
    counts = watch(array)
    failed = len(array) - counts.get("succeeded", 0)
    click.echo(
        f"{len(array)} items: {counts.get('succeeded', 0)} succeeded, {failed} not", err=True
    )
    sys.exit(1 if failed else 0)
