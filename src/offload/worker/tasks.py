"""The Celery side of a worker: the ``run_job`` task and per-process set-up.

Each pool process builds its own :class:`~offload.worker.executor.Node` (one Docker client,
one Redis connection pool) at its first job and keeps it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from offload.broker.app import TASK_NAME, redis_client, route
from offload.broker.nodes import NodeRegistry
from offload.broker.records import JobRecords
from offload.cache.actions import ActionCache
from offload.cache.factory import open_store
from offload.config import Settings
from offload.errors import BrokerError
from offload.spec import JobSpec
from offload.worker.capacity import Capacity
from offload.worker.docker_runtime import DockerRuntime, connect
from offload.worker.executor import Node, execute

log = logging.getLogger(__name__)


def build_node(app: Celery, settings: Settings, capacity: Capacity) -> Node:
    records = JobRecords(
        redis_client(settings),
        record_ttl=settings.record_ttl,
        log_max_entries=settings.log_max_entries,
    )

    def requeue(job_id: str, spec: JobSpec, attempt: int) -> None:
        queue = records.get(job_id).resource_class
        route(app, job_id, queue, spec.display_name(), spec.summary(), f"{job_id}.{attempt + 1}")

    work = settings.home / "work" / settings.node_name
    work.mkdir(parents=True, exist_ok=True)
    return Node(
        name=settings.node_name,
        capacity=capacity,
        records=records,
        store=open_store(settings),
        runtime=DockerRuntime(connect(), pull_timeout=settings.pull_timeout),
        work_dir=work,
        user=settings.container_user,
        pids_limit=settings.pids_limit,
        tmpfs_size=settings.tmpfs_size,
        requeue=requeue,
        memo=ActionCache(records.r, settings.memo_ttl),
        registry=NodeRegistry(records.r, lost_after=settings.lost_after),
    )


def register(app: Celery, settings: Settings, capacity: Capacity) -> None:
    """Register ``run_job`` on ``app`` for a worker with this node's settings."""
    nodes: dict[int, Node] = {}  # one per pool process, built after the fork

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_job(self: Any, job_id: str) -> str | None:
        pid = os.getpid()
        if pid not in nodes:
            try:
                nodes[pid] = build_node(app, settings, capacity)
            except Exception as exc:
                # This process cannot run jobs now; hand the job back rather than lose it.
                log.exception("cannot set up this worker process; job %s goes back", job_id)
                time.sleep(1)
                raise Reject(f"worker process set-up failed: {exc}", requeue=True) from exc
        try:
            status = execute(nodes[pid], job_id)
        except BrokerError as exc:  # Redis went away mid-job: the record is unreachable
            log.error("job %s: broker error, handing the job back: %s", job_id, exc)
            time.sleep(1)
            raise Reject(str(exc), requeue=True) from exc
        return status.value if status is not None else None
