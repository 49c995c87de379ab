"""Handing back the jobs of dead attempts, faster than their leases run out.

Leases decide who owns a running job (:mod:`offload.broker.sweeper` requeues a job whose lease
expired, whatever happened to its worker). Two cases are known sooner, and handled here:

* :class:`ProcessReaper` — a pool process of this (live) node died: its attempt is put back to
  ``queued`` and published again within seconds, as is an attempt a previous run of this node
  left behind (its process is gone too).
* :func:`recover_node` — a node known to be stopped (``offload down --force``): every job it
  holds goes back to the queue at once.

Every requeue is fenced by the attempt it was read with, so it never touches a job that another
attempt took, or that ended, meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psutil
from celery import Celery

from offload.broker.nodes import NodeRegistry, Owner
from offload.broker.publish import publish
from offload.broker.records import JobRecords
from offload.broker.status import ACTIVE, JobStatus, Reason
from offload.errors import JobNotFound

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is alive (a zombie is not)."""
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def node_losses(records: JobRecords, job_id: str) -> int:
    """How many attempts of the job died with their worker so far."""
    return records.requeues(job_id, Reason.NODE_LOST)


def requeue(
    records: JobRecords,
    app: Celery,
    job_id: str,
    *,
    node: str,
    message: str,
    attempt: int | None = None,
    reason: Reason = Reason.NODE_LOST,
    max_losses: int | None = None,
) -> JobStatus | None:
    """Put back to ``queued`` and publish again a job whose attempt on ``node`` is dead.

    Only while the record still says the job is active on ``node`` (and, when given, in
    ``attempt``): a job that finished or that another attempt took meanwhile is left alone —
    the transition is fenced by the attempt read here. Returns the job's new status, or None
    when it was left alone. With ``max_losses``, the ``max_losses``-th attempt to die with its
    worker ends the job ``failed`` (``node_lost``) instead: a poison job stops there. A
    loss spends no retry.
    """
    try:
        rec = records.get(job_id)
    except JobNotFound:
        return None
    if rec.status not in ACTIVE or rec.node != node:
        return None
    if attempt is not None and rec.attempt != attempt:
        return None
    if reason is Reason.NODE_LOST and max_losses is not None:
        losses = node_losses(records, job_id) + 1
        if losses >= max_losses:
            why = f"{message}; {losses} attempts died with their worker, giving up"
            if records.transition(
                job_id, JobStatus.FAILED, attempt=rec.attempt, reason=reason, message=why
            ):
                log.warning("job %s: %s", job_id, why)
                return JobStatus.FAILED
            return None
    moved = records.transition(
        job_id, JobStatus.QUEUED, attempt=rec.attempt, reason=reason, message=message
    )
    if not moved:
        return None
    publish(app, rec, f"{job_id}.r{rec.attempt + 1}")
    log.warning("job %s: %s; queued again", job_id, message)
    return JobStatus.QUEUED


def recover_node(
    registry: NodeRegistry,
    records: JobRecords,
    app: Celery,
    name: str,
    *,
    message: str,
    reason: Reason = Reason.HANDED_BACK,
) -> list[str]:
    """Hand back every job node ``name`` holds and deregister it; returns the job ids.

    For a node known to be stopped (``offload down --force``): its active jobs go back to
    ``queued`` and are published again; their dead attempts' containers are the caller's to
    remove. Under the node's recovery lock: one caller does it.
    """
    token = registry.claim_recovery(name)
    if token is None:
        return []
    try:
        node = registry.get(name)
        running = node.running if node is not None else ()
        handed = [
            job_id
            for job_id in running
            if requeue(records, app, job_id, node=name, message=message, reason=reason)
        ]
        registry.deregister(name)
        return handed
    finally:
        registry.release_recovery(name, token)


class ProcessReaper:
    """Finds this node's attempts whose pool process died, and redelivers them.

    Celery requeues the message of a pool process that died, but another node receiving it
    sees this (alive) node still listing the job and would acknowledge it without running.
    So an attempt whose process is gone — seen dead twice, ``grace`` seconds apart, and still
    the record's current attempt — is put back to ``queued`` and published again. ``remove``
    (the worker's: the job's containers on this engine) runs first, so the room the attempt
    held (:mod:`offload.broker.room`, freed by that requeue) is never given out while its
    container still runs.
    """

    def __init__(
        self,
        registry: NodeRegistry,
        records: JobRecords,
        node: str,
        grace: float,
        max_losses: int | None = None,
        remove: Callable[[str], object] | None = None,
    ) -> None:
        self.registry, self.records, self.node, self.grace = registry, records, node, grace
        self.max_losses = max_losses
        self.remove = remove
        self.suspects: dict[tuple[str, Owner], float] = {}

    def reap(self, app: Celery, now: float) -> list[str]:
        dead = {
            (job_id, owner)
            for job_id, owner in self.registry.owners(self.node).items()
            if not pid_alive(owner.pid)
        }
        self.suspects = {k: t for k, t in self.suspects.items() if k in dead}
        reaped = []
        for key in dead:
            first = self.suspects.setdefault(key, now)
            if now - first < self.grace:
                continue
            job_id, owner = key
            del self.suspects[key]
            if self.registry.owner(self.node, job_id) != owner:
                continue  # a new attempt took it meanwhile
            message = f"attempt {owner.attempt} on node {self.node} lost its process"
            if self.remove is not None:
                self.remove(job_id)
            if requeue(
                self.records,
                app,
                job_id,
                node=self.node,
                message=message,
                attempt=owner.attempt,
                max_losses=self.max_losses,
            ):
                reaped.append(job_id)
            else:  # the record moved on without this entry (a crash between two writes)
                self.registry.drop_stale(self.node, job_id, owner)
        return reaped
