"""``offload get JOB_ID... --to DIR``: a rich progress bar over a bulk download."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from offload.producer.client import Client
from offload.producer.download import Item
from offload.spec import format_size


def bulk_download(
    client: Client, job_ids: list[str], to: Path, template: str | None, parallel: int
) -> None:
    err = Console(stderr=True, highlight=False)
    columns = (
        TextColumn("[bold]get[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files  {task.fields[size]}  {task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    records = [client.broker.records.get(j) for j in job_ids]
    total = sum(len(r.outputs) for r in records)
    t0, done = time.monotonic(), [0]
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("get", total=total, size="0 B", rate="")

        def tick(item: Item, n: int) -> None:
            done[0] += max(n, 0)
            rate = done[0] / max(time.monotonic() - t0, 1e-6)
            bar.update(
                task, advance=1, size=format_size(done[0]), rate=f"{format_size(int(rate))}/s"
            )

        report = client.download_outputs(job_ids, to, template, workers=parallel, progress=tick)
    err.print(
        f"{len(report.written)} written, {len(report.skipped)} already there "
        f"({format_size(report.bytes)}) in {to}"
    )
