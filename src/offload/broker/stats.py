"""Cluster-wide figures read from Redis, for the autoscaler's metrics (``docs/metrics.md``).

The counters live in Redis (``offload:stats:*``, :mod:`offload.broker.keys`), written in the
same atomic calls as what they count: a submit (:meth:`JobRecords.create`), a move to a
terminal status (the transition script), a schedule's fire (:func:`count_fire`). So they
never reset when a process restarts, and any process can export them; the autoscaler is the
one that does, so Prometheus sees each once. The gauges (waiting jobs, Redis memory) are
read at scrape time.

Every read here is O(classes + limits + held classes) round trips in one pipeline, never
O(jobs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from offload.broker import keys
from offload.config import Settings


@dataclass(frozen=True)
class Finished:
    resource_class: str
    status: str
    reason: str
    count: int


@dataclass(frozen=True)
class Waiting:
    """Jobs ``waiting``, by what for: a concurrency limit, a held class, or parents (their
    parents, or an identical job running now)."""

    limit: int
    held: int
    parents: int


@dataclass(frozen=True)
class RedisMemory:
    used: int
    max: int  # Redis's maxmemory; 0: none set
    high_water: int  # Settings.redis_high_water of max; 0 when there is no max


@dataclass(frozen=True)
class ClusterStats:
    submitted: dict[str, int]
    finished: list[Finished]
    waiting: Waiting
    schedules: dict[str, int]  # fire outcome -> fires; "missed" -> fires that made up for some
    memory: RedisMemory | None  # None: INFO refused (an ACL without it)


def _ints(h: dict[str, str]) -> dict[str, int]:
    return {str(k): int(v) for k, v in h.items()}


def read_stats(r: redis.Redis, settings: Settings, classes: Iterable[str]) -> ClusterStats:
    """Everything the autoscaler exports from Redis, in two round trips (plus INFO)."""
    limits = sorted(str(n) for n in r.hkeys(keys.LIMITS))
    classes = list(classes)
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.STATS_SUBMITTED)
    pipe.hgetall(keys.STATS_FINISHED)
    pipe.hgetall(keys.STATS_SCHEDULES)
    pipe.zcard(keys.WAITING)
    for limit in limits:
        pipe.zcard(keys.limit_waiting(limit))
    for name in classes:
        pipe.zcard(keys.held_waiting(name))
    got = pipe.execute()
    submitted, finished_raw, schedules, total = got[0], got[1], got[2], int(got[3])
    on_limits = sum(int(n) for n in got[4 : 4 + len(limits)])
    on_holds = sum(int(n) for n in got[4 + len(limits) :])
    finished = []
    for field, count in finished_raw.items():
        cls, _, rest = str(field).partition("|")
        status, _, reason = rest.partition("|")
        finished.append(Finished(cls, status, reason, int(count)))
    return ClusterStats(
        submitted=_ints(submitted),
        finished=sorted(finished, key=lambda f: (f.resource_class, f.status, f.reason)),
        waiting=Waiting(on_limits, on_holds, max(0, total - on_limits - on_holds)),
        schedules=_ints(schedules),
        memory=redis_memory(r, settings.redis_high_water),
    )


def redis_memory(r: redis.Redis, high_water: float) -> RedisMemory | None:
    """Used bytes and the high-water mark (``high_water`` of ``maxmemory``) from INFO memory;
    None when this user may not run INFO."""
    try:
        info = r.info("memory")
    except redis.exceptions.NoPermissionError:
        return None
    used, most = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    return RedisMemory(used, most, int(most * high_water) if most else 0)


def count_fire(r: redis.Redis, outcome: str, missed: bool) -> None:
    """Count one fire of a schedule by outcome (``submitted``, ``skipped: …``, ``error: …``:
    the word before the colon); ``missed``: it made up for fire times missed meanwhile."""
    pipe = r.pipeline(transaction=False)
    pipe.hincrby(keys.STATS_SCHEDULES, outcome.partition(":")[0].strip() or "unknown", 1)
    if missed:
        pipe.hincrby(keys.STATS_SCHEDULES, "missed", 1)
    pipe.execute()
