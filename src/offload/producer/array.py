"""The handle to an array: the jobs of one ``map``, one per item, seen as one."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from offload.broker.arrays import ArrayInfo
from offload.broker.core import Broker
from offload.broker.status import JobStatus
from offload.errors import JobTimeout, SpecError
from offload.producer.job import Job, JobResult
from offload.spec import OutputRef


@dataclass(frozen=True)
class ArrayStatus:
    """An array's items counted by status, and its failed items' reasons."""

    count: int
    by_status: dict[JobStatus, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)  # failed/timed out/cancelled
    failed: list[int] = field(default_factory=list)  # indexes of ended, unsucceeded items

    @property
    def ended(self) -> int:
        return sum(n for s, n in self.by_status.items() if s.terminal)

    @property
    def succeeded(self) -> int:
        return self.by_status.get(JobStatus.SUCCEEDED, 0)

    @property
    def done(self) -> bool:
        return self.ended == self.count


class JobArray(Sequence[Job]):
    """The items of a ``map``: a ``Sequence[Job]`` (``array[i]``, ``len``, iteration), so
    code that treats ``map``'s result as a list keeps working, plus what concerns the whole:
    its ``id``, :meth:`status` (counts), :meth:`cancel`, :meth:`wait` / :meth:`results`
    (streaming, in order or as completed) and :meth:`outputs` (references for fan-in).

    Item ``i`` is the job ``<array id><i as 8 hex digits>`` (:mod:`offload.spec.arrays`):
    ``array[i]`` is a full :class:`Job`. Reads of many items go in pipelined chunks."""

    def __init__(self, broker: Broker, info: ArrayInfo) -> None:
        self.broker = broker
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    @classmethod
    def from_id(cls, array_id: str, broker: Broker) -> JobArray:
        """The array ``array_id`` (:class:`~offload.errors.JobNotFound` if there is none)."""
        return cls(broker, broker.arrays.get(array_id))

    def __repr__(self) -> str:
        return f"JobArray({self.id!r}, {len(self)} items)"

    def __len__(self) -> int:
        return self.info.count

    @overload
    def __getitem__(self, index: int) -> Job: ...

    @overload
    def __getitem__(self, index: slice) -> list[Job]: ...

    def __getitem__(self, index: int | slice) -> Job | list[Job]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        return Job(self.broker, self.info.item(index))

    def __iter__(self) -> Iterator[Job]:
        return (Job(self.broker, job_id) for job_id in self.info.items())

    @property
    def ids(self) -> list[str]:
        return self.info.items()

    def not_fed(self) -> tuple[int, bool]:
        """How many items wait in the array to be fed to the queue (they have no job record
        yet: listings do not show them), and whether the array was cancelled."""
        if not self.info.parts:
            return 0, False
        feed = self.broker.arrays.feed(self.id)
        return max(0, len(self) - feed.fed), feed.cancelled

    def statuses(self) -> list[JobStatus]:
        """Each item's status, in order (the items not fed to the queue yet, without reading
        them: ``queued``, or ``cancelled`` once the array is)."""
        if not self.info.parts:  # every item was recorded at submit
            return self.broker.records.statuses(self.ids)
        feed = self.broker.arrays.feed(self.id)
        fed = min(feed.fed, len(self))
        rest = JobStatus.CANCELLED if feed.cancelled else JobStatus.QUEUED
        return self.broker.records.statuses(self.ids[:fed]) + [rest] * (len(self) - fed)

    def status(self) -> ArrayStatus:
        """The items counted by status; the failed ones' reasons and indexes. For an array
        fed from its table, read from its counters and live items: O(live items), whatever
        its size."""
        if not self.info.parts:
            statuses = self.statuses()
            by_status = Counter(statuses)
            bad = [i for i, s in enumerate(statuses) if s.terminal and s is not JobStatus.SUCCEEDED]
        else:
            counts = self.broker.arrays.counts(self.info)
            by_status = Counter(counts.ended)
            by_status.update(self.broker.records.statuses(counts.live))
            if counts.unfed:
                rest = JobStatus.CANCELLED if counts.cancelled else JobStatus.QUEUED
                by_status[rest] += counts.unfed
            bad = counts.bad
        reasons: Counter[str] = Counter()
        for i in bad[:1000]:  # a failed item's record is read for its reason
            rec = self[i].record()
            reasons[str(rec.reason.value if rec.reason else rec.status.value)] += 1
        if self.info.parts and counts.cancelled and counts.unfed:  # cancelled before fed
            reasons[JobStatus.CANCELLED.value] += counts.unfed
            bad = bad + list(range(counts.fed, counts.count))
        return ArrayStatus(
            count=len(self),
            by_status={s: n for s, n in by_status.items() if n},
            by_reason=dict(reasons),
            failed=bad,
        )

    def cancel(self) -> dict[JobStatus, int]:
        """Cancel every item not ended yet (a queued or waiting one at once, a running one
        is killed by its worker; the items not fed yet are never fed); how many items were
        in each status before."""
        before = self.status().by_status
        if self.info.parts:
            self.broker.arrays.cancel(self.id)  # the feeder stops: O(1), not O(items)
            live = self.broker.arrays.counts(self.info).live
        else:
            live = [j for j, s in zip(self.ids, self.statuses(), strict=True) if not s.terminal]
        self.broker.cancel_many(live)
        self.broker.pipeline.settle_array(self.id)  # jobs waiting for the whole array fail
        return dict(before)

    def results(
        self, timeout: float | None = None, *, as_completed: bool = False, poll: float = 0.5
    ) -> Iterator[tuple[int, JobResult]]:
        """(index, result) of each item as it ends: in index order, or ``as_completed`` in
        the order they end. Failures are yielded, not raised; :class:`JobTimeout` once
        ``timeout`` seconds pass with items still running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not as_completed:
            for i, job in enumerate(self):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                yield i, job.result(left, raise_on_failure=False)
            return
        # only the items fed and not ended are read each poll (a window, whatever the size)
        watching: list[int] = []
        seen = 0  # items 0..seen-1 are watched or yielded
        left = len(self)
        while left:
            feed = self.broker.arrays.feed(self.id) if self.info.parts else None
            fed = len(self) if feed is None else min(feed.fed, len(self))
            watching += range(seen, fed)
            seen = max(seen, fed)
            statuses = self.broker.records.statuses([self.info.item(i) for i in watching])
            still = []
            for i, status in zip(watching, statuses, strict=True):
                if status.terminal:
                    left -= 1
                    yield i, JobResult.from_record(self[i].record())
                else:
                    still.append(i)
            watching = still
            if feed is not None and feed.cancelled and seen < len(self):  # never to be fed
                for i in range(seen, len(self)):
                    left -= 1
                    yield i, JobResult.from_record(self[i].record())
                seen = len(self)
            if not left:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(f"array {self.id}: {left} items not ended")
            time.sleep(poll)

    def wait(self, timeout: float | None = None) -> list[JobResult]:
        """Every item's result, in order (failures included, not raised)."""
        return [result for _, result in self.results(timeout)]

    def outputs(self, name: str) -> list[OutputRef]:
        """Item by item, a reference to its output ``name``: inputs of a later job (fan-in),
        which then waits for every item."""
        return [job.output(name) for job in self]

    def output(self, name: str) -> OutputRef:
        """The output ``name`` of every item, as **one** input of a later job, whatever the
        array's size: the job waits for the whole array (it fails if an item does not
        succeed) and sees a folder, ``/offload/in/<input>/<index><suffix>`` — item 7's
        ``fingerprint.json`` is ``7.json`` (:mod:`offload.worker.fanin`)."""
        try:
            return OutputRef(self.id, name)
        except ValueError as exc:
            raise SpecError("output", str(exc)) from None


__all__ = ["ArrayStatus", "JobArray"]
