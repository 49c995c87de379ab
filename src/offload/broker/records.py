"""Job records and their status timeline in Redis (schema: :mod:`offload.broker.keys`).

Every status change goes through one Lua script, so a transition, its timeline entry and,
for terminal states, the end-of-log marker and expiry happen atomically — a cancel racing a
worker's start can never leave a job both cancelled and running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from offload.broker import keys
from offload.broker.status import ACTIVE, TERMINAL, JobStatus
from offload.errors import BrokerError, JobNotFound, JobTimeout
from offload.spec import JobSpec

_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if ARGV[3] ~= '*' then
  local ok = false
  for s in string.gmatch(ARGV[3], '[^,]+') do if s == cur then ok = true end end
  if not ok then return {0, cur} end
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2])
local reason = nil
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if ARGV[i] == 'reason' then reason = ARGV[i + 1] end
end
local na = redis.call('HMGET', KEYS[1], 'node', 'attempt')
local ev = {'status', ARGV[1], 'at', ARGV[2], 'node', na[1] or '', 'attempt', na[2] or '0'}
if reason and reason ~= '' then table.insert(ev, 'reason'); table.insert(ev, reason) end
redis.call('XADD', KEYS[2], '*', unpack(ev))
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'eof', ARGV[1])
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
end
return {1, cur}
"""

_BEGIN_ATTEMPT = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'', 0} end
if cur == 'succeeded' or cur == 'failed' or cur == 'timed_out' or cur == 'cancelled' then
  return {cur, tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')}
end
local a = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'staging', 'node', ARGV[1], 'updated_at', ARGV[2],
           'started_at', '', 'container', '', 'exit_code', '', 'reason', '', 'message', '')
redis.call('XADD', KEYS[2], '*', 'status', 'staging', 'at', ARGV[2], 'node', ARGV[1], 'attempt', a)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'a', a)
return {cur, a}
"""

_CANCEL = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if cur == 'queued' then return 'queued' end
if cur == 'staging' or cur == 'running' or cur == 'uploading' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return cur
"""


@dataclass(frozen=True)
class Event:
    """One entry of a job's status timeline."""

    status: JobStatus
    at: float
    node: str
    attempt: int
    reason: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """A job's record as stored in Redis, parsed."""

    id: str
    spec: JobSpec
    view: dict[str, Any]
    resource_class: str
    status: JobStatus
    created_at: float
    updated_at: float
    attempt: int = 0
    node: str | None = None
    container: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    cancel_requested: bool = False
    cache_hit: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.display_name()


def _num(value: str | None) -> float | None:
    return float(value) if value else None


def _parse(job_id: str, h: dict[str, str]) -> JobRecord:
    return JobRecord(
        id=job_id,
        spec=JobSpec.decode(h["spec"]),
        view=json.loads(h.get("view") or "{}"),
        resource_class=h.get("class", ""),
        status=JobStatus(h["status"]),
        created_at=float(h.get("created_at") or 0),
        updated_at=float(h.get("updated_at") or 0),
        attempt=int(h.get("attempt") or 0),
        node=h.get("node") or None,
        container=h.get("container") or None,
        started_at=_num(h.get("started_at")),
        finished_at=_num(h.get("finished_at")),
        exit_code=int(h["exit_code"]) if h.get("exit_code") else None,
        reason=h.get("reason") or None,
        message=h.get("message") or None,
        outputs=json.loads(h.get("outputs") or "{}"),
        cancel_requested=h.get("cancel") == "1",
        cache_hit=h.get("cache_hit") or None,
        timings=json.loads(h.get("timings") or "{}"),
    )


class JobRecords:
    """Reads and writes job records, timelines and log streams."""

    def __init__(self, client: redis.Redis, *, record_ttl: int, log_max_entries: int) -> None:
        self.r = client
        self.record_ttl = record_ttl
        self.log_max_entries = log_max_entries
        self._transition = client.register_script(_TRANSITION)
        self._begin = client.register_script(_BEGIN_ATTEMPT)
        self._cancel = client.register_script(_CANCEL)

    # -- writes ----------------------------------------------------------------------------

    def create(self, job_id: str, spec: JobSpec, resource_class: str) -> None:
        now = str(time.time())
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            keys.job(job_id),
            mapping={
                "id": job_id,
                "spec": spec.encode(),
                "view": json.dumps(spec.redacted()),
                "name": spec.display_name(),
                "image": spec.image,
                "class": resource_class,
                "status": JobStatus.QUEUED.value,
                "created_at": now,
                "updated_at": now,
                "attempt": "0",
            },
        )
        pipe.xadd(keys.events(job_id), {"status": "queued", "at": now, "node": "", "attempt": "0"})
        pipe.zadd(keys.JOBS_INDEX, {job_id: float(now)})
        self._run(pipe.execute)

    def delete(self, job_id: str) -> None:
        """Remove a record that never made it onto the queue."""
        self._run(self.r.delete, keys.job(job_id), keys.events(job_id), keys.logs(job_id))
        self._run(self.r.zrem, keys.JOBS_INDEX, job_id)

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        allowed_from: Iterable[JobStatus] | None = None,
        **fields: Any,
    ) -> bool:
        """Move a job to ``to`` if its status is in ``allowed_from``; returns whether it moved."""
        allowed = "*" if allowed_from is None else ",".join(s.value for s in allowed_from)
        ttl = self.record_ttl if to in TERMINAL else 0
        args: list[Any] = [to.value, str(time.time()), allowed, ttl, self.log_max_entries]
        for name, value in fields.items():
            if value is None:
                value = ""
            elif isinstance(value, dict | list):
                value = json.dumps(value)
            args += [name, str(value)]
        moved, _ = self._run(
            self._transition,
            keys=[keys.job(job_id), keys.events(job_id), keys.logs(job_id)],
            args=args,
        )
        return bool(moved)

    def begin_attempt(self, job_id: str, node: str) -> tuple[JobStatus | None, int]:
        """Start a new attempt unless the job is finished; returns (previous status, attempt)."""
        prev, attempt = self._run(
            self._begin,
            keys=[keys.job(job_id), keys.events(job_id), keys.logs(job_id)],
            args=[node, str(time.time()), self.log_max_entries],
        )
        return (JobStatus(prev) if prev else None), int(attempt)

    def set_fields(self, job_id: str, **fields: Any) -> None:
        self._run(self.r.hset, keys.job(job_id), mapping={k: str(v) for k, v in fields.items()})

    def request_cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued job at once; flag a started one for its worker. Returns the status."""
        cur = self._run(self._cancel, keys=[keys.job(job_id)], args=[])
        if not cur:
            raise JobNotFound(job_id)
        status = JobStatus(cur)
        if status is JobStatus.QUEUED:
            moved = self.transition(
                job_id,
                JobStatus.CANCELLED,
                allowed_from=[JobStatus.QUEUED],
                reason="cancelled",
                message="cancelled while queued",
            )
            if moved:
                return JobStatus.CANCELLED
            return self.get(job_id).status
        return status

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self._run(self.r.hget, keys.job(job_id), "cancel") == "1")

    def append_logs(self, job_id: str, lines: Iterable[tuple[str, str]]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for stream, line in lines:
            pipe.xadd(
                keys.logs(job_id),
                {"s": stream, "l": line},
                maxlen=self.log_max_entries,
                approximate=True,
            )
        self._run(pipe.execute)

    # -- reads -----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        h = self._run(self.r.hgetall, keys.job(job_id))
        if not h:
            raise JobNotFound(job_id)
        return _parse(job_id, h)

    def status(self, job_id: str) -> JobStatus:
        value = self._run(self.r.hget, keys.job(job_id), "status")
        if value is None:
            raise JobNotFound(job_id)
        return JobStatus(value)

    def timeline(self, job_id: str) -> list[Event]:
        entries = self._run(self.r.xrange, keys.events(job_id))
        return [
            Event(
                status=JobStatus(f["status"]),
                at=float(f["at"]),
                node=f.get("node", ""),
                attempt=int(f.get("attempt") or 0),
                reason=f.get("reason"),
            )
            for _, f in entries
        ]

    def list(self, limit: int = 50) -> list[JobRecord]:
        ids = self._run(self.r.zrevrange, keys.JOBS_INDEX, 0, max(limit, 1) * 2)
        out: list[JobRecord] = []
        for job_id in ids:
            try:
                out.append(self.get(job_id))
            except JobNotFound:
                self._run(self.r.zrem, keys.JOBS_INDEX, job_id)
            if len(out) >= limit:
                break
        return out

    def wait(self, job_id: str, timeout: float | None) -> JobRecord:
        """Block until the job is terminal (woken by its timeline stream), or JobTimeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = "0-0"
        while True:
            record = self.get(job_id)
            if record.status in TERMINAL:
                return record
            block = 5.0
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise JobTimeout(
                        f"job {job_id} still {record.status} after waiting {timeout:g}s"
                    )
                block = min(block, remaining)
            got = self._run(
                self.r.xread, {keys.events(job_id): last}, block=max(1, int(block * 1000))
            )
            for _stream, entries in got or []:
                if entries:
                    last = entries[-1][0]

    def log_entries(self, job_id: str, *, follow: bool) -> Iterator[dict[str, str]]:
        """Yield log entries in order; with ``follow`` block until the job's end marker."""
        last = "0-0"
        while True:
            if follow:
                got = self._run(self.r.xread, {keys.logs(job_id): last}, count=500, block=2000)
                entries = got[0][1] if got else []
            else:
                entries = self._run(
                    self.r.xrange, keys.logs(job_id), f"({last}" if last != "0-0" else "-", "+", 500
                )
            if not entries:
                if not follow:
                    return
                if self.status(job_id) in TERMINAL and not self._run(
                    self.r.exists, keys.logs(job_id)
                ):
                    return
                continue
            for entry_id, fields in entries:
                last = entry_id
                if "eof" in fields:
                    return
                yield fields

    @staticmethod
    def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise BrokerError(f"broker (Redis) error: {exc}") from exc


__all__ = ["ACTIVE", "TERMINAL", "Event", "JobRecord", "JobRecords", "JobStatus"]
