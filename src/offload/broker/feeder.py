"""The feeder: an array's items become jobs as their class has room, not all at submit.

An array's items wait in its table (:mod:`offload.broker.arrays`) until the feeder *feeds*
them: it writes their job records (each the array's common spec with the item's own fields
over it, both as the producer signed them — the feeder signs nothing) and sends their
messages, one per item or one per chunk of a batched array
(:func:`offload.broker.publish.publish_chunks`). After that an item is an ordinary job:
leases, retries, OOM escalation, limits, memo, dependencies and the archive treat it as any.

**How much.** An array is fed while its class queue holds fewer ready messages than the
class has slots (at least two): enough that a slot freeing finds work at once, few enough that
a single job submitted meanwhile waits behind at most one message per slot. Single jobs are
never held back; arrays share what they leave, round robin on average (each pass starts at a
random array; the sweeper feeds every array a pass, and a worker each time one of its jobs
ends: a slot freed). A class with no node
(scaling from zero) is fed two messages; the autoscaler counts the items still in the table
as work of their class (:mod:`offload.broker.depths`). An array's live items (fed, not ended)
stay under four times that (parked items do not draw the whole table into records), and a
held class is fed nothing. An array whose items fall in several classes (items built with
resources of their own) is fed in order while the class of each next item has room, and
counted as work of each class by its items not fed yet (``fed:<class>`` in its feed state).

**Safety.** One feeder at a time per array (a lock, ``SET NX PX``), and each feed is one
``WATCH``/``MULTI`` on the array's feed state: the records, the new ``fed`` and the live set
are written together or not at all, so an item is never made twice, and a cancel (which
writes the feed state) either precedes the feed — nothing is fed — or follows it and
cancels what was fed. Messages go after the transaction: a feeder that dies between the two
leaves items ``queued`` without a message, which the sweeper publishes (lost messages).
"""

from __future__ import annotations

import collections
import logging
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis

from offload.broker import keys, scripts
from offload.broker.arrays import TABLE_PART, ArrayInfo, Row, row_spec
from offload.broker.queues import queue_lists
from offload.broker.status import JobStatus
from offload.errors import BrokerError, JobNotFound
from offload.spec import JobSpec
from offload.spec.arrays import item_id

if TYPE_CHECKING:
    from offload.broker.core import Broker

log = logging.getLogger(__name__)

LOCK_MS = 30_000
PENDING_GRACE = 600.0  # seconds a ``pending`` array (a submit that died) is kept
MIN_TARGET = 2  # ready messages an array's class is fed up to, at least
LIVE_PER_MESSAGE = 4  # an array's live items, at most, per ready message of the target


class Feeder:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.r: redis.Redis = broker.redis
        self.arrays = broker.arrays
        self.records = broker.records
        self._slots: tuple[float, dict[str, int]] = (0.0, {})
        self._release = self.r.register_script(scripts.RELEASE_LOCK)

    # -- who is fed ----------------------------------------------------------------------------

    def feed_all(self) -> int:
        """Feed every array with items left as its class has room, starting at a random one
        (round robin on average), and delete ``pending`` arrays left by a submit that died;
        returns the items fed. The sweeper's step, and a worker's once a job ends."""
        fed = 0
        ids = [str(a) for a in self.r.zrange(keys.ARRAYS_FEEDING, 0, -1)]
        if not ids:
            return 0
        start = random.randrange(len(ids))
        for array_id in ids[start:] + ids[:start]:
            try:
                fed += self.feed(array_id)
            except BrokerError:
                raise
            except Exception:  # one bad array must not stop the others
                log.exception("array %s: feeding failed", array_id)
        return fed

    def after_item(self, job_id: str) -> int:
        """A job (an array's item, a chunk, or any other) ended on a worker: a slot freed,
        so feed the arrays waiting for one now rather than at the next sweep."""
        if not self.r.zcard(keys.ARRAYS_FEEDING):
            return 0
        return self.feed_all()

    def feed(self, array_id: str, *, everything: bool = False) -> int:
        """Feed ``array_id`` as its class has room (``everything``: all of it); returns how
        many items were fed."""
        token = uuid.uuid4().hex
        lock = keys.array_feeding(array_id)
        if not self.r.set(lock, token, nx=True, px=LOCK_MS):
            return 0  # another feeder is at it
        try:
            return self._feed(array_id, everything)
        finally:
            self._release(keys=[lock], args=[token])

    def _feed(self, array_id: str, everything: bool) -> int:
        try:
            info = self.arrays.get(array_id, pending=True)
        except JobNotFound:
            self.r.zrem(keys.ARRAYS_FEEDING, array_id)
            return 0
        if info.state == "pending":
            if time.time() - info.created_at > PENDING_GRACE:
                log.warning("array %s: its submit never finished; deleted", array_id)
                self.arrays.delete(array_id, info.parts)
            return 0
        feed = self.arrays.feed(array_id)
        if feed.cancelled or feed.fed >= info.count:
            self._done(info, feed.fed)
            return 0
        rows = self._rows(info, feed.fed, info.count - feed.fed if everything else None)
        if not rows:
            return 0
        return self._write(info, feed.fed, rows)

    def _rows(self, info: ArrayInfo, fed: int, n: int | None) -> list[Row]:
        """The next items' table rows: ``n`` of them, or as many as their class has room
        for now."""
        mixed = n is None and bool(info.classes)
        if n is None and not mixed:  # room in the array's one class: checked before reading
            n = self.room(info, info.cls)
            if n <= 0:
                return []
        part = self.arrays.table(info.id, fed // TABLE_PART)
        if not part:
            return []
        if mixed:  # in order, while the class of each next item has room (read as met)
            rows, rooms = part[fed % TABLE_PART :], dict[str, int]()
            for take, (cls, *_) in enumerate(rows):
                cls = cls or info.cls
                if cls not in rooms:
                    rooms[cls] = self.room(info, cls)
                if rooms[cls] <= 0:
                    return rows[:take]
                rooms[cls] -= 1
            return rows
        assert n is not None
        n = min(n, info.count - fed)
        rows = part[fed % TABLE_PART :]
        first = fed // TABLE_PART + 1
        while len(rows) < n:
            more = self.arrays.table(info.id, first)
            if not more:
                break
            rows += more
            first += 1
        return rows[:n]

    def room(self, info: ArrayInfo, cls: str) -> int:
        """How many of ``info``'s items of class ``cls`` to feed now: a message's worth (an
        item, or a chunk) for each ready message the class lacks, while the array's live items
        (fed, not ended) stay under :data:`LIVE_PER_MESSAGE` times the target. Items that leave
        the queue without ending — parked by a concurrency limit, waiting for an identical job —
        so stop the feed instead of drawing the whole table into records. A held class is fed
        nothing."""
        per = max(1, info.batch)
        pipe = self.r.pipeline(transaction=False)
        for name in queue_lists(cls):
            pipe.llen(name)
        pipe.scard(keys.array_live(info.id))
        pipe.sismember(keys.HELD, cls)
        *lengths, live, held = pipe.execute()
        if held:
            return 0
        target = self.target(cls)
        messages = min(target - sum(int(x) for x in lengths),
                       (LIVE_PER_MESSAGE * target * per - int(live)) // per)  # fmt: skip
        return max(0, messages) * per

    def target(self, cls: str) -> int:
        """Ready messages a class is fed up to: its live nodes' slots (read at most every
        two seconds), at least :data:`MIN_TARGET`."""
        at, slots = self._slots
        if time.monotonic() - at > 2.0:
            slots = {}
            for node in self.broker.nodes.nodes():
                if node.lost or node.draining:
                    continue
                for c in node.classes:
                    slots[c] = slots.get(c, 0) + node.slots
            self._slots = (time.monotonic(), slots)
        return max(MIN_TARGET, slots.get(cls, 0))

    # -- feeding -------------------------------------------------------------------------------

    def _write(self, info: ArrayInfo, fed: int, rows: list[Row]) -> int:
        jobs = []
        common = JobSpec.decode(info.spec) if info.spec else None
        for i, row in enumerate(rows):
            cls = row[0]
            spec = row_spec(info, common, row, fed + i)
            status = JobStatus.WAITING if spec.parents() else JobStatus.QUEUED
            jobs.append((item_id(info.id, fed + i), spec, cls or info.cls, status))
        ids = [j[0] for j in jobs]
        feed_key = keys.array_feed(info.id)
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(feed_key)
                state: Any = pipe.hmget(feed_key, "fed", "cancelled")  # watching: at once
                if int(state[0] or 0) != fed or state[1] == "1":
                    return 0  # fed or cancelled meanwhile
                pipe.multi()
                # the array's member of offload:jobs lists its items (broker/listing.py)
                recs = [self.records.queue_create(pipe, *job, indexed=False) for job in jobs]
                pipe.hset(feed_key, "fed", str(fed + len(jobs)))
                if info.classes:  # per class, for the autoscaler's backlog (depths.py)
                    for cls, n in collections.Counter(job[2] for job in jobs).items():
                        pipe.hincrby(feed_key, f"fed:{cls}", n)
                pipe.sadd(keys.array_live(info.id), *ids)
                pipe.expire(keys.array_live(info.id), self.arrays.ttl)
                pipe.execute()
            except redis.WatchError:
                return 0
        for rec in recs:
            if rec.status is JobStatus.WAITING:
                self.broker.pipeline.link(rec.id, rec.spec)
        queued = [rec for rec in recs if rec.status is JobStatus.QUEUED]
        from offload.broker.publish import publish_chunks, publish_many

        try:
            if info.batch:
                publish_chunks(self.broker.app, queued, self.broker.producer(), info.batch,
                               info.name)  # fmt: skip
            else:
                publish_many(self.broker.app, queued, self.broker.producer())
        except Exception as exc:  # kombu's errors too: the sweeper publishes what is left
            self.broker.close_producer()
            log.warning("array %s: items fed, not all published (%s)", info.id, exc)
        if fed + len(jobs) >= info.count:
            self._done(info, fed + len(jobs))
        else:  # the table's parts fed whole now are not read again
            done = range(fed // TABLE_PART, (fed + len(jobs)) // TABLE_PART)
            if done:
                self.r.delete(*(keys.array_table(info.id, part) for part in done))
        return len(jobs)

    def _done(self, info: ArrayInfo, fed: int) -> None:
        """Nothing more to feed: the array leaves the feeding index; the parts of its table
        that were fed go (a cancelled array keeps the rest: its items read as cancelled)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(keys.ARRAYS_FEEDING, info.id)
        for part in range(min(info.parts, fed // TABLE_PART + (fed >= info.count))):
            pipe.delete(keys.array_table(info.id, part))
        pipe.execute()


__all__ = ["Feeder"]
