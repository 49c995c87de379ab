"""Listing jobs at any size: filters, newest first, a page at a time (``offload ls``).

Every job — live in Redis or archived (:mod:`offload.broker.archive`) — has a member of
``offload:jobs`` scored by its submit time, so a page is a walk down that index from a
cursor: ids are read ``CHUNK`` at a time (``ZREVRANGEBYSCORE … LIMIT``), live records in one
pipelined round trip, archived ones from their segments (each segment read once, cached),
and filtered here. An array is one member (its id, at its submit time), walked as its items
that have records — fed so far — last first: a million-item array costs the index one
member, not a million, and ``--array`` walks that array alone. A walk looks at no more than
``scan`` ids per page, so a filter that matches little never reads the whole history at
once: the page it returns then holds what matched so far, with the cursor to go on from.

A cursor is ``<submit time>:<job id>`` of the last job of a page (what ``--after`` takes).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from offload.broker import keys
from offload.broker.model import JobRecord
from offload.broker.records import JobRecords
from offload.broker.status import JobStatus
from offload.errors import SpecError
from offload.spec.arrays import ARRAY_ID_RE, item_id

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
    page = Page()
    top: str = "+inf" if q.until is None else repr(q.until)
    at: tuple[float, str] | None = None  # the cursor: ids at its score from its id on were shown
    if q.after is not None:
        score, last = parse_cursor(q.after)
        if q.until is None or score <= q.until:
            top, at = repr(score), (score, last)
    bottom = "-inf" if q.since is None else repr(q.since)
    ids = _array(records, q, at, top, bottom) if q.array else _walk(records, top, bottom, at)
    chunk: list[tuple[str, float]] = []
    for job_id, score in ids:
        chunk.append((job_id, score))
        page.scanned += 1
        if len(chunk) < CHUNK and page.scanned < q.scan:
            continue
        if _fill(records, q, page, chunk):
            return page
        last, at_score = chunk[-1]
        page.next = cursor_of(at_score, last)  # where a cut scan goes on
        chunk = []
        if page.scanned >= q.scan:
            return page
    if not _fill(records, q, page, chunk):
        page.next = None  # the end of the index
    return page


def _fill(records: JobRecords, q: JobQuery, page: Page, chunk: list[tuple[str, float]]) -> bool:
    """Add the jobs of ``chunk`` that match to ``page``; True once it is full (its cursor
    set to the last one)."""
    for job_id, score, rec in _records(records, chunk):
        if rec is not None and q.matches(rec):
            page.jobs.append(rec)
            if len(page.jobs) >= q.limit:
                page.next = cursor_of(score, job_id)
                return True
    return False


def _walk(
    records: JobRecords, top: str, bottom: str, at: tuple[float, str] | None
) -> Iterator[tuple[str, float]]:
    """Every job id of ``offload:jobs`` between ``bottom`` and ``top``, newest first (ties by
    id, descending) and past the cursor ``at``; an array (one member, at its submit time)
    as its items fed so far, last first."""
    offset = 0
    while True:
        got = records._run(
            records.r.zrevrangebyscore, keys.JOBS_INDEX, top, bottom, start=offset, num=CHUNK,
            withscores=True,
        )  # fmt: skip
        offset += len(got)
        for member, value in got:
            job_id, score = str(member), float(value)
            if ARRAY_ID_RE.match(job_id):
                yield from _items(records, job_id, score, at)
            elif at is None or not (score == at[0] and job_id >= at[1]):
                yield job_id, score
        if len(got) < CHUNK:
            return


def _array(
    records: JobRecords, q: JobQuery, at: tuple[float, str] | None, top: str, bottom: str
) -> Iterator[tuple[str, float]]:
    """The items of ``q.array`` fed so far, last first, within ``q``'s times. An array made
    before arrays were one member (each item its own) is found by its items' ids."""
    found = records._run(records.r.zscore, keys.JOBS_INDEX, q.array)
    if found is None:
        return (j for j in _walk(records, top, bottom, at) if j[0].startswith(q.array))
    score = float(found)
    if (q.since is not None and score < q.since) or (q.until is not None and score > q.until):
        return iter(())
    return _items(records, q.array, score, at)


def _items(
    records: JobRecords, array_id: str, score: float, at: tuple[float, str] | None
) -> Iterator[tuple[str, float]]:
    """The array's items that have records (fed), highest index first, past ``at``."""
    arrays = records.unfed
    if arrays is None:
        return
    if not records._run(records.r.exists, keys.array(array_id)):  # expired: its member goes
        records._run(records.r.zrem, keys.JOBS_INDEX, array_id)
        return
    fed = arrays.feed(array_id).fed
    top = fed - 1
    if at is not None and score == at[0]:  # ids at this score from the cursor's on were shown
        if at[1].startswith(array_id):
            top = min(top, int(at[1][24:], 16) - 1)
        elif at[1] < array_id:
            return
    for index in range(top, -1, -1):
        yield item_id(array_id, index), score


def _records(
    records: JobRecords, chunk: list[tuple[str, float]]
) -> list[tuple[str, float, JobRecord | None]]:
    """The records of a chunk of ids, in order (:meth:`JobRecords.get_many`)."""
    recs = records.get_many([job_id for job_id, _ in chunk])
    return [(job_id, score, rec) for (job_id, score), rec in zip(chunk, recs, strict=True)]


__all__ = ["JobQuery", "Page", "cursor_of", "list_jobs", "parse_cursor"]
