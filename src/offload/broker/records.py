"""Job records and their status timeline in Redis (schema: :mod:`offload.broker.keys`).

Every status change goes through one Lua script (:mod:`offload.broker.scripts`) checked
against the one transitions table (:mod:`offload.broker.status`), so a transition, its timeline
entry, the node's running set and, for terminal states, the end-of-log marker and expiry happen
atomically — a cancel racing a worker's start can never leave a job both cancelled and running.
An attempt's writes carry its number as a fencing token: once a newer attempt took the job (or
recovery requeued it), the older attempt's writes are refused.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import redis

from offload.broker import keys, scripts
from offload.broker.archive import Archive, Entry
from offload.broker.connection import broker_error
from offload.broker.logs import LogStreams
from offload.broker.model import OUTPUTS_SIG, Event, JobRecord, parse_record, record_fields
from offload.broker.status import (
    ACTIVE,
    PENDING,
    TERMINAL,
    JobStatus,
    Reason,
    sources,
    wire,
)
from offload.config import DEFAULT_LOG_MAX_BYTES, Settings
from offload.errors import JobNotFound, JobTimeout
from offload.spec import JobSpec

if TYPE_CHECKING:
    from offload.broker.arrays import Arrays


class JobRecords:
    """Reads and writes job records, timelines and log streams."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        record_ttl: int,
        log_max_entries: int,
        lease_ttl: float = 20.0,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
    ) -> None:
        self.r = client
        self.record_ttl = record_ttl
        self.log_max_entries = log_max_entries
        self._logs = LogStreams(client, max_bytes=log_max_bytes, max_entries=log_max_entries)
        self.lease_ttl = lease_ttl
        self._transition = client.register_script(scripts.TRANSITION)
        self._begin = client.register_script(scripts.BEGIN_ATTEMPT)
        self._renew = client.register_script(scripts.RENEW)
        self._cancel = client.register_script(scripts.CANCEL)
        self._delay = client.register_script(scripts.DELAY)
        self.archive = Archive(client, after=300.0, ttl=float(record_ttl))
        # an array's items not fed yet (offload.broker.arrays.Arrays), read when no record is
        self.unfed: Arrays | None = None
        # seconds an array's ended item is archived sooner than a job (archive_after less
        # archive_items_after): items end by the hundred a second, their records need not wait
        self.items_sooner = 0.0

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> JobRecords:
        records = cls(
            client,
            record_ttl=settings.record_ttl,
            log_max_entries=settings.log_max_entries,
            lease_ttl=settings.lease_ttl,
            log_max_bytes=settings.log_max_bytes,
        )
        records.archive.after = settings.archive_after
        records.archive.batch = settings.archive_batch
        records.items_sooner = max(0.0, settings.archive_after - settings.archive_items_after)
        return records

    # -- writes ----------------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        spec: JobSpec,
        resource_class: str,
        status: JobStatus = JobStatus.QUEUED,
    ) -> None:
        """Write a new job's record in its first state (``queued``, or ``waiting``)."""
        self.create_many([(job_id, spec, resource_class, status)])

    def create_many(
        self, jobs: Sequence[tuple[str, JobSpec, str, JobStatus]], chunk: int = 500
    ) -> list[JobRecord]:
        """Write new jobs' records, ``chunk`` jobs a round trip (each chunk one MULTI), and
        return them as written. All or none: when Redis refuses a chunk (an outage, or full),
        the records written before it are deleted and the error is raised — nothing of the
        batch stays (a job without a record is never run: its message, if any, is dropped)."""
        out: list[JobRecord] = []
        written: list[str] = []
        try:
            for start in range(0, len(jobs), chunk):
                pipe = self.r.pipeline(transaction=True)
                part = jobs[start : start + chunk]
                for job_id, spec, resource_class, status in part:
                    out.append(self.queue_create(pipe, job_id, spec, resource_class, status))
                self._run(pipe.execute)
                written += [job_id for job_id, *_ in part]
        except Exception:
            self.delete_many(written, uncount=[rec.resource_class for rec in out[: len(written)]])
            raise
        return out

    def queue_create(
        self,
        pipe: Any,
        job_id: str,
        spec: JobSpec,
        resource_class: str,
        status: JobStatus,
        *,
        indexed: bool = True,
    ) -> JobRecord:
        """Add a new job's record to ``pipe``; ``indexed``: with its member of
        ``offload:jobs`` (an array's item has none: its array's stands for it)."""
        if status not in PENDING:
            raise ValueError(f"a job starts waiting or queued, not {status}")
        now = time.time()
        mapping = record_fields(job_id, spec, resource_class, status, now)
        pipe.hset(keys.job(job_id), mapping=mapping)
        pipe.xadd(
            keys.events(job_id),
            {"status": status.value, "at": mapping["created_at"], "node": "", "attempt": "0"},
        )
        if indexed:
            pipe.zadd(keys.JOBS_INDEX, {job_id: now})
        if status is JobStatus.QUEUED:
            pipe.zadd(keys.QUEUED, {job_id: now})
        else:
            pipe.zadd(keys.WAITING, {job_id: now})
        pipe.hincrby(keys.STATS_SUBMITTED, resource_class, 1)  # metrics (broker/stats.py)
        return parse_record(job_id, mapping, spec)

    def create_queued(
        self,
        job_id: str,
        spec: JobSpec,
        resource_class: str,
        also: Callable[[Any, JobRecord], None],
    ) -> JobRecord:
        """Write a new ``queued`` job's record, and what ``also`` adds to the same transaction
        (its route, its message: :meth:`offload.broker.core.Broker.submit`), in one round
        trip; return it as written. One MULTI: when Redis refuses it (an outage, or full)
        none of it is written."""
        pipe = self.r.pipeline(transaction=True)
        rec = self.queue_create(pipe, job_id, spec, resource_class, JobStatus.QUEUED)
        also(pipe, rec)
        self._run(pipe.execute)
        return rec

    def delete(self, job_id: str) -> None:
        """Remove a record that never made it onto the queue."""
        self.delete_many([job_id])

    def delete_many(
        self, job_ids: Sequence[str], chunk: int = 500, uncount: Sequence[str] = ()
    ) -> None:
        """Remove records that never made it onto the queue (DEL and ZREM free memory, so
        Redis takes them even when it is full); ``uncount``: the classes whose submitted
        counter they were counted in."""
        for start in range(0, len(job_ids), chunk):
            part = job_ids[start : start + chunk]
            pipe = self.r.pipeline(transaction=False)
            for job_id in part:
                pipe.delete(*self._job_keys(job_id))
            pipe.zrem(keys.JOBS_INDEX, *part)
            pipe.zrem(keys.QUEUED, *part)
            pipe.zrem(keys.WAITING, *part)
            self._run(pipe.execute)
        for cls, n in collections.Counter(uncount).items():
            self._run(self.r.hincrby, keys.STATS_SUBMITTED, cls, -n)

    @staticmethod
    def _job_keys(job_id: str) -> list[str]:
        return [keys.job(job_id), keys.events(job_id), keys.logs(job_id)]

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        attempt: int | None = None,
        **fields: Any,
    ) -> bool:
        """Move a job to ``to`` if the transitions table allows it from its current status.

        ``attempt`` is the fencing token of a write made by an attempt: the move is refused
        (False) unless that attempt is still the record's current one. Extra ``fields`` are
        written with the move (a :class:`Reason` for ``reason``; dicts/lists as JSON; None as
        empty). Returns whether the job moved. ``staging`` is entered by :meth:`begin_attempt`
        only.
        """
        moved, _ = self._run(self._transition, **self._transition_call(job_id, to, attempt, fields))
        return int(moved) == 1

    def _transition_call(
        self, job_id: str, to: JobStatus, attempt: int | None, fields: dict[str, Any]
    ) -> dict[str, list[Any]]:
        """The keys and args of the transition script for one move (:meth:`transition`)."""
        if to is JobStatus.STAGING:
            raise ValueError("a job enters staging through begin_attempt")
        reason = fields.get("reason")
        if reason is not None and not isinstance(reason, Reason):
            raise TypeError(f"reason must be a Reason, not {reason!r}")
        ttl = self.record_ttl if to in TERMINAL else 0
        args: list[Any] = [
            to.value,
            str(time.time()),
            wire(sources(to)),
            ttl,
            self.log_max_entries,
            "" if attempt is None else str(attempt),
            wire(ACTIVE),
            keys.node_running("%s"),
            keys.node_owners("%s"),
            job_id,
            JobStatus.QUEUED.value,
            JobStatus.WAITING.value,
            JobStatus.SUCCEEDED.value,
            repr(self.items_sooner),
        ]
        for name, value in fields.items():
            if value is None:
                value = ""
            elif isinstance(value, dict | list):
                value = json.dumps(value)
            args += [name, str(value)]
        return {
            "keys": [
                *self._job_keys(job_id),
                keys.LEASES,
                keys.QUEUED,
                keys.WAITING,
                keys.parents(job_id),
                keys.waiting_on(job_id),
                keys.children(job_id),
                keys.RETRIES,
                keys.STATS_FINISHED,
                keys.ENDED,
                keys.array_key_of(job_id),
                keys.array_live(job_id[:24]),
                keys.array_bad(job_id[:24]),
            ],
            "args": args,
        }

    def begin_attempt(self, job_id: str, node: str, pid: int = 0) -> tuple[JobStatus | None, int]:
        """Start a new attempt on ``node`` (process ``pid``) if the job is queued.

        Returns (previous status, attempt). A job that is not queued — waiting, finished, or
        held by another attempt (a duplicate delivery) — is left as it is and its current
        attempt number returned; ``(None, 0)`` when there is no record. The new attempt gets a
        lease of ``lease_ttl`` seconds that its worker renews (:meth:`renew`).
        """
        prev, attempt = self._run(
            self._begin,
            keys=[*self._job_keys(job_id), keys.LEASES, keys.QUEUED, keys.RETRIES],
            args=[
                node,
                str(time.time()),
                self.log_max_entries,
                wire(sources(JobStatus.STAGING)),
                self.lease_ttl,
                pid,
                keys.node_running("%s"),
                keys.node_owners("%s"),
                job_id,
                JobStatus.STAGING.value,
            ],
        )
        return (JobStatus(prev) if prev else None), int(attempt)

    def delay(self, job_id: str, seconds: float) -> float:
        """Hold a queued job's message back ``seconds`` (its retry's backoff); the sweeper
        publishes it when due. Returns the due time (Redis time), 0 if the job is not queued."""
        due = self._run(
            self._delay,
            keys=[keys.job(job_id), keys.RETRIES, keys.QUEUED],
            args=[seconds, job_id, JobStatus.QUEUED.value],
        )
        return float(due)

    def renew(self, job_id: str, attempt: int) -> bool:
        """Extend ``attempt``'s lease; False when it no longer holds the job (stop it)."""
        return bool(
            self._run(
                self._renew,
                keys=[keys.job(job_id), keys.LEASES],
                args=[attempt, self.lease_ttl, wire(ACTIVE)],
            )
        )

    def request_cancel(self, job_id: str) -> JobStatus:
        """Cancel a waiting or queued job at once, and a started one whose lease expired (its
        worker is dead); flag a live started one for its worker. Returns the status after."""
        cur, attempt, expired = self._run(
            self._cancel, keys=[keys.job(job_id), keys.LEASES], args=[wire(ACTIVE), job_id]
        )
        if not cur:
            raise JobNotFound(job_id)
        status = JobStatus(cur)
        if status in PENDING or int(expired):
            how = (
                f"while {status}" if status in PENDING else f"(attempt {attempt}'s worker is gone)"
            )
            if self.transition(
                job_id,
                JobStatus.CANCELLED,
                attempt=None if status in PENDING else int(attempt),
                reason=Reason.CANCELLED,
                message=f"cancelled {how}",
            ):
                return JobStatus.CANCELLED
            return self.get(job_id).status
        return status

    def request_cancel_many(self, job_ids: Sequence[str], chunk: int = 1000) -> list[JobStatus]:
        """:meth:`request_cancel` for many jobs, in order, a chunk at a time: the chunk's
        checks in one pipelined round trip, the moves of its waiting and queued jobs (and of
        started ones whose worker is gone) in a second. Each move is the transition script's,
        as for one job; a job that moved on meanwhile is read afresh."""
        out: list[JobStatus] = []
        for start in range(0, len(job_ids), chunk):
            part = job_ids[start : start + chunk]
            pipe = self.r.pipeline(transaction=False)
            for job_id in part:
                self._cancel(
                    keys=[keys.job(job_id), keys.LEASES], args=[wire(ACTIVE), job_id], client=pipe
                )
            checked = self._run(pipe.execute)
            after: list[JobStatus | None] = []
            moves = self.r.pipeline(transaction=False)
            for job_id, (cur, attempt, expired) in zip(part, checked, strict=True):
                if not cur:
                    raise JobNotFound(job_id)
                status = JobStatus(cur)
                if status in PENDING or int(expired):
                    how = (
                        f"while {status}"
                        if status in PENDING
                        else f"(attempt {attempt}'s worker is gone)"
                    )
                    fields = {"reason": Reason.CANCELLED, "message": f"cancelled {how}"}
                    to = JobStatus.CANCELLED
                    call = self._transition_call(
                        job_id, to, None if status in PENDING else int(attempt), fields
                    )
                    self._transition(**call, client=moves)
                    after.append(None)  # known once the moves ran
                else:
                    after.append(status)
            moved = iter(self._run(moves.execute))
            for job_id, known in zip(part, after, strict=True):
                if known is None:
                    ok, _ = next(moved)
                    known = JobStatus.CANCELLED if int(ok) == 1 else self.status(job_id)
                out.append(known)
        return out

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self._run(self.r.hget, keys.job(job_id), "cancel") == "1")

    def append_logs(self, job_id: str, lines: Iterable[tuple[str, str]]) -> bool:
        """Append output lines under the job's byte cap; True once its log is truncated."""
        return bool(self._run(self._logs.append, job_id, lines))

    # -- reads -----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        h = self._run(self.r.hgetall, keys.job(job_id))
        if h:
            return parse_record(job_id, h)
        try:
            return parse_record(job_id, self.archived(job_id).record)
        except JobNotFound:
            rec = self.unfed.unfed_record(job_id) if self.unfed is not None else None
            if rec is not None:
                return rec  # an array's item not fed yet
            h = self._run(self.r.hgetall, keys.job(job_id))  # or fed a moment ago
            if not h:
                raise
            return parse_record(job_id, h)

    def get_many(self, job_ids: Sequence[str], chunk: int = 1000) -> list[JobRecord | None]:
        """The records of ``job_ids``, in order, live ones ``chunk`` a round trip, archived
        ones from their segments; None for an id with neither."""
        out: list[JobRecord | None] = []
        for start in range(0, len(job_ids), chunk):
            part = job_ids[start : start + chunk]
            pipe = self.r.pipeline(transaction=False)
            for job_id in part:
                pipe.hgetall(keys.job(job_id))
            live = self._run(pipe.execute)
            missing = [j for j, h in zip(part, live, strict=True) if not h]
            archived = self._run(self.archive.entries, missing) if missing else {}
            for job_id, h in zip(part, live, strict=True):
                if h:
                    out.append(parse_record(job_id, h))
                elif job_id in archived:
                    out.append(parse_record(job_id, archived[job_id].record))
                else:
                    out.append(None)
        return out

    def outputs_many(
        self, job_ids: Sequence[str], chunk: int = 1000
    ) -> list[tuple[dict[str, str], str] | None]:
        """Each job's (outputs, their signature), in order, without reading the rest of its
        record (live ``chunk`` a round trip, archived from their segments); None for an id
        with no record."""
        out: list[tuple[dict[str, str], str] | None] = []
        for start in range(0, len(job_ids), chunk):
            part = job_ids[start : start + chunk]
            pipe = self.r.pipeline(transaction=False)
            for job_id in part:
                pipe.hmget(keys.job(job_id), "status", "outputs", OUTPUTS_SIG)
            live = self._run(pipe.execute)
            missing = [j for j, h in zip(part, live, strict=True) if h[0] is None]
            archived = self._run(self.archive.entries, missing) if missing else {}
            for job_id, (status, outputs, sig) in zip(part, live, strict=True):
                if status is None and job_id in archived:
                    h = archived[job_id].record
                    status, outputs, sig = h.get("status"), h.get("outputs"), h.get(OUTPUTS_SIG)
                if status is None:
                    out.append(None)
                    continue
                out.append((json.loads(outputs or "{}"), str(sig or "")))
        return out

    def archived(self, job_id: str) -> Entry:
        """The job as the archive holds it (:mod:`offload.broker.archive`); JobNotFound."""
        entry = self._run(self.archive.entry, job_id)
        if entry is None:
            raise JobNotFound(job_id)
        return entry

    def status(self, job_id: str) -> JobStatus:
        value = self._run(self.r.hget, keys.job(job_id), "status")
        if value is not None:
            return JobStatus(value)
        try:
            return JobStatus(self.archived(job_id).record["status"])
        except JobNotFound:
            status = self.unfed.unfed_status(job_id) if self.unfed is not None else None
            if status is not None:
                return status  # an array's item not fed yet
            value = self._run(self.r.hget, keys.job(job_id), "status")  # or fed a moment ago
            if value is None:
                raise
            return JobStatus(value)

    def statuses(self, job_ids: Sequence[str], chunk: int = 1000) -> list[JobStatus]:
        """Each job's status, in order: one pipelined round trip per ``chunk`` jobs (an
        archived job's is read from its segment); JobNotFound for a job that never was."""
        out: list[JobStatus] = []
        for start in range(0, len(job_ids), chunk):
            part = job_ids[start : start + chunk]
            pipe = self.r.pipeline(transaction=False)
            for job_id in part:
                pipe.hget(keys.job(job_id), "status")
            values = self._run(pipe.execute)
            out += [
                JobStatus(v) if v is not None else self.status(job_id)
                for job_id, v in zip(part, values, strict=True)
            ]
        return out

    def timeline(self, job_id: str) -> list[Event]:
        entries = self._run(self.r.xrange, keys.events(job_id))
        if not entries:
            entry = self._run(self.archive.entry, job_id)
            entries = entry.events if entry is not None else []
        return [self._event(f) for _, f in entries]

    def latest(self, job_id: str, count: int = 8) -> tuple[str, list[Event]]:
        """A job's class and its newest ``count`` timeline entries (newest first), in one
        round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(keys.job(job_id), "class")
        pipe.xrevrange(keys.events(job_id), count=count)
        cls, entries = self._run(pipe.execute)
        if cls is None:
            entry = self._run(self.archive.entry, job_id)
            if entry is not None:
                cls, entries = entry.record.get("class", ""), entry.events[::-1][:count]
        return str(cls or ""), [self._event(f) for _, f in entries]

    @staticmethod
    def _event(f: dict[str, str]) -> Event:
        return Event(
            status=JobStatus(f["status"]),
            at=float(f["at"]),
            node=f.get("node", ""),
            attempt=int(f.get("attempt") or 0),
            reason=Reason(f["reason"]) if f.get("reason") else None,
            message=f.get("message") or None,
        )

    def requeues(self, job_id: str, reason: Reason) -> int:
        """How many times the job went back to ``queued`` for ``reason`` (``node_lost``,
        ``engine_lost``: losses, bounded by ``max_node_losses``)."""
        return sum(
            1 for e in self.timeline(job_id) if e.status is JobStatus.QUEUED and e.reason is reason
        )

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
        if not self._run(self.r.exists, keys.job(job_id)):
            entry = self._run(self.archive.entry, job_id)
            if entry is not None:
                for _, fields in entry.logs:
                    if "eof" in fields:
                        return
                    yield fields
                return
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
            raise broker_error(exc) from exc


__all__ = ["ACTIVE", "TERMINAL", "Event", "JobRecord", "JobRecords", "JobStatus"]
