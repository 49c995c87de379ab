"""Arrays: one record for the many jobs of a ``map`` (key ``offload:array:<id>``), and its items
kept compactly until they are fed to the queue.

An array's items are jobs whose ids are derived from the array's (:mod:`offload.spec.arrays`).
Submitting an array (:meth:`offload.broker.core.Broker.submit_array`) writes:

* its **record** (count, name, image, batch, when made; ``state`` ``pending`` while the rest
  is written, ``active`` once it all is — a submit cut half way leaves a ``pending`` array,
  which reads as absent and the sweeper deletes: an array is wholly there or wholly absent);
* its **common spec**, sealed and signed once for the array (field ``spec``);
* its **item table**: each item's class ("" for the array's), its own fields over the common
  spec (JSON) and their MAC for the item's id, compressed a part of :data:`TABLE_PART` items
  at a time — tens of bytes an item instead of a job record's kilobytes, and Redis write
  access still cannot change an item (:mod:`offload.cache.jobseal`);
* its **feed state** (``fed``, ``cancelled``): items ``0..fed-1`` have job records; the others
  exist only in the table until the feeder (:mod:`offload.broker.feeder`) makes their records
  and messages, as the class has room.

An item not fed yet reads as ``queued`` (``cancelled`` once its array is), its record
synthesised from the table (:meth:`Arrays.unfed_record`). The transition script counts each
fed item's end in the array's record (``n:<status>``), removes it from the array's live set
and indexes the ones that did not succeed, so :meth:`Arrays.counts` — what ``status()``
shows — costs O(live items), not O(items). Every key expires after ``record_ttl``.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.client import NEVER_DECODE

from offload.broker import keys
from offload.broker.connection import broker_error, translated
from offload.broker.model import JobRecord, parse_record, record_fields
from offload.broker.status import JobStatus
from offload.errors import JobNotFound, SpecError
from offload.spec import JobSpec
from offload.spec.arrays import item_id, item_spec

TABLE_PART = 1000  # items in one part of an array's table
PARTS_PER_TRIP = 50  # table parts written in one round trip
UNFED = "in its array: fed to the queue as its class has room"


@dataclass(frozen=True)
class ArrayInfo:
    """What an array's record says."""

    id: str
    count: int
    name: str = ""
    image: str = ""
    created_at: float = 0.0
    batch: int = 0  # items run one after another in one warm container (0: not batched)
    state: str = "active"  # "pending" while being written
    parts: int = 0  # parts of its item table (0: every item recorded at submit, no table)
    cls: str = ""  # its common spec's resource class (the autoscaler counts the rest there)
    spec: str = ""  # its common spec, sealed and signed (JSON); an item's is this and its fields
    # items by class when they fall in more than one ({} otherwise: all in ``cls``)
    classes: dict[str, int] = field(default_factory=dict)

    def item(self, index: int) -> str:
        """The job id of item ``index``; IndexError outside ``0..count-1``."""
        if not 0 <= index < self.count:
            raise IndexError(f"array {self.id} has items 0..{self.count - 1}, not {index}")
        return item_id(self.id, index)

    def items(self) -> list[str]:
        return [item_id(self.id, i) for i in range(self.count)]


@dataclass(frozen=True)
class Feed:
    """How far an array is fed: items ``0..fed-1`` have records."""

    fed: int
    cancelled: bool


@dataclass(frozen=True)
class Counts:
    """An array's items by where they are, read without reading each item."""

    count: int
    fed: int
    cancelled: bool
    ended: dict[JobStatus, int]  # fed items that ended, by status (the transition script's)
    live: list[str]  # fed items not ended
    bad: list[int] = field(default_factory=list)  # indexes of items ended not succeeded

    @property
    def unfed(self) -> int:
        return self.count - self.fed

    @property
    def settled(self) -> int:
        """Items that will not run again: ended, or cancelled before they were fed."""
        return sum(self.ended.values()) + (self.unfed if self.cancelled else 0)


class Arrays:
    """Arrays' records, tables and feed states, read and written through one Redis client."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.r = client
        self.ttl = ttl

    # -- writing an array --------------------------------------------------------------------

    def _fields(self, info: ArrayInfo) -> dict[str | bytes, Any]:
        return {
            "id": info.id,
            "count": str(info.count),
            "name": info.name,
            "image": info.image,
            "created_at": repr(info.created_at or time.time()),
            "batch": str(info.batch),
            "state": info.state,
            "parts": str(info.parts),
            "class": info.cls,
            "spec": info.spec,
            "classes": json.dumps(info.classes) if info.classes else "",
        }

    def begin(self, info: ArrayInfo) -> None:
        """Write the record of an array about to get a table, ``pending``; it is listed
        for the feeder (and the sweeper, which deletes a ``pending`` one left by a submit
        that died)."""
        with translated():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(keys.array(info.id), mapping=self._fields(info))
            pipe.hset(keys.array_feed(info.id), mapping={"fed": "0", "cancelled": "0"})
            for key in (keys.array(info.id), keys.array_feed(info.id)):
                pipe.expire(key, self.ttl)
            pipe.zadd(keys.ARRAYS_FEEDING, {info.id: info.created_at or time.time()})
            # one member for all its items, listed through it (broker/listing.py)
            pipe.zadd(keys.JOBS_INDEX, {info.id: info.created_at or time.time()})
            pipe.execute()

    def write_table(self, info: ArrayInfo, parts: Sequence[bytes]) -> None:
        """Write the item table: ``parts`` (:func:`pack`), part ``n`` holding items
        ``n * TABLE_PART`` on, :data:`PARTS_PER_TRIP` parts a round trip."""
        with translated():
            for first in range(0, len(parts), PARTS_PER_TRIP):
                pipe = self.r.pipeline(transaction=False)
                for n in range(first, min(len(parts), first + PARTS_PER_TRIP)):
                    pipe.set(keys.array_table(info.id, n), parts[n], ex=self.ttl)
                pipe.execute()

    def activate(self, info: ArrayInfo) -> None:
        """The last step of a submit: the array is there, whole."""
        with translated():
            self.r.hset(keys.array(info.id), "state", "active")

    def delete(self, array_id: str, parts: int = 0) -> None:
        """Remove an array and everything of it (a submit that failed)."""
        with translated():
            pipe = self.r.pipeline(transaction=False)
            pipe.delete(keys.array(array_id), keys.array_feed(array_id))
            pipe.delete(keys.array_live(array_id), keys.array_bad(array_id))
            for part in range(parts):
                pipe.delete(keys.array_table(array_id, part))
            pipe.zrem(keys.ARRAYS_FEEDING, array_id)
            pipe.zrem(keys.JOBS_INDEX, array_id)
            pipe.execute()

    def cancel(self, array_id: str) -> None:
        """No item of the array is fed from now on (the feeder WATCHes this write): its items
        not fed read as ``cancelled``. The caller cancels the fed ones."""
        with translated():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(keys.array_feed(array_id), "cancelled", "1")
            pipe.zrem(keys.ARRAYS_FEEDING, array_id)
            pipe.execute()

    # -- reading -----------------------------------------------------------------------------

    def get(self, array_id: str, *, pending: bool = False) -> ArrayInfo:
        """The array ``array_id``; :class:`JobNotFound` when there is none (never made, older
        than ``record_ttl``, or — unless ``pending`` — still being written)."""
        try:
            h = self.r.hgetall(keys.array(array_id))
        except redis.RedisError as exc:
            raise broker_error(exc) from exc
        if not h or "count" not in h or (h.get("state") == "pending" and not pending):
            raise JobNotFound(f"no array {array_id}")
        return ArrayInfo(
            id=array_id,
            count=int(h["count"]),
            name=h.get("name", ""),
            image=h.get("image", ""),
            created_at=float(h.get("created_at", 0) or 0),
            batch=int(h.get("batch", 0) or 0),
            state=h.get("state", "active") or "active",
            parts=int(h.get("parts", 0) or 0),
            cls=h.get("class", ""),
            spec=h.get("spec", ""),
            classes=json.loads(h["classes"]) if h.get("classes") else {},
        )

    def feed(self, array_id: str) -> Feed:
        with translated():
            fed, cancelled = self.r.hmget(keys.array_feed(array_id), "fed", "cancelled")
        return Feed(int(fed or 0), cancelled == "1")

    def common(self, array_id: str) -> JobSpec | None:
        """The array's common spec, as its record holds it (a worker checks its signature);
        None when there is no such array."""
        try:
            return JobSpec.decode(self.get(array_id).spec)
        except (JobNotFound, SpecError):
            return None

    def table(self, array_id: str, part: int) -> list[Row]:
        """Part ``part`` of the item table: rows by index; [] once deleted."""
        with translated():  # compressed bytes: not decoded as text
            blob = self.r.execute_command(
                "GET", keys.array_table(array_id, part), **{NEVER_DECODE: True}
            )
        return unpack(blob) if blob is not None else []

    def counts(self, info: ArrayInfo) -> Counts:
        """The array's items by where they are: three round trips whatever its size."""
        with translated():
            pipe = self.r.pipeline(transaction=True)  # one snapshot of the counters
            pipe.hgetall(keys.array(info.id))
            pipe.hmget(keys.array_feed(info.id), "fed", "cancelled")
            pipe.smembers(keys.array_live(info.id))
            pipe.zrange(keys.array_bad(info.id), 0, -1, withscores=True)
            h, (fed, cancelled), live, bad = pipe.execute()
        ended = {JobStatus(k[2:]): int(v) for k, v in h.items() if k.startswith("n:") and int(v)}
        return Counts(
            count=info.count,
            fed=int(fed if fed is not None else info.count),
            cancelled=cancelled == "1",
            ended=ended,
            live=sorted(str(j) for j in live),
            bad=sorted(int(score) for _, score in bad),
        )

    def unfed(self, job_id: str) -> tuple[ArrayInfo, Feed] | None:
        """The array and feed state of ``job_id`` when it is an item not fed yet."""
        if len(job_id) != 32:
            return None
        try:
            index = int(job_id[24:], 16)
            info = self.get(job_id[:24])
        except (ValueError, JobNotFound):
            return None
        if not info.parts or index >= info.count or job_id != item_id(info.id, index):
            return None
        feed = self.feed(info.id)
        return (info, feed) if index >= feed.fed else None

    def unfed_status(self, job_id: str) -> JobStatus | None:
        """``queued`` (or ``cancelled``) for an item not fed yet; None for any other id."""
        found = self.unfed(job_id)
        if found is None:
            return None
        return JobStatus.CANCELLED if found[1].cancelled else JobStatus.QUEUED

    def unfed_record(self, job_id: str) -> JobRecord | None:
        """The record of an item not fed yet, as it will be written (from the table)."""
        found = self.unfed(job_id)
        if found is None:
            return None
        info, feed = found
        index = int(job_id[24:], 16)
        rows = self.table(info.id, index // TABLE_PART)
        if len(rows) <= index % TABLE_PART:
            return None
        cls = rows[index % TABLE_PART][0]
        spec = row_spec(
            info, JobSpec.decode(info.spec) if info.spec else None, rows[index % TABLE_PART], index
        )
        status = JobStatus.CANCELLED if feed.cancelled else JobStatus.QUEUED
        fields = record_fields(job_id, spec, cls or info.cls, status, info.created_at, UNFED)
        return parse_record(job_id, fields, spec)


Row = tuple[str, str, str]  # an item: its class ("": the array's), its own fields, their MAC


def pack(rows: Sequence[Row]) -> bytes:
    text = json.dumps(rows, separators=(",", ":"), ensure_ascii=False)
    return zlib.compress(text.encode("utf-8"), 6)


def unpack(blob: bytes) -> list[Row]:
    """A packed part's rows; a part written before arrays had a common spec holds (class,
    whole sealed spec) pairs: read with an empty MAC (:func:`row_spec` knows them)."""
    rows = json.loads(zlib.decompress(blob))
    return [(str(row[0]), str(row[1]), str(row[2]) if len(row) > 2 else "") for row in rows]


def row_spec(info: ArrayInfo, common: JobSpec | None, row: Row, index: int) -> JobSpec:
    """Item ``index``'s spec from its row: ``common`` (the array's common spec, decoded) with
    the item's fields over it; for an array written before common specs (no ``spec`` in its
    record), the whole sealed spec the row holds."""
    _, own, sig = row
    if common is None or not info.spec:
        return JobSpec.decode(own)
    return item_spec(common, own, index, sig)


__all__ = [
    "TABLE_PART",
    "ArrayInfo",
    "Arrays",
    "Counts",
    "Feed",
    "Row",
    "pack",
    "row_spec",
    "unpack",
]
