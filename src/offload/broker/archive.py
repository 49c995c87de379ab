"""The cold tier: finished jobs leave Redis for the sealed store, in segments of many jobs.

``Settings.archive_after`` seconds after a job ends, the sweeper (one at a time: it holds the
sweeper's lock) takes up to ``archive_batch`` such jobs, oldest end first, writes their
records, timelines, log streams and parents/children sets as **one segment** (JSON, zlib
compressed, then sealed like every object: encrypted, in the CAS and S3 when configured) and,
in one Lua script, deletes their keys from Redis and notes each job's segment. What Redis
keeps of an archived job (:mod:`offload.broker.keys`): its member of ``offload:jobs`` (for
``offload ls``) and one field ``job id -> segment number`` of ``offload:archive:where`` —
about 200 bytes (``bench/scale.py`` measures it). An array's item keeps 8 bytes in its array's
index (``offload:archive:array:<id>``: the segment number at 8 x its index) instead of the
field (``bench/array_finished.py``).

**How an id finds its segment:** ``HGET offload:archive:where <id>`` gives the segment number,
``HGET offload:archive:segments <n>`` its content id. Any id, old (uuid4) or new, is found so.
Readers try Redis first and the archive second, so a job archived between the two reads is
still found; a segment read is kept decoded in a small per-process cache.

**Crash safety.** The segment is written before anything leaves Redis, and the move is one
atomic script that deletes a job's keys only when its record is still what went into the
segment (``updated_at`` unchanged). So an archiver dying (killed, Redis gone, the store gone)
before the script leaves every job in Redis, readable there (the segment written, if any, is
referenced by nothing and is deleted or never read); after it, every job is in the archive
and nowhere else. No job is ever in neither place, nor read from two.

**Pruning.** A segment archived more than ``Settings.record_ttl`` seconds ago is dropped:
its ids leave ``offload:jobs`` and ``offload:archive:where``, then its blob is deleted from
the store (a crash between leaves an unreferenced blob, nothing else).

The store is injected (:class:`ArchiveStore`, implemented over the sealed store in
:mod:`offload.cache.archive`, wired by each process's composition root): the broker never
imports the cache.
"""

from __future__ import annotations

import collections
import json
import logging
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import redis

from offload.broker import keys
from offload.broker.status import TERMINAL
from offload.errors import BrokerError

log = logging.getLogger(__name__)

FORMAT = 1


class ArchiveStore(ABC):
    """Where segments are kept: write-once blobs named by what ``put`` returns."""

    @abstractmethod
    def put(self, data: bytes) -> str:
        """Store ``data``; return its reference (idempotent)."""

    @abstractmethod
    def get(self, ref: str) -> bytes:
        """The bytes stored as ``ref`` (an error when they are gone or unreadable)."""

    @abstractmethod
    def delete(self, ref: str) -> None:
        """Remove ``ref`` if present."""


# KEYS: ended index, where hash, segments hash, segment times
# ARGV: 1 segment number, 2 its reference, 3 when it was archived (Redis time), 4..9 key
#       templates (job, events, logs, parents, waiting-on, children), 10 an array's record
#       template, 11 an array's archive index template, 12 that index's TTL (seconds), then
#       (job id, updated_at) pairs.
# An array's item is noted in its array's index (8 hex digits of segment number at 8 * its
# index) rather than as a field of the where hash: 8 bytes an item, not about 100.
# Returns how many jobs moved: a job whose record changed since it was read stays in Redis.
COMMIT = """
local n = 0
for i = 13, #ARGV, 2 do
  local id = ARGV[i]
  local at = redis.call('HGET', string.format(ARGV[4], id), 'updated_at')
  if at == ARGV[i + 1] then
    for t = 4, 9 do redis.call('DEL', string.format(ARGV[t], id)) end
    local array = string.sub(id, 1, 24)
    if #id == 32 and redis.call('EXISTS', string.format(ARGV[10], array)) == 1 then
      local index = string.format(ARGV[11], array)
      redis.call('SETRANGE', index, tonumber(string.sub(id, 25), 16) * 8,
                 string.format('%08x', tonumber(ARGV[1])))
      redis.call('EXPIRE', index, ARGV[12])
    else
      redis.call('HSET', KEYS[2], id, ARGV[1])
    end
    redis.call('ZREM', KEYS[1], id)
    n = n + 1
  elseif not at then
    redis.call('ZREM', KEYS[1], id)
  end
end
if n > 0 then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
end
return n
"""

TEMPLATES = [
    keys.job("%s"),
    keys.events("%s"),
    keys.logs("%s"),
    keys.parents("%s"),
    keys.waiting_on("%s"),
    keys.children("%s"),
]


@dataclass
class ArchiveReport:
    archived: int = 0
    segments: int = 0
    pruned: int = 0  # jobs pruned with their segments
    gone: int = 0  # ended jobs whose record had expired before archiving


@dataclass
class Entry:
    """One archived job as its segment holds it."""

    id: str
    record: dict[str, str]
    events: list[tuple[str, dict[str, str]]]
    logs: list[tuple[str, dict[str, str]]]
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)


def encode_segment(seg: str, entries: list[Entry]) -> bytes:
    """A segment's bytes; its number makes them unique, so its content id is its own (two
    archivers racing over the same jobs write two blobs, and the loser may delete its own)."""
    jobs = [
        {"id": e.id, "h": e.record, "ev": e.events, "lg": e.logs, "p": e.parents, "c": e.children}
        for e in entries
    ]
    return zlib.compress(json.dumps({"v": FORMAT, "seg": seg, "jobs": jobs}).encode(), 6)


def decode_segment(data: bytes) -> dict[str, Entry]:
    doc = json.loads(zlib.decompress(data))
    if doc.get("v") != FORMAT:
        raise BrokerError(f"archive segment of format {doc.get('v')!r}; offload reads {FORMAT}")
    out = {}
    for j in doc["jobs"]:
        out[j["id"]] = Entry(
            j["id"],
            j["h"],
            [(str(i), f) for i, f in j["ev"]],
            [(str(i), f) for i, f in j["lg"]],
            j.get("p", []),
            j.get("c", []),
        )
    return out


class Archive:
    """Reads archived jobs, and (in the sweeper) moves finished jobs out and prunes old ones."""

    def __init__(
        self,
        client: redis.Redis,
        store: ArchiveStore | None = None,
        *,
        after: float = 300.0,
        ttl: float = 30 * 24 * 3600,
        batch: int = 500,
        cached: int = 4,
    ) -> None:
        self.r = client
        self.store = store
        self.after, self.ttl, self.batch = after, ttl, batch
        self._cached = cached
        self._segments: collections.OrderedDict[str, dict[str, Entry]] = collections.OrderedDict()
        self._commit = client.register_script(COMMIT)

    # -- reads -----------------------------------------------------------------------------

    def entry(self, job_id: str) -> Entry | None:
        """The archived job ``job_id``; None when it is not archived (or was pruned)."""
        return self.entries([job_id]).get(job_id)

    def where(self, job_ids: list[str]) -> list[str | None]:
        """The segment of each job (None: not archived): the where hash, else, for an
        array's item, its array's archive index. Two round trips at most."""
        segs: list[str | None] = [None if s is None else str(s)
                                  for s in self.r.hmget(keys.ARCHIVE_WHERE, job_ids)]  # fmt: skip
        items = [i for i, (j, s) in enumerate(zip(job_ids, segs, strict=True))
                 if s is None and _item(j) is not None]  # fmt: skip
        if items:
            pipe = self.r.pipeline(transaction=False)
            for i in items:
                array, index = _item(job_ids[i]) or ("", 0)
                pipe.getrange(keys.archive_array(array), index * 8, index * 8 + 7)
            for i, raw in zip(items, pipe.execute(), strict=True):
                text = str(raw or "").strip("\x00")
                if len(text) == 8 and int(text, 16):
                    segs[i] = str(int(text, 16))
        return segs

    def entries(self, job_ids: list[str]) -> dict[str, Entry]:
        """The archived ones of ``job_ids`` (one or two round trips, then each segment
        once)."""
        if not job_ids:
            return {}
        segs = self.where(job_ids)
        out: dict[str, Entry] = {}
        for job_id, seg in zip(job_ids, segs, strict=True):
            if seg is None:
                continue
            entries = self.segment(str(seg))
            if entries is not None and job_id in entries:
                out[job_id] = entries[job_id]
        return out

    def segment(self, seg: str) -> dict[str, Entry] | None:
        if seg in self._segments:
            self._segments.move_to_end(seg)
            return self._segments[seg]
        ref = self.r.hget(keys.ARCHIVE_SEGMENTS, seg)
        if ref is None:
            return None  # pruned
        entries = decode_segment(self._store().get(str(ref)))
        self._segments[seg] = entries
        while len(self._segments) > self._cached:
            self._segments.popitem(last=False)
        return entries

    def _store(self) -> ArchiveStore:
        if self.store is None:
            raise BrokerError(
                "the job is archived, and this process has no archive store to read it from "
                "(it needs the cluster key and the cache settings)"
            )
        return self.store

    # -- the archiver ------------------------------------------------------------------------

    def run(self, now: float) -> ArchiveReport:
        """One bounded pass (called by the sweeper under its lock): archive up to ``batch``
        jobs that ended ``after`` seconds before ``now``; prune segments past ``ttl``."""
        report = ArchiveReport()
        if self.store is None:
            return report
        self.archive(now, report)
        self.prune(now, report)
        return report

    def archive(self, now: float, report: ArchiveReport) -> None:
        ids = [
            str(j)
            for j in self.r.zrangebyscore(
                keys.ENDED, "-inf", now - self.after, start=0, num=self.batch
            )
        ]
        if not ids:
            return
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
            pipe.xrange(keys.events(job_id))
            pipe.xrange(keys.logs(job_id))
            pipe.smembers(keys.parents(job_id))
            pipe.smembers(keys.children(job_id))
        got = pipe.execute()
        entries: list[Entry] = []
        gone: list[str] = []
        for i, job_id in enumerate(ids):
            h, ev, lg, parents, children = got[5 * i : 5 * i + 5]
            if not h:
                gone.append(job_id)
                continue
            if h.get("status") not in {s.value for s in TERMINAL}:
                continue  # not ended (a stray member): left alone
            entries.append(Entry(job_id, h, list(ev), list(lg), sorted(parents), sorted(children)))
        if gone:
            self.r.zrem(keys.ENDED, *gone)
            report.gone += len(gone)
        if not entries:
            return
        seg = str(self.r.incr(keys.ARCHIVE_SEQ))
        ref = self._store().put(encode_segment(seg, entries))
        args: list[Any] = [
            seg, ref, now, *TEMPLATES, keys.array("%s"), keys.archive_array("%s"),
            int(self.ttl) + 86_400,
        ]  # fmt: skip
        for e in entries:
            args += [e.id, e.record.get("updated_at", "")]
        moved = int(
            self._commit(
                keys=[keys.ENDED, keys.ARCHIVE_WHERE, keys.ARCHIVE_SEGMENTS, keys.ARCHIVE_TIMES],
                args=args,
            )
        )
        if moved == 0:
            self.store_delete(ref)  # referenced by nothing
            return
        report.archived += moved
        report.segments += 1

    def prune(self, now: float, report: ArchiveReport, count: int = 4) -> None:
        for seg in self.r.zrangebyscore(
            keys.ARCHIVE_TIMES, "-inf", now - self.ttl, start=0, num=count
        ):
            seg = str(seg)
            ref = self.r.hget(keys.ARCHIVE_SEGMENTS, seg)
            ids: list[str] = []
            if ref is not None:
                try:
                    ids = list(decode_segment(self._store().get(str(ref))))
                except Exception as exc:  # gone or unreadable: drop the index entries anyway
                    log.warning("archive segment %s unreadable while pruning: %s", seg, exc)
            pipe = self.r.pipeline(transaction=True)
            if ids:
                pipe.hdel(keys.ARCHIVE_WHERE, *ids)
                pipe.zrem(keys.JOBS_INDEX, *ids)
            pipe.hdel(keys.ARCHIVE_SEGMENTS, seg)
            pipe.zrem(keys.ARCHIVE_TIMES, seg)
            pipe.execute()
            self._segments.pop(seg, None)
            if ref is not None:
                self.store_delete(str(ref))
            report.pruned += len(ids)

    def store_delete(self, ref: str) -> None:
        try:
            self._store().delete(ref)
        except Exception as exc:  # an unreferenced blob is harmless
            log.warning("could not delete archive blob %s: %s", ref, exc)


def _item(job_id: str) -> tuple[str, int] | None:
    """(array id, index) of an id of an array's item's form (32 hex digits), else None."""
    if len(job_id) != 32:
        return None
    try:
        return job_id[:24], int(job_id[24:], 16)
    except ValueError:
        return None


__all__ = ["Archive", "ArchiveReport", "ArchiveStore", "Entry"]
