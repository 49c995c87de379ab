"""The Celery side of a worker: the ``run_job`` task and per-process set-up.

Each pool process builds its own :class:`~offload.worker.executor.Node` (one Docker client,
one Redis connection pool) at its first job and keeps it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from offload.broker.app import CHUNK_TASK_NAME, TASK_NAME, TaskFailed
from offload.broker.chunks import ChunkLeases
from offload.broker.core import Broker
from offload.broker.status import JobStatus
from offload.cache.actions import ActionCache
from offload.cache.archive import SealedArchive
from offload.cache.factory import open_store, user_data
from offload.cache.keys import load_key
from offload.errors import BrokerError
from offload.spec import JobSpec
from offload.worker import chunks
from offload.worker.capacity import Capacity
from offload.worker.deliver import Deliverer
from offload.worker.docker_runtime import DockerRuntime, connect
from offload.worker.executor import Node, execute
from offload.worker.gpus import GpuAllocator, lock_dir
from offload.worker.journal import Journal
from offload.worker.node import AdmissionPolicy

log = logging.getLogger(__name__)


def build_node(broker: Broker, capacity: Capacity) -> Node:
    """A pool process's node, its parts taken from the process's broker."""
    settings, records = broker.settings, broker.records

    def requeue(job_id: str, spec: JobSpec, attempt: int) -> None:
        broker.publish(records.get(job_id), f"{job_id}.{attempt + 1}")

    work = settings.work_dir
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = open_store(settings, broker.redis)
    broker.attach_archive(SealedArchive(store))  # archived parents' outputs (trust.verify)
    key = load_key(settings.key_path)
    fetcher, s3 = user_data(settings, store, broker.redis, key)
    return Node(
        name=settings.node_name,
        capacity=capacity,
        records=records,
        store=store,
        runtime=DockerRuntime(
            connect(settings.engine_timeout),
            pull_timeout=settings.pull_timeout,
            networks=settings.job_networks,
        ),
        work_dir=work,
        user=settings.container_user,
        pids_limit=settings.pids_limit,
        tmpfs_size=settings.tmpfs_size,
        requeue=requeue,
        memo=ActionCache(broker.redis, settings.memo_ttl),
        registry=broker.nodes,
        inflight=broker.inflight,
        gpus=GpuAllocator(capacity.gpus, lock_dir(settings.home)),
        journal=Journal(settings.journal_dir),
        cluster=broker.nodes.cluster_id(),
        classes=settings.classes,
        limits=broker.limits,
        key=key,
        on_done=broker.pipeline.on_done,
        room=broker.room,
        machine=settings.machine,
        admission=AdmissionPolicy(settings.admission_wait, settings.admission_starvation),
        fetcher=fetcher,
        deliverer=Deliverer(s3, attempts=settings.deliver_attempts),
        max_losses=settings.max_node_losses,
        after_item=broker.feeder.after_item,
    )


def register(broker: Broker, capacity: Capacity) -> None:
    """Register ``run_job`` on the broker's app for a worker with this node's settings."""
    app, settings = broker.app, broker.settings
    nodes: dict[int, Node] = {}  # one per pool process, built after the fork

    def node_here(what: str) -> Node:
        """This pool process's node (built at its first task), its engine answering; else
        the message goes back to the queue (Reject) before anything is taken."""
        pid = os.getpid()
        if pid not in nodes:
            try:
                # the process's own broker: Redis connected after the fork, the worker's app
                nodes[pid] = build_node(Broker(settings, app=app), capacity)
            except Exception as exc:
                # This process cannot run jobs now; hand the job back rather than lose it.
                log.exception("cannot set up this worker process; %s goes back", what)
                time.sleep(1)
                raise Reject(f"worker process set-up failed: {exc}", requeue=True) from exc
        if not nodes[pid].runtime.responsive():
            # No engine: hand the message back before taking an attempt; the heartbeat stops
            # this node consuming meanwhile (worker/engine.py), so another node, or this one
            # once its engine answers, runs it.
            log.warning("%s: the Docker engine does not answer; handed back", what)
            time.sleep(1)
            raise Reject("the Docker engine does not answer", requeue=True)
        return nodes[pid]

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_job(self: Any, job_id: str) -> str | None:
        node = node_here(f"job {job_id}")
        try:
            status = execute(node, job_id)
        except BrokerError as exc:  # Redis went away mid-job: the record is unreachable
            log.error("job %s: broker error, handing the job back: %s", job_id, exc)
            time.sleep(1)
            raise Reject(str(exc), requeue=True) from exc
        feed_next(node, job_id)
        if status is None or status.terminal:
            # A job that ended failed / timed_out / cancelled (here, or before this delivery:
            # cancelled while queued) fails the task, so Flower shows FAILURE and its reason.
            try:
                ended = node.records.get(job_id)
                if ended.status.terminal:  # release or fail the jobs waiting for it
                    node.on_done(job_id)
            except BrokerError:  # the sweeper settles its children once Redis is back
                ended = None
            if ended and ended.status.terminal and ended.status is not JobStatus.SUCCEEDED:
                raise TaskFailed(ended.reason or ended.status.value, ended.message or "")
        return status.value if status is not None else None

    @app.task(name=CHUNK_TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_chunk(self: Any, chunk: str) -> str:
        """A chunk of a batched array (:mod:`offload.worker.chunks`); Flower shows it as one
        task, FAILURE when an item it ran did not succeed."""
        node = node_here(f"chunk {chunk}")
        try:
            leases = ChunkLeases(node.records.r, node.records.lease_ttl)
            outcome = chunks.run_chunk(node, chunk, leases)
        except (BrokerError, chunks.Interrupted) as exc:
            log.error("chunk %s: stopped (%s); the message goes back to the queue", chunk, exc)
            time.sleep(1)
            raise Reject(str(exc), requeue=True) from exc
        feed_next(node, chunk)
        counts: dict[str, int] = {}
        for status in outcome.ran.values():
            counts[status.value] = counts.get(status.value, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to run"
        if outcome.skipped:
            summary += f"; {len(outcome.skipped)} already done or taken"
        failed = outcome.failures()
        if failed:
            first = f"item {int(failed[0][24:], 16)} ({failed[0]})"
            raise TaskFailed("items_failed", f"{summary}; first: {first}")
        return summary


def feed_next(node: Node, job_id: str) -> None:
    """A job or chunk ended here, a slot freed: arrays waiting for room are fed now, not at
    the next sweep. A failure only delays them (the sweeper feeds too)."""
    try:
        node.after_item(job_id)
    except Exception as exc:
        log.warning("%s: feeding its array failed (the sweeper will): %s", job_id, exc)


# -- the worker's life: Celery's signals, so the rest of worker/ needs no Celery import --------


def on_worker_ready(fn: Callable[[], None]) -> None:
    """Call ``fn`` once the pool has forked (no thread crosses a fork)."""
    worker_ready.connect(lambda **_: fn(), weak=False)


def on_worker_shutting_down(fn: Callable[[], None]) -> None:
    """Call ``fn`` when a warm shutdown begins (inside a signal handler: keep it short)."""
    worker_shutting_down.connect(lambda **_: fn(), weak=False)


def on_worker_shutdown(fn: Callable[[], None]) -> None:
    """Call ``fn`` as the worker exits cleanly."""
    worker_shutdown.connect(lambda **_: fn(), weak=False)


def busy_slots() -> int:
    """Tasks this worker's pool runs now (read in the main process: the node's metrics)."""
    from celery.worker import state

    return len(state.active_requests)
