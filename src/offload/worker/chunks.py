"""Running a chunk of a batched array: its items one after another in one warm container.

A chunk's message (``offload.run_chunk``, :mod:`offload.spec.arrays`) names up to ``batch``
consecutive items of an array made with ``map(..., batch=K)``. The worker runs each item as
the ordinary attempt it would run for the item's own message
(:func:`offload.worker.executor.execute`: begin the attempt, lease, verify, stage, run,
collect, record), on this node with a :class:`~offload.worker.warm.WarmRuntime` as its
runtime, so every item keeps its own record, attempt, lease, exit code, timeout, logs,
outputs, retries and memo — only the container start is shared (see :mod:`offload.worker.warm`
for what items of one batch share).

While the chunk runs its worker holds the chunk's lease (:mod:`offload.broker.chunks`): the
node's reaper leaves its warm container alone, and the sweeper leaves its waiting items to it.

What happens when something dies:

* **an item fails, times out or is killed for memory**: it alone ends so (or is retried,
  alone, through its own message); the chunk goes on with the next item;
* **the worker's pool process dies mid-item** (SIGKILL, OOM of the worker): Celery requeues
  the chunk's message (``reject_on_worker_lost``); the warm container ends by itself (its
  agent's stdin closes). The items that finished stay finished: on redelivery each is
  acknowledged without running, as any finished job is. The item that was running is put
  back by the node's process reaper (:class:`~offload.broker.recovery.ProcessReaper`), or by
  the sweeper once its lease expires, and runs again once: by the redelivered chunk or by
  its own message, whichever begins its attempt first — only a ``queued`` item begins one;
* **the whole worker or node dies**: the chunk's delivery stays unacknowledged and its lease
  runs out; the sweeper then publishes each of its unfinished items, one message each;
* **Redis goes away mid-chunk**: the item in progress stops as any job does
  (:class:`~offload.errors.BrokerError`); the chunk's message goes back to the queue and the
  items not yet run wait for it;
* **the node drains** (warm shutdown, scale down) or **its engine stops answering**: no new
  item begins; the message goes back to the queue and another node runs the rest.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from dataclasses import dataclass, field, replace

from offload.broker.chunks import ChunkLeases
from offload.broker.status import JobStatus
from offload.errors import BrokerError, JobNotFound
from offload.spec.arrays import chunk_items
from offload.worker.docker_runtime import DockerRuntime
from offload.worker.executor import Node, execute
from offload.worker.warm import Batch, WarmRuntime

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """The chunk stopped before its last item (the node drains, its engine is gone, Redis is
    away): its message goes back to the queue; the items it ran stay done."""


@dataclass
class ChunkOutcome:
    """What a run of a chunk did: the status each item it ran ended in, by job id (items it
    found finished, or held by another attempt, are not listed)."""

    chunk: str
    ran: dict[str, JobStatus] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """The items that ended failed, timed out or cancelled in this run."""
        return [j for j, s in self.ran.items() if s.terminal and s is not JobStatus.SUCCEEDED]


class ChunkLeaseKeeper:
    """Renews a chunk's lease every quarter of its length while the chunk runs."""

    def __init__(self, leases: ChunkLeases, chunk: str, node: str, run: int) -> None:
        self.leases, self.chunk, self.node, self.run = leases, chunk, node, run
        self.interval = max(0.25, leases.ttl_ms / 4000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"chunk-{chunk[-8:]}", daemon=True)

    def __enter__(self) -> ChunkLeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(BrokerError):  # gone with Redis: it expires
            self.leases.release(self.chunk, self.node, self.run)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:  # taken again after an outage that let it expire (nobody else holds it)
                if not self.leases.hold(self.chunk, self.node, self.run):
                    log.warning("chunk %s: its lease is held by another run", self.chunk)
            except BrokerError as exc:
                log.warning("chunk %s: cannot renew its lease now (%s)", self.chunk, exc)


def run_chunk(node: Node, chunk: str, leases: ChunkLeases) -> ChunkOutcome:
    """Run the items of ``chunk`` that are still to run, in order, in one warm container.

    Raises :class:`Interrupted` when it stopped before the end (the caller hands the message
    back); a :class:`BrokerError` of an item is raised as it is for a single job."""
    items = chunk_items(chunk)
    if not items:
        raise ValueError(f"{chunk!r} is not a chunk id")
    outcome = ChunkOutcome(chunk)
    if not isinstance(node.runtime, DockerRuntime):
        raise TypeError(f"a chunk runs on a Docker node, not {type(node.runtime).__name__}")
    run = random.randrange(1, 1 << 31)
    if not leases.hold(chunk, node.name, run):
        # Another delivery of this message runs it now (a backstop redelivery): its items
        # are run by it, or published one by one by the sweeper once its lease is gone.
        log.warning("chunk %s runs elsewhere; this delivery is acknowledged", chunk)
        outcome.skipped = items
        return outcome
    with (
        ChunkLeaseKeeper(leases, chunk, node.name, run),
        WarmRuntime(node.runtime, node.work_dir, Batch(chunk, run)) as warm,
    ):
        warm_node = replace(node, runtime=warm)
        for i, job_id in enumerate(items):
            if i and node.registry is not None and node.registry.is_draining(node.name):
                raise Interrupted(f"node {node.name} is draining")
            if not node.runtime.responsive():
                raise Interrupted("the Docker engine does not answer")
            status = execute(warm_node, job_id)
            if status is None:
                outcome.skipped.append(job_id)
            else:
                outcome.ran[job_id] = status
    # Release or fail the jobs waiting for the items that ended (also those that ended
    # before this delivery: cancelled while queued), as run_job does for a job.
    with contextlib.suppress(BrokerError, JobNotFound):  # the sweeper settles them later
        statuses = node.records.statuses(items)
        for job_id, status in zip(items, statuses, strict=True):
            if status.terminal:
                node.on_done(job_id)
    return outcome


__all__ = ["ChunkOutcome", "Interrupted", "run_chunk"]
