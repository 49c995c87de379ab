"""The handle to a submitted job and its result."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from offload.broker.core import Broker
from offload.broker.records import Event, JobRecord, JobRecords
from offload.broker.status import JobStatus
from offload.config import load_settings
from offload.errors import JobFailed, JobNotFound, SpecError
from offload.spec import OutputRef


class HasBroker(Protocol):
    """Anything that carries a broker (a :class:`~offload.producer.client.Client`)."""

    @property
    def broker(self) -> Broker: ...


@dataclass(frozen=True)
class JobResult:
    """How a job ended: outputs by path, exit code, failure reason, timings."""

    job_id: str
    status: JobStatus
    outputs: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    attempt: int = 0
    node: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cache_hit: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.SUCCEEDED

    @property
    def duration(self) -> float | None:
        """Seconds from submit to the end."""
        return None if self.finished_at is None else self.finished_at - self.created_at

    @classmethod
    def from_record(cls, rec: JobRecord) -> JobResult:
        return cls(
            job_id=rec.id,
            status=rec.status,
            outputs=dict(rec.outputs),
            exit_code=rec.exit_code,
            reason=rec.reason,
            message=rec.message,
            attempt=rec.attempt,
            node=rec.node,
            created_at=rec.created_at,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
            timings=dict(rec.timings),
            cache_hit=rec.cache_hit,
        )


@dataclass(frozen=True)
class LogLine:
    stream: str  # "out" | "err" | "sys" (offload's own note)
    text: str
    attempt: int


class Job:
    """A submitted job. Cheap to create from an id; every call asks the broker afresh."""

    def __init__(self, broker: Broker | HasBroker, job_id: str) -> None:
        self.broker: Broker = broker if isinstance(broker, Broker) else broker.broker
        self.id = job_id

    @property
    def records(self) -> JobRecords:
        return self.broker.records

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    @classmethod
    def from_id(cls, job_id: str, broker: Broker | HasBroker | None = None) -> Job:
        """The job ``job_id`` (:class:`JobNotFound` if there is none), read through ``broker``
        (a Client's, or one built from the ``OFFLOAD_*`` settings)."""
        if broker is None:
            from offload.cache.archive import sealed_archive

            settings = load_settings()
            broker = Broker(settings, archive=sealed_archive(settings))
        job = cls(broker, job_id)
        job.records.get(job_id)  # raises JobNotFound
        return job

    def record(self) -> JobRecord:
        return self.records.get(self.id)

    def status(self) -> JobStatus:
        return self.records.status(self.id)

    def timeline(self) -> list[Event]:
        return self.records.timeline(self.id)

    def result(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> JobResult:
        """Wait for the end; raise :class:`JobFailed` unless it succeeded (or asked not to)."""
        rec = self.records.wait(self.id, timeout)
        result = JobResult.from_record(rec)
        if raise_on_failure and not result.ok:
            raise JobFailed(result)
        return result

    def logs(self, follow: bool = False) -> Iterator[LogLine]:
        """The job's output lines; with ``follow`` keep reading until the job ends.

        A cache hit ran no container: after its own lines (usually none) come a ``sys`` line
        naming the job whose outputs it took, then that job's lines, while they are kept.
        """
        records = self.records
        attempt = 0
        for entry in records.log_entries(self.id, follow=follow):
            if "a" in entry:
                attempt = int(entry["a"])
                continue
            yield LogLine(entry.get("s", "out"), entry.get("l", ""), attempt)
        try:
            maker = records.get(self.id).cache_hit
        except JobNotFound:  # expired while we read
            return
        if not maker:
            return
        try:
            records.status(maker)
            kept = True
        except JobNotFound:
            kept = False
        tail = "its logs follow" if kept else "its logs are no longer kept"
        yield LogLine("sys", f"[offload] cache hit: outputs made by job {maker}; {tail}", attempt)
        if not kept:
            return
        made_by = 0
        for entry in records.log_entries(maker, follow=False):
            if "a" in entry:
                made_by = int(entry["a"])
                continue
            yield LogLine(entry.get("s", "out"), entry.get("l", ""), made_by)

    def why_waiting(self) -> str | None:
        """For a queued job, why it is still waiting (the autoscaler's word, or the nodes')."""
        rec = self.record()
        if rec.status is not JobStatus.QUEUED:
            return None
        cls = rec.resource_class
        st = self.broker.class_status(cls)
        if st is not None:
            return (
                f"{st.get('reason', '')} (class {cls}: desired {st.get('desired')}, "
                f"up {st.get('up')}, starting {st.get('starting')})"
            )
        serving = [n for n in self.broker.nodes.nodes() if cls in n.classes]
        up = [n for n in serving if n.state == "up"]
        if not up:
            return f"no node of class {cls} is up and no autoscaler is running"
        busy = sum(len(n.running) for n in up)
        slots = sum(n.slots for n in up)
        return f"waiting for a free slot: {busy} of {slots} slot(s) of class {cls} busy"

    def cancel(self, *, with_descendants: bool = False) -> JobStatus:
        """Cancel: at once if waiting or queued; a running job's worker kills its container.

        Jobs waiting for this one then fail (``upstream_failed``); ``with_descendants``
        cancels them too, and everything downstream of them.
        """
        return self.broker.cancel(self.id, with_descendants=with_descendants)

    def output(self, name: str) -> OutputRef:
        """A reference to this job's output ``name`` (its path under ``/offload/out``),
        usable as another job's input before this job has run."""
        try:
            return OutputRef(self.id, name)
        except ValueError as exc:
            raise SpecError("output", str(exc)) from None
