"""Redelivering the jobs of lost nodes and dead pool processes; spotting duplicate deliveries.

A node that stops heartbeating for ``lost_after`` seconds is *lost*: each job in its running
set whose record still says it runs there is put back to ``queued`` and published again at
once, so it runs elsewhere without waiting for the broker's visibility timeout. Any number of
processes may call :func:`recover_lost` at the same time (every worker's heartbeat thread and
the autoscaler loop do): a ``SET NX`` lock per lost node lets one of them do the work.

The broker still holds the lost node's unacknowledged message and hands it out again after
the visibility timeout. :func:`held_elsewhere` lets the executor acknowledge such a stale
delivery without running the job while a live attempt holds it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import psutil

from offload.broker.nodes import NodeRegistry, Owner
from offload.broker.records import JobRecords
from offload.broker.status import ACTIVE, JobStatus
from offload.errors import JobNotFound

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is alive (a zombie is not)."""
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def requeue(
    records: JobRecords,
    app: Celery,
    job_id: str,
    *,
    node: str,
    message: str,
    attempt: int | None = None,
) -> bool:
    """Put back to ``queued`` and publish again a job whose attempt on ``node`` is dead.

    Only while the record still says the job is active on ``node`` (and, when given, in
    ``attempt``): a job that finished or that another attempt took meanwhile is left alone.
    """
    from offload.broker.app import route  # here: the executor imports this module, Celery-free

    try:
        rec = records.get(job_id)
    except JobNotFound:
        return False
    if rec.status not in ACTIVE or rec.node != node:
        return False
    if attempt is not None and rec.attempt != attempt:
        return False
    moved = records.transition(
        job_id, JobStatus.QUEUED, allowed_from=ACTIVE, reason="node_lost", message=message
    )
    if not moved:
        return False
    route(
        app,
        job_id,
        rec.resource_class,
        rec.spec.display_name(),
        rec.spec.summary(),
        f"{job_id}.r{rec.attempt + 1}",
    )
    log.warning("job %s: %s; queued again", job_id, message)
    return True


def recover_lost(
    registry: NodeRegistry, records: JobRecords, app: Celery, now: float | None = None
) -> list[str]:
    """Redeliver the running jobs of every lost node, then deregister it; returns the job ids.

    Safe to run from several processes at once: one lock (``SET NX``) per lost node.
    """
    now = time.time() if now is None else now
    recovered: list[str] = []
    for lost in registry.lost(now):
        token = registry.claim_recovery(lost.name)
        if token is None:
            continue  # someone else is at it
        try:
            node = registry.get(lost.name, now)  # again, under the lock
            if node is None or not node.lost:
                continue
            log.warning(
                "node %s lost (last heartbeat %.1fs ago); redelivering %d job(s)",
                node.name,
                now - node.heartbeat_at,
                len(node.running),
            )
            for job_id in node.running:
                if requeue(records, app, job_id, node=node.name, message=f"node {node.name} lost"):
                    recovered.append(job_id)
            registry.deregister(node.name)
        finally:
            registry.release_recovery(lost.name, token)
    return recovered


def held_elsewhere(registry: NodeRegistry, records: JobRecords, job_id: str, me: str) -> str | None:
    """Why a delivery of ``job_id`` to node ``me`` must not run: a live attempt holds it.

    ``None`` (run it) unless the record is active and its attempt is alive: on another node
    with a fresh heartbeat that lists the job as running, or on this node in another pool
    process that is still alive. A dead attempt — its node lost or unknown, its process gone —
    does not hold the job.
    """
    try:
        rec = records.get(job_id)
    except JobNotFound:
        return None
    if rec.status not in ACTIVE or not rec.node:
        return None
    if rec.node != me:
        if registry.alive(rec.node) and registry.runs(rec.node, job_id):
            return f"node {rec.node} runs attempt {rec.attempt}"
        return None
    owner = registry.owner(me, job_id)
    if (
        owner is not None
        and owner.attempt == rec.attempt
        and owner.pid != os.getpid()
        and pid_alive(owner.pid)
    ):
        return f"process {owner.pid} of this node runs attempt {rec.attempt}"
    return None


class ProcessReaper:
    """Finds this node's attempts whose pool process died, and redelivers them.

    Celery requeues the message of a pool process that died, but another node receiving it
    sees this (alive) node still listing the job and would acknowledge it without running.
    So an attempt whose process is gone — seen dead twice, ``grace`` seconds apart, and still
    the record's current attempt — is put back to ``queued`` and published again.
    """

    def __init__(self, registry: NodeRegistry, records: JobRecords, node: str, grace: float):
        self.registry, self.records, self.node, self.grace = registry, records, node, grace
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
            if requeue(
                self.records, app, job_id, node=self.node, message=message, attempt=owner.attempt
            ):
                reaped.append(job_id)
            if self.registry.owner(self.node, job_id) == owner:
                self.registry.job_finished(self.node, job_id)
        return reaped
