"""Listing jobs at any size: filters, newest first, a page at a time (``offload ls``).

Every job — live in Redis or archived (:mod:`offload.broker.archive`) — has a member of
``offload:jobs`` scored by its submit time, so a page is a walk down that index from a
cursor: ids are read ``CHUNK`` at a time (``ZREVRANGEBYSCORE … LIMIT``), live records in one
pipelined round trip, archived ones from their segments (each segment read once, cached), and
filtered here. A walk looks at no more than ``scan`` ids per page, so a filter that matches
little never reads the whole history at once: the page it returns then holds what matched so
far, with the cursor to go on from.

A cursor is ``<submit time>:<job id>`` of the last job of a page (what ``--after`` takes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from offload.broker import keys
from offload.broker.model import JobRecord, parse_record
from offload.broker.records import JobRecords
from offload.broker.status import JobStatus
from offload.errors import SpecError

CHUNK = 200
CURSOR_RE = re.compile(r"^(\d+(?:\.\d+)?):([0-9a-f]{32})$")


@dataclass(frozen=True)
class JobQuery:
    """Which jobs a listing wants; empty fields match everything."""

    statuses: frozenset[JobStatus] = frozenset()
    classes: frozenset[str] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()  # every one must match
    name: str = ""  # prefix of the display name
    since: float | None = None  # submitted at or after (unix time)
    until: float | None = None  # submitted at or before
    limit: int = 50
    after: str | None = None  # a cursor: the page after it
    array: str = ""  # only the items of this array (ids that start with its id)
    scan: int = 20_000  # most ids looked at for one page

    def matches(self, rec: JobRecord) -> bool:
        if self.statuses and rec.status not in self.statuses:
            return False
        if self.classes and rec.resource_class not in self.classes:
            return False
        if self.name and not rec.name.startswith(self.name):
            return False
        labels = rec.spec.labels
        return all(labels.get(k) == v for k, v in self.labels)


@dataclass
class Page:
    jobs: list[JobRecord] = field(default_factory=list)
    next: str | None = None  # the cursor of the next page; None: this was the last
    scanned: int = 0  # ids looked at


def parse_cursor(cursor: str) -> tuple[float, str]:
    m = CURSOR_RE.match(cursor)
    if not m:
        raise SpecError(
            "--after",
            f"{cursor!r} is not a cursor (one looks like '1764815600.123456:<32 hex digits>', "
            "as `offload ls --json` prints it)",
        )
    return float(m.group(1)), m.group(2)


def cursor_of(score: float, job_id: str) -> str:
    return f"{score!r}:{job_id}"


def list_jobs(records: JobRecords, q: JobQuery) -> Page:
    """One page of the jobs ``q`` asks for, newest first."""
    r = records.r
    page = Page()
    top: str = "+inf" if q.until is None else repr(q.until)
    at: tuple[float, str] | None = None  # the cursor: ids at its score from its id on were shown
    if q.after is not None:
        score, last = parse_cursor(q.after)
        if q.until is None or score <= q.until:
            top, at = repr(score), (score, last)
    bottom = "-inf" if q.since is None else repr(q.since)
    offset = 0
    while page.scanned < q.scan:
        got = records._run(
            r.zrevrangebyscore, keys.JOBS_INDEX, top, bottom, start=offset, num=CHUNK,
            withscores=True,
        )  # fmt: skip
        if not got:
            page.next = None
            return page
        offset += len(got)
        chunk = [(str(j), float(s)) for j, s in got]
        if at is not None:  # ties are ordered by id, descending
            chunk = [(j, s) for j, s in chunk if not (s == at[0] and j >= at[1])]
        page.scanned += len(got)
        if q.array:  # an item's id starts with its array's: no record read for the others
            chunk = [(j, s) for j, s in chunk if j.startswith(q.array)]
        for job_id, score, rec in _records(records, chunk):
            if rec is not None and q.matches(rec):
                page.jobs.append(rec)
                if len(page.jobs) >= q.limit:
                    page.next = cursor_of(score, job_id)
                    return page
        if len(got) < CHUNK:
            page.next = None  # the end of the index
            return page
        page.next = cursor_of(float(got[-1][1]), str(got[-1][0]))  # where a cut scan goes on
    return page


def _records(
    records: JobRecords, chunk: list[tuple[str, float]]
) -> list[tuple[str, float, JobRecord | None]]:
    """The records of a chunk of ids, in order: live ones in one round trip, archived ones
    from their segments; None for an id with neither (its record expired or was pruned)."""
    pipe = records.r.pipeline(transaction=False)
    for job_id, _ in chunk:
        pipe.hgetall(keys.job(job_id))
    live = records._run(pipe.execute)
    missing = [job_id for (job_id, _), h in zip(chunk, live, strict=True) if not h]
    archived = records._run(records.archive.entries, missing) if missing else {}
    out: list[tuple[str, float, JobRecord | None]] = []
    for (job_id, score), h in zip(chunk, live, strict=True):
        if h:
            out.append((job_id, score, parse_record(job_id, h)))
        elif job_id in archived:
            out.append((job_id, score, parse_record(job_id, archived[job_id].record)))
        else:
            out.append((job_id, score, None))
    return out


__all__ = ["JobQuery", "Page", "cursor_of", "list_jobs", "parse_cursor"]
