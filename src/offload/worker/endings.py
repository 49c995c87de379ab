"""Recording how an attempt ended: succeeded, failed, retried or handed back.

Every write is fenced by the attempt (:meth:`offload.broker.records.JobRecords.transition`): an
attempt that lost its job to another (the sweeper requeued it after its lease expired) writes
nothing. When Redis is away at the end of an attempt, the outcome goes to the node's durable
journal (:mod:`offload.worker.journal`) and is recorded when the broker is back: an outage
neither loses an outcome nor makes a job run again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from offload.broker.records import JobRecords
from offload.broker.status import JobStatus, Reason
from offload.cache import jobseal
from offload.cache.keys import ClusterKey
from offload.errors import BrokerError, SpecError
from offload.spec import JobSpec, ResourceClass, format_memory, resolve_class
from offload.spec.retry import RETRYABLE_REASONS
from offload.worker import metrics
from offload.worker.journal import Entry, Journal

log = logging.getLogger(__name__)

# Failures that spend a retry; a lost node, a lost engine or a node without a free GPU spends
# none.
RETRYABLE = frozenset(Reason(r) for r in RETRYABLE_REASONS)


def retries_used(records: JobRecords, job_id: str) -> int:
    """Retries spent so far: failures sent back to the queue."""
    return sum(
        1
        for e in records.timeline(job_id)
        if e.status is JobStatus.QUEUED and e.reason in RETRYABLE
    )


class Recorder:
    def __init__(
        self,
        records: JobRecords,
        journal: Journal | None,
        publish: Callable[[str, JobSpec, int], None],
        job_id: str,
        attempt: int,
        spec: JobSpec,
        retries_before: int,
        classes: Sequence[ResourceClass] = (),
        key: ClusterKey | None = None,
        max_losses: int | None = None,
    ) -> None:
        self.records, self.journal, self.publish = records, journal, publish
        self.job_id, self.attempt, self.spec = job_id, attempt, spec
        self.retries_before = retries_before
        self.classes = classes
        self.key = key  # signs outputs (its children's inputs) and an escalated spec
        self.max_losses = max_losses  # engine_lost hand-backs before the job ends failed
        self.journaled = False
        self.last_lines: Callable[[], list[tuple[str, str]]] = list
        self.timings: dict[str, float] = {}
        self.metrics = metrics.attempt_began(records, job_id, attempt)  # None: metrics off

    def record(self, status: JobStatus, **fields: Any) -> JobStatus:
        """Write the attempt's last move; journal it when Redis is away. Returns the job's
        status afterwards (another one when this attempt was fenced off)."""
        if status is JobStatus.SUCCEEDED and self.key is not None:
            outputs = fields.get("outputs") or {}
            fields[jobseal.OUTPUTS_SIG] = jobseal.sign_outputs(self.key, self.job_id, outputs)
        try:
            moved = self.records.transition(self.job_id, status, attempt=self.attempt, **fields)
        except BrokerError as exc:
            if self.journal is None:
                raise
            log.warning("job %s: broker away at the end (%s); journaling", self.job_id, exc)
            plain = {k: (v.value if isinstance(v, Reason) else v) for k, v in fields.items()}
            self.journal.write(
                Entry(self.job_id, self.attempt, status.value, plain, self.last_lines())
            )
            self.journaled = True
            self._count(status, fields)
            return status
        if not moved:
            log.warning(
                "job %s attempt %d: no longer current; %s not recorded",
                self.job_id,
                self.attempt,
                status,
            )
            return self.records.status(self.job_id)
        self._count(status, fields)
        return status

    def _count(self, status: JobStatus, fields: dict[str, Any]) -> None:
        if self.metrics is not None:
            reason = fields.get("reason")
            why = reason.value if isinstance(reason, Reason) else str(reason or "none")
            self.metrics.ended(status, why, fields.get("timings") or self.timings)

    def end(
        self,
        status: JobStatus,
        reason: Reason,
        message: str,
        exit_code: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> JobStatus:
        policy = self.spec.retry
        self.timings = timings or {}
        if self.retries_before < self.spec.retries and policy.retries(reason.value, exit_code):
            n = self.retries_before + 1
            spec, queue, more = self.spec, "", ""
            if reason is Reason.OOM_KILLED:
                escalated = self.more_memory()
                if escalated is None:
                    message += "; no resource class can give it more memory"
                    return self.record(status, reason=reason, message=message, exit_code=exit_code)
                spec, queue = escalated
                mem = format_memory(spec.resources.memory)
                more = f" with {mem} of memory in {queue}"
            delay = policy.delay(n)
            return self.retry(
                reason,
                f"attempt {self.attempt} {message}; retry {n} of {self.spec.retries}"
                f"{more} in {delay:.1f}s",
                exit_code,
                delay,
                spec if spec is not self.spec else None,
                queue,
            )
        return self.record(
            status,
            reason=reason,
            message=message,
            exit_code=exit_code,
            timings=timings or {},
        )

    def more_memory(self) -> tuple[JobSpec, str] | None:
        """The spec with ``retry.memory_factor`` times the memory, signed again, and the class
        that takes it — the next one up when its own no longer does; None when none does."""
        res = self.spec.resources
        memory = int(res.memory * self.spec.retry.memory_factor)
        try:
            bigger = res.model_copy(update={"memory": memory})
            queue = resolve_class(bigger, self.classes).name
        except (SpecError, ValueError):
            return None
        spec = self.spec.model_copy(update={"resources": bigger})  # still sealed: as recorded
        if self.key is not None:
            spec = jobseal.sign(self.key, self.job_id, spec)
        return spec, queue

    def retry(
        self,
        reason: Reason,
        message: str,
        exit_code: int | None,
        delay: float,
        spec: JobSpec | None,
        queue: str,
    ) -> JobStatus:
        """Back to ``queued`` for a retry, published after ``delay`` seconds by the sweeper
        (no slot, no unacknowledged message meanwhile); with ``spec``/``queue`` when the next
        attempt asks for more memory, in another class."""
        fields: dict[str, Any] = {"reason": reason, "message": message, "exit_code": exit_code}
        if spec is not None:
            fields.update(spec=spec.encode(), view=json.dumps(spec.redacted()), **{"class": queue})
        status = self.record(JobStatus.QUEUED, **fields)
        if status is JobStatus.QUEUED and self.metrics is not None:
            self.metrics.retried(reason.value)
        if status is not JobStatus.QUEUED or self.journaled:
            return status
        if delay > 0:
            self.records.delay(self.job_id, delay)
        else:
            self.publish(self.job_id, spec or self.spec, self.attempt)
        return status

    def requeue(self, reason: Reason, message: str, exit_code: int | None = None) -> JobStatus:
        """Back to ``queued`` and published again (when journaled, the sweeper republishes
        it once the broker is back: a queued job with no message). The ``max_losses``-th
        ``engine_lost`` ends the job ``failed`` instead, as ``node_lost`` does: a job whose
        every engine goes away stops there."""
        if reason is Reason.ENGINE_LOST and self.max_losses is not None:
            try:
                losses = self.records.requeues(self.job_id, reason) + 1
            except BrokerError:
                losses = 0  # the sweeper republishes it; counted at its next loss
            if losses >= self.max_losses:
                why = f"{message}; {losses} attempts lost their engine, giving up"
                return self.record(JobStatus.FAILED, reason=reason, message=why)
        status = self.record(JobStatus.QUEUED, reason=reason, message=message, exit_code=exit_code)
        if status is JobStatus.QUEUED and self.metrics is not None:
            self.metrics.requeued(reason.value)
        if status is JobStatus.QUEUED and not self.journaled:
            self.publish(self.job_id, self.spec, self.attempt)
        return status
