"""Bulk download: every output of a job, of a map's jobs, into a folder (``offload get --to``).

Each output goes to ``<dir>/<name>``, ``name`` from a template (fields ``{job_id}``,
``{index}`` (the job's ``OFFLOAD_TASK_INDEX``), ``{name}`` (the job's name) and ``{output}``;
default ``{output}`` for one job, ``{index}/{output}`` for a map, ``{job_id}/{output}`` for
other lists). Downloads run on a thread pool; each is written to a hidden temp file in the
same folder, fsynced, then renamed: a file under its final name is always whole. A file
already there with the same sha256 is skipped, so a download interrupted (Ctrl-C, a crash)
is resumed by running it again; leftover temp files are replaced. Outputs that could not be
fetched are named in one :class:`DownloadFailed` once the others are done.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from offload.broker.records import JobRecord
from offload.broker.status import JobStatus
from offload.cache.store import Store
from offload.errors import CacheError, SpecError

TMP_PREFIX = ".offload-part-"


class DownloadFailed(CacheError):
    """Some outputs could not be downloaded (named in the message)."""


@dataclass(frozen=True)
class Item:
    job_id: str
    output: str
    oid: str
    dest: Path


@dataclass
class Report:
    """What a download did."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # already there, same content
    failed: dict[str, str] = field(default_factory=dict)  # "<job>/<output>" -> why
    bytes: int = 0


Progress = Callable[[Item, int], None]  # told of each item done, with its bytes (-1: skipped)


def default_template(records: list[JobRecord]) -> str:
    if len(records) == 1:
        return "{output}"
    if all(r.spec.task is not None for r in records):
        return "{index}/{output}"
    return "{job_id}/{output}"


def plan(
    records: Iterable[JobRecord], dest: Path, template: str
) -> tuple[list[Item], dict[str, str]]:
    """The files to write, and the jobs that have none to give (not succeeded)."""
    items: list[Item] = []
    problems: dict[str, str] = {}
    seen: dict[Path, str] = {}
    root = dest.resolve()
    for rec in records:
        if rec.status is not JobStatus.SUCCEEDED:
            problems[rec.id] = f"job is {rec.status.value}, not succeeded"
            continue
        values = {
            "job_id": rec.id,
            "name": rec.spec.name or rec.id,
            "index": str(rec.spec.task[0]) if rec.spec.task is not None else "",
        }
        for output, oid in sorted(rec.outputs.items()):
            try:
                rel = template.format(**values, output=output)
            except (KeyError, IndexError, ValueError) as exc:
                raise SpecError("name", f"template {template!r}: unknown field {exc}") from None
            if "{index}" in template and rec.spec.task is None:
                raise SpecError("name", f"job {rec.id} was not made by map: it has no {{index}}")
            path = (root / rel).resolve()
            if not path.is_relative_to(root) or path == root:
                raise SpecError(
                    "name", f"{rel!r} (job {rec.id}, output {output}) is outside {dest}"
                )
            if path in seen:
                raise SpecError(
                    "name",
                    f"two outputs would be written to {rel!r} ({seen[path]} and "
                    f"{rec.id}/{output}); use a template with {{job_id}} or {{index}}",
                )
            seen[path] = f"{rec.id}/{output}"
            items.append(Item(rec.id, output, oid, path))
    return items, problems


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def fetch_one(store: Store, item: Item) -> int:
    """Write one item, returning its size (-1: it was there already); temp file, fsync,
    rename."""
    dest = item.dest
    if dest.is_file() and sha256_of(dest) == item.oid:
        return -1
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{TMP_PREFIX}{dest.name}.{threading.get_ident()}")
    tmp.unlink(missing_ok=True)
    try:
        store.export(item.oid, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        size = tmp.stat().st_size
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return size


def download(
    store: Store,
    records: list[JobRecord],
    dest: Path,
    template: str | None = None,
    *,
    workers: int = 16,
    progress: Progress | None = None,
) -> Report:
    """Every output of ``records`` under ``dest``; raises :class:`DownloadFailed` naming what
    could not be had (after writing everything else)."""
    template = template or default_template(records)
    items, problems = plan(records, dest, template)
    dest.mkdir(parents=True, exist_ok=True)
    report = Report(failed=dict(problems))
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="offload-get")
    try:
        futures = {pool.submit(fetch_one, store, item): item for item in items}
        for future in as_completed(futures):
            item = futures[future]
            try:
                n = future.result()
            except Exception as exc:  # named in the report; the others go on
                report.failed[f"{item.job_id}/{item.output}"] = f"{type(exc).__name__}: {exc}"
                continue
            (report.skipped if n < 0 else report.written).append(item.dest)
            report.bytes += max(n, 0)
            if progress is not None:
                progress(item, n)
    finally:  # Ctrl-C: stop handing out work; finished files stay, temp files are removed
        pool.shutdown(wait=True, cancel_futures=True)
    if report.failed:
        lines = [f"  {what}: {why}" for what, why in sorted(report.failed.items())[:20]]
        more = len(report.failed) - len(lines)
        raise DownloadFailed(
            f"{len(report.failed)} output(s) or job(s) not downloaded "
            f"({len(report.written)} written, {len(report.skipped)} already there):\n"
            + "\n".join(lines)
            + (f"\n  … and {more} more" if more > 0 else "")
        )
    return report
