"""Dependencies between jobs: waiting, release, and failure that flows downstream.

A job whose spec names other jobs (output references in its inputs, or ``after``) is
recorded ``waiting``. Its unfinished parents are registered atomically (one Lua script reads
each parent's status and links the pair), so a parent that finishes during the submission is
never missed. When a parent ends:

* succeeded — it leaves each child's waiting set; a child whose set empties is **released**:
  its references are resolved to the parents' output ids (a missing output fails it with
  ``input_missing``, naming it), it moves ``waiting → queued`` with the resolved spec, and is
  published. The move is atomic, so when several processes release at once only one
  publishes. The broker holds no key, so it does not sign the resolved spec: the spec keeps
  the references its producer signed (``seal.refs``, :meth:`JobSpec.resolved`) and the worker
  checks each resolved id against the parent's signed outputs
  (:mod:`offload.cache.jobseal`).
* failed, timed out or cancelled — every waiting descendant ends ``failed`` with
  ``upstream_failed``, naming the parent and why.

A job waiting for an identical job in flight (``wait`` = ``memo:<job id>``, set by
:func:`offload.broker.inflight.wait_for`) is linked as that job's child, but is no dependent:
when that job ends, however it ends, it is queued again (to take the outputs from the memo,
or to run itself) — never failed upstream; :meth:`Pipeline.children` and ``descendants`` leave
it out (:meth:`Pipeline.twins` lists it).

Whoever records a job's end calls :meth:`Pipeline.on_done`; the sweeper calls
:meth:`Pipeline.check_waiting` for jobs waiting longer than a grace period, so a worker dying
between a parent's success and its children's release leaves no child waiting for ever.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from offload.broker import keys
from offload.broker.inflight import TWIN
from offload.broker.records import JobRecords
from offload.broker.status import TERMINAL, JobStatus, Reason, wire
from offload.errors import JobNotFound
from offload.spec import JobSpec

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

# KEYS: child's waiting set, child's parents set.
# ARGV: 1 child id, 2 succeeded state, 3 terminal set, 4 job-key template,
#       5 children-key template, 6.. parent ids.
# Returns {n unfinished}; {-1, parent} for a parent with no record; {-2, parent, status} for
# a parent that ended without succeeding.
_DEPEND = """
for i = 6, #ARGV do
  local p = ARGV[i]
  redis.call('SADD', KEYS[2], p)
  local st = redis.call('HGET', string.format(ARGV[4], p), 'status')
  if not st then return {-1, p} end
  local ck = string.format(ARGV[5], p)
  redis.call('SADD', ck, ARGV[1])  -- for views too when it ended: a child of a finished job
  local ttl = redis.call('TTL', string.format(ARGV[4], p))
  if ttl > 0 then redis.call('EXPIRE', ck, ttl) end
  if st ~= ARGV[2] then
    if string.find(ARGV[3], ',' .. st .. ',', 1, true) then return {-2, p, st} end
    redis.call('SADD', KEYS[1], p)
  end
end
return {redis.call('SCARD', KEYS[1])}
"""


class Pipeline:
    def __init__(self, records: JobRecords, app: Celery | Callable[[], Celery]) -> None:
        """``app``: the Celery app, or what builds it when first published through (reading
        parents and children imports no Celery: ``offload status`` starts quickly)."""
        self.records = records
        self._app = app
        self.r = records.r
        self._depend = self.r.register_script(_DEPEND)

    @property
    def app(self) -> Celery:
        if not hasattr(self._app, "send_task"):
            self._app = self._app()
        return self._app

    def _publish(self, job_id: str, tag: str) -> None:
        from offload.broker.publish import publish

        publish(self.app, self.records.get(job_id), f"{job_id}.{tag}{uuid.uuid4().hex[:6]}")

    # -- submit ----------------------------------------------------------------------------

    def submit(self, job_id: str, spec: JobSpec, resource_class: str) -> JobStatus:
        """Record a job with parents ``waiting``, link it, and release it if nothing is left
        to wait for. Returns its status afterwards."""
        self.records.create(job_id, spec, resource_class, JobStatus.WAITING)
        return self.link(job_id, spec)

    def link(self, job_id: str, spec: JobSpec) -> JobStatus:
        parents = []
        for array_id in [p for p in spec.parents() if len(p) == 24]:  # a whole array's outputs
            failed = self._link_array(job_id, array_id)
            if failed:
                self.fail(job_id, failed)
                return self.records.status(job_id)
        for parent in [p for p in spec.parents() if len(p) != 24]:  # archived: settled here
            if self.records._run(self.r.exists, keys.job(parent)):
                parents.append(parent)
                continue
            try:
                status = self.records.status(parent)
            except JobNotFound:
                parents.append(parent)  # the script says it does not exist
                continue
            self.records._run(self.r.sadd, keys.parents(job_id), parent)
            if not status.terminal:  # an array's item not fed yet: wait for it as for any
                self._wait_for_unfed(job_id, parent)
                continue
            if status is not JobStatus.SUCCEEDED:
                self.fail(job_id, self._why(parent, status.value))
                return self.records.status(job_id)
        got = self.records._run(
            self._depend,
            keys=[keys.waiting_on(job_id), keys.parents(job_id)],
            args=[
                job_id,
                JobStatus.SUCCEEDED.value,
                wire(TERMINAL),
                keys.job("%s"),
                keys.children("%s"),
                *parents,
            ],
        )
        if int(got[0]) == -1 and self.records._run(self.records.archive.entry, str(got[1])):
            return self.link(job_id, spec)  # archived meanwhile
        if int(got[0]) == -1:
            self.fail(job_id, f"parent job {got[1]} does not exist (any more)")
        elif int(got[0]) == -2:
            self.fail(job_id, self._why(str(got[1]), str(got[2])))
        elif int(got[0]) == 0:
            self.release(job_id)
        return self.records.status(job_id)

    def _link_array(self, job_id: str, array_id: str) -> str:
        """``job_id`` waits for every item of ``array_id`` (an input naming the output of
        each): linked as the array's child unless the array has ended. Returns why the job
        fails ("" when it does not): no such array, or an item that did not succeed."""
        pipe = self.r.pipeline(transaction=True)
        pipe.sadd(keys.parents(job_id), array_id)
        pipe.sadd(keys.children(array_id), job_id)
        pipe.expire(keys.children(array_id), self.records.record_ttl)
        pipe.sadd(keys.waiting_on(job_id), array_id)
        self.records._run(pipe.execute)
        # after the links, so that an array ending meanwhile is seen here or by its last item
        ended, why = self.array_ended(array_id)
        if ended and not why:
            self.records._run(self.r.srem, keys.waiting_on(job_id), array_id)
        return why

    def array_ended(self, array_id: str) -> tuple[bool, str]:
        """Whether every item of the array has ended, and if one did not succeed (or there
        is no such array), why its dependents fail."""
        arrays = self.records.unfed
        try:
            if arrays is None:
                raise JobNotFound(array_id)
            info = arrays.get(array_id)
        except JobNotFound:
            return True, f"array {array_id} does not exist (any more)"
        counts = arrays.counts(info)
        if counts.settled < info.count:
            return False, ""
        good = counts.ended.get(JobStatus.SUCCEEDED, 0)
        if good == info.count:
            return True, ""
        return True, (f"array {info.name or array_id} ({array_id}): {info.count - good} of "
                      f"{info.count} items did not succeed")  # fmt: skip

    def on_array_item_done(self, job_id: str) -> list[str]:
        """An array's item ended: once the whole array has, release or fail the jobs that
        wait for it (an input naming the output of every item)."""
        return self.settle_array(job_id[:24]) if len(job_id) == 32 else []

    def settle_array(self, array_id: str) -> list[str]:
        """Release (every item succeeded) or fail (one did not) the jobs waiting for the
        whole array, once every item has ended (or was cancelled before it was fed)."""
        if not self.r.exists(keys.children(array_id)):
            return []
        ended, why = self.array_ended(array_id)
        if not ended:
            return []
        touched = []
        for child in sorted(str(c) for c in self.r.smembers(keys.children(array_id))):
            if why:
                if self.fail(child, why):
                    touched.append(child)
                continue
            self.r.srem(keys.waiting_on(child), array_id)
            if self.r.scard(keys.waiting_on(child)) == 0 and self.release(child):
                touched.append(child)
        return touched

    def _wait_for_unfed(self, job_id: str, parent: str) -> None:
        """``job_id`` waits for ``parent``, an array's item whose record the feeder has not
        written yet: listed among its children, so that its end releases ``job_id``. (Fed and
        ended in between, it is settled by the sweeper's check of old waiting jobs.)"""
        pipe = self.r.pipeline(transaction=True)
        pipe.sadd(keys.children(parent), job_id)
        pipe.expire(keys.children(parent), self.records.record_ttl)
        pipe.sadd(keys.waiting_on(job_id), parent)
        self.records._run(pipe.execute)

    # -- parents ending ---------------------------------------------------------------------

    def on_done(self, job_id: str) -> list[str]:
        """A job ended: release or fail the children waiting for it. Returns those touched."""
        try:
            status = self.records.status(job_id)
        except JobNotFound:
            return []
        if not status.terminal:
            return []
        touched = self.on_array_item_done(job_id)
        for child in sorted(self.r.smembers(keys.children(job_id))):
            child = str(child)
            if self._twin_of(child) == job_id:  # identical, not dependent: queued either way
                self.r.srem(keys.children(job_id), child)
                if self.resume(child):
                    touched.append(child)
            elif status is JobStatus.SUCCEEDED:
                self.r.srem(keys.waiting_on(child), job_id)
                if self.r.scard(keys.waiting_on(child)) == 0 and self.release(child):
                    touched.append(child)
            elif self.fail(child, self._why(job_id, status.value)):
                touched.append(child)
        return touched

    def _why(self, parent: str, status: str) -> str:
        try:
            rec = self.records.get(parent)
            name, reason = rec.name, rec.reason.value if rec.reason else status
            detail = f": {rec.message}" if rec.message else ""
        except JobNotFound:
            name, reason, detail = parent, status, ""
        return f"parent {name} ({parent}) {status}: {reason}{detail}"

    def release(self, job_id: str) -> bool:
        """Resolve a waiting job's references and queue it; False if it was not waiting."""
        try:
            rec = self.records.get(job_id)
        except JobNotFound:
            return False
        if rec.status is not JobStatus.WAITING:
            return False
        outputs: dict[str, str] = {}
        for name, ref in rec.spec.refs().items():
            if ref.array:  # every item's output: read by the worker that stages the job
                continue
            try:
                parent = self.records.get(ref.job_id)
            except JobNotFound:
                self.fail(job_id, f"input {name!r}: job {ref.job_id} no longer exists")
                return False
            oid = parent.outputs.get(ref.name)
            if oid is None:
                made = ", ".join(sorted(parent.outputs)) or "no outputs"
                self.fail(
                    job_id,
                    f"input {name!r}: job {parent.name} ({ref.job_id}) produced no output "
                    f"{ref.name!r} (it produced {made})",
                    Reason.INPUT_MISSING,
                )
                return False
            outputs[str(ref)] = oid
        spec = rec.spec.resolved(outputs)
        if not self.records.transition(
            job_id, JobStatus.QUEUED, spec=spec.encode(), view=json.dumps(spec.redacted())
        ):
            return False
        self._publish(job_id, "w")
        log.info("job %s released: its parents succeeded", job_id)
        return True

    def fail(self, job_id: str, message: str, reason: Reason = Reason.UPSTREAM_FAILED) -> bool:
        """End a waiting job ``failed``, then its own waiting descendants."""
        if not self.records.transition(job_id, JobStatus.FAILED, reason=reason, message=message):
            return False
        log.info("job %s failed: %s", job_id, message)
        self.on_done(job_id)
        return True

    # -- waiting for something else than parents -----------------------------------------------

    def park(self, job_id: str, attempt: int, wait: str, message: str) -> bool:
        """Give an attempt's slot back: the job waits (``wait`` says for what) until
        :meth:`resume`. Fenced by ``attempt``."""
        return self.records.transition(
            job_id, JobStatus.WAITING, attempt=attempt, wait=wait, message=message
        )

    def resume(self, job_id: str) -> bool:
        """Queue a parked job again (its limit freed, its class released, …)."""
        if not self.records.transition(job_id, JobStatus.QUEUED, wait="", message=""):
            return False
        self._publish(job_id, "u")
        return True

    def _twin_of(self, job_id: str) -> str | None:
        """The identical job ``job_id`` waits for, if it waits for one."""
        wait = self.r.hget(keys.job(job_id), "wait") or ""
        return str(wait).removeprefix(TWIN) if str(wait).startswith(TWIN) else None

    def _ended(self, job_id: str) -> bool:
        try:
            return self.records.status(job_id).terminal
        except JobNotFound:
            return True

    # -- views and control -------------------------------------------------------------------

    def _linked(self, job_id: str, children: bool) -> list[str]:
        """A job's parents (or children) set; an archived job's as its segment keeps it."""
        key = keys.children(job_id) if children else keys.parents(job_id)
        members = sorted(str(m) for m in self.r.smembers(key))
        if not members and not self.r.exists(keys.job(job_id)):
            entry = self.records._run(self.records.archive.entry, job_id)
            if entry is not None:
                return list(entry.children if children else entry.parents)
        return members

    def parents(self, job_id: str) -> list[str]:
        return self._linked(job_id, children=False)

    def children(self, job_id: str) -> list[str]:
        """The jobs that depend on this one (identical jobs waiting for it: :meth:`twins`)."""
        return [c for c in self._linked(job_id, children=True) if self._twin_of(c) != job_id]

    def twins(self, job_id: str) -> list[str]:
        """Identical jobs waiting for this one to take its outputs."""
        return [c for c in self._linked(job_id, children=True) if self._twin_of(c) == job_id]

    def waiting_for(self, job_id: str) -> list[str]:
        return sorted(str(p) for p in self.r.smembers(keys.waiting_on(job_id)))

    def descendants(self, job_id: str) -> list[str]:
        """Every job downstream of ``job_id``, nearest first."""
        seen: dict[str, None] = {}
        frontier = [job_id]
        while frontier:
            nxt = []
            for j in frontier:
                for c in self.children(j):
                    if c not in seen and c != job_id:
                        seen[c] = None
                        nxt.append(c)
            frontier = nxt
        return list(seen)

    def cancel_with_descendants(self, job_id: str) -> dict[str, JobStatus]:
        """Cancel a job and everything downstream of it; returns each one's status after
        (the job first, then its descendants nearest first).

        The farthest descendants are cancelled first and the job last: a job that ends
        fails the children still waiting for it (``upstream_failed``), so cancelling it
        first would race its worker (or :meth:`on_done`) to the children."""
        below = self.descendants(job_id)
        after = {child: self.records.request_cancel(child) for child in reversed(below)}
        out = {job_id: self.records.request_cancel(job_id), **{c: after[c] for c in below}}
        for each in out:  # identical jobs parked on any of them are queued again
            self.on_done(each)
        return out

    # -- crash safety ----------------------------------------------------------------------------

    def check_waiting(self, older_than: float) -> list[str]:
        """Settle jobs waiting since before ``older_than`` (Redis time) whose parents ended:
        a release or a failure that a crash prevented. Returns the jobs settled."""
        settled = []
        for job_id in self.r.zrangebyscore(keys.WAITING, "-inf", older_than):
            job_id = str(job_id)
            try:
                rec = self.records.get(job_id)
            except JobNotFound:
                self.r.zrem(keys.WAITING, job_id)
                continue
            if rec.status is not JobStatus.WAITING:
                self.r.zrem(keys.WAITING, job_id)
                continue
            if rec.wait.startswith(TWIN):  # an identical job: queued again once it ended
                twin = rec.wait.removeprefix(TWIN)
                if self._ended(twin) and self.resume(job_id):
                    self.r.srem(keys.children(twin), job_id)
                    settled.append(job_id)
                continue
            if rec.wait:  # a limit, a held class: released by their owners
                continue
            before = self.records.status(job_id)
            self.r.delete(keys.waiting_on(job_id))
            if self.link(job_id, rec.spec) is not before:
                settled.append(job_id)
        return settled
