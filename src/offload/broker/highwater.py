"""How much room Redis has left, and the high-water mark that admits new work.

Redis runs with a memory limit (``maxmemory``; ``offload up`` sets it from
``OFFLOAD_REDIS_MAX_MEMORY``) and ``noeviction``: at the limit every write is refused, the
workers' too, and the platform stops. So new work is admitted only below a high-water mark,
``OFFLOAD_REDIS_HIGH_WATER`` (default 0.8) of the limit: above it a submit, a map or a
schedule's run is refused whole (:class:`~offload.errors.CapacityError`), while workers, the
sweeper and the archiver never ask and keep the room above the mark to record what runs.
Admission resumes by itself once usage falls below the mark (finished jobs archived out of
Redis ``OFFLOAD_ARCHIVE_AFTER`` seconds after their end: :mod:`offload.broker.archive`).

A batch is admitted only if its estimated size (:func:`job_bytes`: the record, its view, its
timeline and its message) keeps Redis below the mark, so one big map cannot push it past the
mark on its own. A run of submits reads INFO about once a second (a read admits what fits
with the bytes admitted since: :meth:`offload.broker.core.Broker.admit`), and every refusal
reads it afresh. A Redis user that may not run INFO, or a Redis without ``maxmemory``,
admits everything (Redis's own limit still refuses, and a refused batch is rolled back
whole: :meth:`offload.broker.records.JobRecords.create_many`).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from offload.broker import keys
from offload.config import Settings
from offload.spec.sizes import format_size


@dataclass(frozen=True)
class RedisUsage:
    used: int  # bytes (INFO used_memory); -1: unknown (INFO refused)
    max: int  # Redis's maxmemory; 0: none set
    high_water: float  # the fraction of ``max`` above which new work is refused
    records: int = 0  # job records (every job Redis holds)
    queued: int = 0
    waiting: int = 0
    record_ttl: int = 0
    archive_after: float = 0.0

    @property
    def mark(self) -> int:
        return int(self.max * self.high_water)

    @property
    def full(self) -> bool:
        return self.max > 0 and self.used >= self.mark

    def fits(self, needed: int) -> bool:
        """Whether ``needed`` more bytes keep Redis below the mark (always, with no limit)."""
        return self.max <= 0 or self.used < 0 or self.used + needed < self.mark

    @property
    def fraction(self) -> float:
        return self.used / self.max if self.max > 0 and self.used >= 0 else 0.0

    def describe(self) -> str:
        """``12.1 MiB of 1 GiB (1%), high-water mark 80%`` (what ``offload nodes`` shows)."""
        if self.used < 0:
            return "usage unknown (this Redis user may not run INFO)"
        if not self.max:
            return f"{format_size(self.used)} used, no memory limit (maxmemory 0)"
        state = "FULL: submits refused" if self.full else "submits accepted"
        return (
            f"{format_size(self.used)} of {format_size(self.max)} "
            f"({self.fraction:.0%}), high-water mark {self.high_water:.0%}: {state}"
        )

    def refusal(self, jobs: int, needed: int = 0, refused: str = "") -> str:
        """Why a submit of ``jobs`` jobs (about ``needed`` bytes) is refused, what takes the
        room, what to change."""
        what = "the job" if jobs == 1 else f"all {jobs} jobs"
        full = (
            f"Redis is {self.fraction:.0%} full ({format_size(self.used)} of "
            f"{format_size(self.max)})"
        )
        if refused:
            head = f"Redis refused the write ({refused})"
        elif self.full:
            head = f"{full}, above its high-water mark of {self.high_water:.0%}"
        else:
            head = (
                f"{full}: {what} (about {format_size(needed)}) would take it above its "
                f"high-water mark of {self.high_water:.0%}"
            )
        head += " (OFFLOAD_REDIS_HIGH_WATER)" if not refused else ""
        finished = max(0, self.records - self.queued - self.waiting)
        return (
            f"{head}; nothing was queued ({what} refused). The room is taken by "
            f"{self.records} job records: {self.queued} queued, {self.waiting} waiting, "
            f"{finished} running or finished (finished ones leave Redis for the archive "
            f"OFFLOAD_ARCHIVE_AFTER={self.archive_after:g}s after their end). Submits are "
            "accepted again by themselves once usage falls below the mark; to make room raise "
            "OFFLOAD_REDIS_MAX_MEMORY (`offload up`'s Redis) or the server's maxmemory, or "
            "lower OFFLOAD_ARCHIVE_AFTER"
        )


def job_bytes(spec_bytes: int) -> int:
    """Redis bytes a queued job takes, from its encoded spec's size: the spec in its record,
    the redacted view, the message's summary and kombu's and Redis's overheads (measured:
    5 times the spec + 4 kB, within 10% for specs of 0.7 to 9 kB)."""
    return 5 * spec_bytes + 4096


def read_usage(r: redis.Redis, settings: Settings) -> RedisUsage:
    """Redis's usage and limit (INFO memory) and what holds the room, in two round trips."""
    try:
        info = r.info("memory")
    except redis.exceptions.NoPermissionError:
        return RedisUsage(-1, 0, settings.redis_high_water)
    used, most = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    room = RedisUsage(
        used,
        most,
        settings.redis_high_water,
        record_ttl=settings.record_ttl,
        archive_after=settings.archive_after,
    )
    if not most:
        return room
    pipe = r.pipeline(transaction=False)
    pipe.zcard(keys.JOBS_INDEX)
    pipe.zcard(keys.QUEUED)
    pipe.zcard(keys.WAITING)
    pipe.hlen(keys.ARCHIVE_WHERE)
    pipe.zcard(keys.ENDED)
    indexed, queued, waiting, archived, ended = pipe.execute()
    # an array's items have no member of offload:jobs (their array's stands for them): the
    # queued, waiting and ended-not-archived ones are counted from those indexes instead
    records = max(int(indexed) - int(archived), int(queued) + int(waiting) + int(ended))
    return RedisUsage(
        used,
        most,
        settings.redis_high_water,
        records,  # an archived job keeps only its index entries
        int(queued),
        int(waiting),
        settings.record_ttl,
        settings.archive_after,
    )
