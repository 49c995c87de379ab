"""Job control: cluster-wide concurrency limits per label value, and held classes.

A **limit** (``offload limit set db=orders 2``) lets at most that many jobs labelled
``db=orders`` run at once across all nodes. A **held class** (``offload hold cpu-small``)
starts no new job of its class; running ones finish.

Both are gates at the start of every attempt (:meth:`Limits.enter`, the executor's
``check_limits`` step, before anything is staged). One Lua script reads the hold and takes a
permit of every limit the job's labels fall under — all of them or none — so two nodes never
both take the last permit. An attempt that may not go on gives its slot back: the job moves
``staging → waiting`` (:meth:`offload.broker.pipeline.Pipeline.park`) with ``wait`` =
``limit:db=orders`` or ``held:cpu-small``, and joins that gate's waiting set. It holds no
slot and no permit while it waits.

* The attempt returns its permits when it ends, however it ends, once its container is gone
  (:meth:`Limits.leave`), and the oldest waiters of each limit are queued again, one per free
  permit (``ZPOPMIN``: one resumer gets each waiter).
* ``offload release`` queues again every job waiting on the hold.
* **Crash safety** (:meth:`Limits.sweep`, a sweeper step): a permit whose attempt is no longer
  active (its worker was killed; the sweeper requeued the job) is returned, and its waiters
  resumed; waiting jobs a lost race left out of their waiting set are put back in it; a
  limit removed or a class released while a job was parking is noticed here.

Keys (:mod:`offload.broker.keys`): ``offload:limits``, ``offload:limit:<l>=<v>:holders``,
``offload:limit:<l>=<v>:waiting``, ``offload:held``, ``offload:held:<class>:waiting``.
Publishing goes through the ``resume`` callable (Celery stays out of this module, so the
executor may use it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import redis

from offload.broker import keys
from offload.broker.records import JobRecord, JobRecords
from offload.broker.status import ACTIVE, JobStatus, wire
from offload.errors import JobNotFound, SpecError

log = logging.getLogger(__name__)

LIMIT = "limit:"  # a waiting job's ``wait`` for a full limit: ``limit:<label>=<value>``
HELD = "held:"  # a waiting job's ``wait`` for a held class: ``held:<class>``

Park = Callable[[str, int, str, str], bool]  # (job id, attempt, wait, message) -> parked
Resume = Callable[[str], bool]  # job id -> queued again
Verdict = Literal["go", "parked", "fenced"]

# KEYS: 1 job record, 2 limits hash, 3 held set.
# ARGV: 1 job id, 2 attempt, 3 active set, 4 holders template, 5 limit-waiting template,
#       6 held-waiting template, 7.. the job's label pairs (``label=value``).
# Returns {'ok'}; {'fenced'} when the attempt is not the job's current active one;
# {'held', class}; {'limit', name, holders, max} (no permit taken then).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'class')
if not h[1] or h[2] ~= ARGV[2] or not string.find(ARGV[3], ',' .. h[1] .. ',', 1, true) then
  return {'fenced'}
end
if redis.call('SISMEMBER', KEYS[3], h[3]) == 1 then
  redis.call('ZADD', string.format(ARGV[6], h[3]), 'NX', now, ARGV[1])
  return {'held', h[3]}
end
local got = {}
for i = 7, #ARGV do
  local name = ARGV[i]
  local max = redis.call('HGET', KEYS[2], name)
  if max then
    local holders = string.format(ARGV[4], name)
    local n = redis.call('HLEN', holders)
    if redis.call('HEXISTS', holders, ARGV[1]) == 0 and n >= tonumber(max) then
      for _, g in ipairs(got) do redis.call('HDEL', string.format(ARGV[4], g), ARGV[1]) end
      redis.call('ZADD', string.format(ARGV[5], name), 'NX', now, ARGV[1])
      return {'limit', name, n, tonumber(max)}
    end
    redis.call('HSET', holders, ARGV[1], ARGV[2])
    redis.call('ZREM', string.format(ARGV[5], name), ARGV[1])
    table.insert(got, name)
  end
end
return {'ok'}
"""

# ARGV: 1 job id, 2 attempt, 3 holders template, 4.. limit names.
# Returns the names whose permit this attempt held and gave back.
_RETURN = """
local out = {}
for i = 4, #ARGV do
  local holders = string.format(ARGV[3], ARGV[i])
  if redis.call('HGET', holders, ARGV[1]) == ARGV[2] then
    redis.call('HDEL', holders, ARGV[1])
    table.insert(out, ARGV[i])
  end
end
return out
"""


@dataclass(frozen=True)
class LimitUsage:
    """One limit: its maximum, the jobs holding a permit now, and the jobs waiting for one."""

    name: str
    max: int
    running: int
    waiting: int


def parse_limit(text: str) -> str:
    """``label=value`` checked; a clear :class:`SpecError` naming ``limit`` otherwise."""
    label, sep, value = str(text).partition("=")
    if not sep or not label.strip() or not value.strip():
        raise SpecError("limit", f"expected LABEL=VALUE (as in db=orders), got {text!r}")
    if label != label.strip() or value != value.strip() or any(c in text for c in "\x00\n"):
        raise SpecError("limit", f"{text!r}: no surrounding spaces or control characters")
    return f"{label}={value}"


def parse_max(value: object) -> int:
    """A limit's maximum: a whole number >= 0 (0 lets no job run); :class:`SpecError` else."""
    if isinstance(value, bool):
        raise SpecError("max", f"expected a whole number >= 0, got {value!r}")
    try:
        n = int(value) if isinstance(value, int | str) else int(str(value), 10)
    except ValueError:
        raise SpecError("max", f"expected a whole number >= 0, got {value!r}") from None
    if n < 0:
        raise SpecError("max", f"must be >= 0 (0 runs none), got {n}")
    return n


def limit_names(labels: Mapping[str, str]) -> list[str]:
    """The limit names a job's labels fall under (whether or not a limit is set)."""
    return sorted(f"{k}={v}" for k, v in labels.items())


def held_classes(r: redis.Redis) -> set[str]:
    """The held classes (for the autoscaler, which must not scale them up)."""
    return {str(c) for c in r.smembers(keys.HELD)}


class Limits:
    """Limits and holds in Redis; ``park``/``resume`` move jobs (Pipeline's, injected)."""

    def __init__(
        self, records: JobRecords, park: Park | None = None, resume: Resume | None = None
    ) -> None:
        self.records, self.r = records, records.r
        self._park, self._resume = park, resume
        self._acquire = self.r.register_script(_ACQUIRE)
        self._return = self.r.register_script(_RETURN)

    # -- configuration ------------------------------------------------------------------------

    def set_limit(self, limit: str, max_running: object) -> LimitUsage:
        """Set (or change) a limit; a raised one queues waiters for the new permits."""
        name, n = parse_limit(limit), parse_max(max_running)
        self.records._run(self.r.hset, keys.LIMITS, name, n)
        self.wake_limit(name)
        return self.usage(name)

    def remove_limit(self, limit: str) -> bool:
        """Remove a limit (False if there was none); every job waiting for it is queued."""
        name = parse_limit(limit)
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(keys.LIMITS, name)
        pipe.delete(keys.limit_holders(name))
        existed = bool(self.records._run(pipe.execute)[0])
        self.wake_limit(name)
        return existed

    def usage(self, limit: str) -> LimitUsage:
        """One limit's maximum (-1: not set), permits held and jobs waiting."""
        name = parse_limit(limit)
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(keys.LIMITS, name)
        pipe.hlen(keys.limit_holders(name))
        pipe.zcard(keys.limit_waiting(name))
        mx, running, waiting = self.records._run(pipe.execute)
        return LimitUsage(name, -1 if mx is None else int(mx), int(running), int(waiting))

    def usages(self) -> list[LimitUsage]:
        """Every limit with its usage, by name."""
        names = sorted(str(n) for n in self.records._run(self.r.hkeys, keys.LIMITS))
        return [self.usage(n) for n in names]

    def hold(self, resource_class: str) -> bool:
        """Stop starting new jobs of a class; False if it was held already."""
        return bool(self.records._run(self.r.sadd, keys.HELD, resource_class))

    def release(self, resource_class: str) -> list[str]:
        """Start the class's jobs again: every job waiting on the hold is queued."""
        self.records._run(self.r.srem, keys.HELD, resource_class)
        return self.wake_held(resource_class)

    def held(self) -> list[str]:
        return sorted(held_classes(self.r))

    # -- an attempt's start and end -----------------------------------------------------------

    def enter(self, job_id: str, attempt: int, labels: Mapping[str, str]) -> Verdict:
        """At an attempt's start: ``go`` with a permit of every limit the job falls under;
        ``parked`` when its class is held or a limit is full (the job waits, its slot given
        back); ``fenced`` when the attempt is no longer the job's current one."""
        names = limit_names(labels)
        got = self.records._run(
            self._acquire,
            keys=[keys.job(job_id), keys.LIMITS, keys.HELD],
            args=[
                job_id,
                attempt,
                wire(ACTIVE),
                keys.limit_holders("%s"),
                keys.limit_waiting("%s"),
                keys.held_waiting("%s"),
                *names,
            ],
        )
        kind = str(got[0])
        if kind == "ok":
            return "go"
        if kind == "fenced":
            return "fenced"
        if kind == "held":
            cls = str(got[1])
            wait, message = f"{HELD}{cls}", held_message(cls)
        else:
            name = str(got[1])
            wait, message = f"{LIMIT}{name}", limit_message(name, int(got[2]), int(got[3]))
        if self._park is None or not self._park(job_id, attempt, wait, message):
            return "fenced"
        log.info("job %s attempt %d: %s", job_id, attempt, message)
        # The gate may have opened between the script and the park (a permit returned, the
        # class released) while this job was not yet waiting: look once more.
        if kind == "held":
            if str(got[1]) not in held_classes(self.r):
                self.wake_held(str(got[1]))
        else:
            self.wake_limit(str(got[1]))
        return "parked"

    def leave(self, job_id: str, attempt: int, labels: Mapping[str, str]) -> list[str]:
        """At an attempt's end (its container gone): return its permits and queue the oldest
        waiters of each limit freed. Returns the jobs queued. Never raises: a permit not
        returned now (Redis away) is returned by the sweeper."""
        names = limit_names(labels)
        if not names:
            return []
        try:
            freed = self._return(keys=[], args=[job_id, attempt, keys.limit_holders("%s"), *names])
            return [j for name in freed for j in self.wake_limit(str(name))]
        except Exception as exc:  # the sweeper returns it once this attempt is not active
            log.warning("job %s attempt %d: permits not returned now: %s", job_id, attempt, exc)
            return []

    # -- waking waiters ------------------------------------------------------------------------

    def wake_limit(self, limit: str) -> list[str]:
        """Queue the oldest waiters of a limit, one per free permit (all when it is gone)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(keys.LIMITS, limit)
        pipe.hlen(keys.limit_holders(limit))
        mx, holding = self.records._run(pipe.execute)
        room = None if mx is None else int(mx) - int(holding)
        return self._wake(keys.limit_waiting(limit), f"{LIMIT}{limit}", room)

    def wake_held(self, resource_class: str) -> list[str]:
        """Queue every job waiting on a class's hold, unless the class is held (again)."""
        if self.records._run(self.r.sismember, keys.HELD, resource_class):
            return []
        return self._wake(keys.held_waiting(resource_class), f"{HELD}{resource_class}", None)

    def _wake(self, waiting: str, wait: str, room: int | None) -> list[str]:
        woken: list[str] = []
        parking: dict[str, float] = {}
        while room is None or len(woken) < room:
            popped = self.records._run(self.r.zpopmin, waiting, 1)
            if not popped:
                break
            job_id, since = str(popped[0][0]), float(popped[0][1])
            try:
                rec = self.records.get(job_id)
            except JobNotFound:
                continue
            if rec.status is JobStatus.WAITING and rec.wait == wait:
                if self._resume is not None and self._resume(job_id):
                    woken.append(job_id)
                    log.info("job %s queued again: %s", job_id, wait)
                continue
            if rec.status in ACTIVE:  # still parking: back in line; the sweeper looks again
                parking[job_id] = since
            # queued, finished, or waiting for something else: no longer this gate's
        if parking:
            self.records._run(self.r.zadd, waiting, parking, nx=True)
        return woken

    # -- crash safety (a sweeper step) ---------------------------------------------------------

    def sweep(self, classes: Iterable[str], older_than: float) -> list[str]:
        """Return the permits of attempts that are no longer active, put back in line the
        jobs waiting since before ``older_than`` that a race left out, and queue the waiters
        whose gate is open. Returns the jobs queued."""
        limits = {str(n) for n in self.r.hkeys(keys.LIMITS)}
        self.return_dead_permits(limits)
        limits |= self._reindex(older_than)
        woken = [j for name in sorted(limits) for j in self.wake_limit(name)]
        held = held_classes(self.r)
        for cls in sorted(set(classes) - held):
            woken += self.wake_held(cls)
        return woken

    def return_dead_permits(self, limits: Iterable[str]) -> list[tuple[str, str]]:
        """Return each permit whose attempt is not its job's active one any more."""
        returned = []
        for name in sorted(limits):
            holders = {str(k): str(v) for k, v in self.r.hgetall(keys.limit_holders(name)).items()}
            if not holders:
                continue
            pipe = self.r.pipeline(transaction=False)
            for job_id in holders:
                pipe.hmget(keys.job(job_id), "status", "attempt")
            for (job_id, attempt), (status, current) in zip(
                holders.items(), pipe.execute(), strict=True
            ):
                alive = status is not None and JobStatus(status).active and current == attempt
                if not alive and self._return(
                    keys=[], args=[job_id, attempt, keys.limit_holders("%s"), name]
                ):
                    log.warning("job %s attempt %s: permit of %s returned", job_id, attempt, name)
                    returned.append((name, job_id))
        return returned

    def _reindex(self, older_than: float) -> set[str]:
        """Waiting jobs on a gate but missing from its waiting set (a waker popped them
        while they were still parking) go back in; returns the limits named."""
        old = [
            (str(j), s)
            for j, s in self.r.zrangebyscore(keys.WAITING, "-inf", older_than, withscores=True)
        ]
        if not old:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for job_id, _ in old:
            pipe.hget(keys.job(job_id), "wait")
        limits = set()
        for (job_id, since), wait in zip(old, pipe.execute(), strict=True):
            wait = str(wait or "")
            if wait.startswith(LIMIT):
                limits.add(wait.removeprefix(LIMIT))
                self.r.zadd(keys.limit_waiting(wait.removeprefix(LIMIT)), {job_id: since}, nx=True)
            elif wait.startswith(HELD):
                self.r.zadd(keys.held_waiting(wait.removeprefix(HELD)), {job_id: since}, nx=True)
        return limits

    # -- views ---------------------------------------------------------------------------------

    def why(self, rec: JobRecord) -> str | None:
        """Why a job does not start, when a limit or a hold is the cause; else None."""
        if rec.status is JobStatus.WAITING and rec.wait.startswith(LIMIT):
            u = self.usage(rec.wait.removeprefix(LIMIT))
            if u.max < 0:
                return f"waiting for limit {u.name} (removed: queued again at the next sweep)"
            return limit_message(u.name, u.running, u.max)
        if rec.status is JobStatus.WAITING and rec.wait.startswith(HELD):
            cls = rec.wait.removeprefix(HELD)
        elif rec.status is JobStatus.QUEUED:
            cls = rec.resource_class
        else:
            return None
        if self.records._run(self.r.sismember, keys.HELD, cls):
            return held_message(cls)
        if rec.status is JobStatus.WAITING:
            return f"class {cls} was released: queued again at the next sweep"
        return None


def limit_message(name: str, running: int, max_running: int) -> str:
    return f"waiting for limit {name} ({running}/{max_running} running)"


def held_message(resource_class: str) -> str:
    return f"class {resource_class} is held (offload release {resource_class})"


__all__ = [
    "HELD",
    "LIMIT",
    "LimitUsage",
    "Limits",
    "held_classes",
    "limit_names",
    "parse_limit",
    "parse_max",
]
