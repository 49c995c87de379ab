"""Identical jobs in flight run once: who runs the action of a memo key now.

At its memo check (:meth:`offload.worker.executor.Attempt.check_memo`) an attempt that finds no
memo claims the key's in-flight marker (``offload:inflight:<memo key>`` = its job id, with a
TTL of about the job's timeout). When the marker is held by another job that is active
(staging, running or uploading), the attempt does not run a second container: its job waits
for the holder (:func:`wait_for`) and is queued again
when the holder ends — to take its outputs from the memo if the holder succeeded, or to run
itself if it did not. A marker whose holder is no longer active (it ended, was requeued after
its worker died, or its record expired) is stale and taken over. The holder's attempt deletes
its marker when it ends, however it ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from offload.broker import keys
from offload.broker.connection import broker_error
from offload.broker.records import JobRecords
from offload.broker.status import ACTIVE, JobStatus, wire
from offload.errors import JobNotFound

TWIN = "memo:"  # a waiting job's ``wait`` while an identical job runs: ``memo:<job id>``

# KEYS: the in-flight marker.  ARGV: 1 job id, 2 ttl seconds, 3 job-key template, 4 active set,
#       5 succeeded state.
# Returns {'', ''} when the caller holds the marker now; {holder, holder's status} when an
# active job holds it, or a job that succeeded and has not let go of it yet.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  local st = redis.call('HGET', string.format(ARGV[3], cur), 'status')
  if st and (st == ARGV[5] or string.find(ARGV[4], ',' .. st .. ',', 1, true)) then
    return {cur, st}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {'', ''}
"""

# KEYS: the in-flight marker.  ARGV: 1 job id, 2 attempt, 3 job-key template.
# Deletes the marker when that job holds it and ``attempt`` is still the job's current one
# (an attempt that lost its job to a newer one leaves the newer one's marker alone).
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', string.format(ARGV[3], ARGV[1]), 'attempt') ~= ARGV[2] then return 0 end
return redis.call('DEL', KEYS[1])
"""


@dataclass(frozen=True)
class Holder:
    """The job that runs an action now (or just succeeded running it)."""

    job_id: str
    status: JobStatus


class InFlight:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def claim(self, memo_key: str, job_id: str, ttl: float) -> Holder | None:
        """Take the marker of ``memo_key`` for ``job_id``; None once taken, else the other
        job that holds it (active, or succeeded a moment ago)."""
        holder, status = _run(
            self._claim,
            keys=[keys.inflight(memo_key)],
            args=[
                job_id,
                max(1, int(ttl)),
                keys.job("%s"),
                wire(ACTIVE),
                JobStatus.SUCCEEDED.value,
            ],
        )
        return Holder(str(holder), JobStatus(str(status))) if holder else None

    def release(self, memo_key: str, job_id: str, attempt: int) -> bool:
        """Let go of the marker if ``job_id``'s ``attempt`` holds it."""
        return bool(
            _run(
                self._release,
                keys=[keys.inflight(memo_key)],
                args=[job_id, attempt, keys.job("%s")],
            )
        )

    def holder(self, memo_key: str) -> str | None:
        value = _run(self.r.get, keys.inflight(memo_key))
        return str(value) if value else None


def wait_for(records: JobRecords, job_id: str, attempt: int, twin: str) -> bool:
    """Make ``job_id`` wait for the identical job ``twin`` that runs now: ``attempt`` gives its
    slot back (``staging → waiting``, fenced, ``wait`` = ``memo:<twin>``) and the job is linked
    as ``twin``'s child, which :meth:`offload.broker.pipeline.Pipeline.on_done` queues again
    when ``twin`` ends, however it ends. In every case the attempt is over. Returns True when
    ``twin`` ended meanwhile and this call queued the job again: the caller publishes it."""
    why = f"waiting for identical job {twin}, in flight: its outputs will be reused"
    if not records.transition(
        job_id, JobStatus.WAITING, attempt=attempt, wait=f"{TWIN}{twin}", message=why
    ):
        return False  # fenced: another attempt has the job
    _run(records.r.sadd, keys.children(twin), job_id)
    try:  # its on_done may have run before the line above: then nobody else queues the job
        ended = records.status(twin).terminal
    except JobNotFound:
        ended = True
    if not ended:
        return False
    _run(records.r.srem, keys.children(twin), job_id)
    return records.transition(job_id, JobStatus.QUEUED, wait="", message="")


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except redis.RedisError as exc:
        raise broker_error(exc) from exc


__all__ = ["TWIN", "Holder", "InFlight", "wait_for"]
