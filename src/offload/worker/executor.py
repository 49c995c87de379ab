"""Running one job attempt: a short sequence of named steps, free of Celery.

``execute`` is called for every delivery of a job message. Delivery is at least once, so it
first claims a new attempt in the job record: a finished job is acknowledged without running
again; a job whose previous attempt died with its worker runs again after that attempt's
container is removed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from offload.broker.nodes import NodeRegistry
from offload.broker.records import JobRecords
from offload.broker.status import ACTIVE, JobStatus, Reason
from offload.cache.actions import ActionCache, Memo, action_key
from offload.cache.store import Store
from offload.errors import CacheError
from offload.spec import JobSpec, format_memory
from offload.worker import staging
from offload.worker.capacity import Capacity
from offload.worker.docker_runtime import ImageMissing, StartFailed
from offload.worker.logsink import LogForwarder
from offload.worker.recovery import held_elsewhere
from offload.worker.runtime import ContainerRequest, Exit, Runtime

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between cancel checks while a container runs
RETRYABLE = {Reason.EXIT_CODE, Reason.OOM_KILLED, Reason.TIMEOUT, Reason.START_FAILED}


@dataclass
class Node:
    """What an executor needs from the node it runs on."""

    name: str
    capacity: Capacity
    records: JobRecords
    store: Store
    runtime: Runtime
    work_dir: Path
    user: str
    pids_limit: int
    tmpfs_size: str
    requeue: Callable[[str, JobSpec, int], None]
    memo: ActionCache | None = None
    registry: NodeRegistry | None = None  # the node registry: running set, live attempts


class CacheHit(Exception):
    """An earlier identical job's outputs are still fetchable: no container needed."""

    def __init__(self, memo: Memo) -> None:
        super().__init__(memo.job_id)
        self.memo = memo


class Outcome(Exception):
    """Ends an attempt early with a terminal status and reason."""

    def __init__(
        self, status: JobStatus, reason: Reason, message: str, exit_code: int | None = None
    ):
        super().__init__(message)
        self.status, self.reason, self.message, self.exit_code = status, reason, message, exit_code


def execute(node: Node, job_id: str) -> JobStatus | None:
    """Run one delivery of ``job_id``; returns the status it ended in (None: nothing to do)."""
    # -- node registry: a stale delivery of a job a live attempt holds is not run again
    if node.registry is not None:
        why = held_elsewhere(node.registry, node.records, job_id, node.name)
        if why:
            log.warning("job %s: %s; acknowledging this delivery without running", job_id, why)
            return None
    # --
    prev, attempt = node.records.begin_attempt(job_id, node.name)
    if prev is None:
        log.warning("job %s has no record; dropping the message", job_id)
        return None
    if prev.terminal:
        log.info("job %s already %s; acknowledging without running", job_id, prev)
        return None
    if prev in ACTIVE or attempt > 1:  # a dead attempt (here, or of a lost node) may remain
        removed = node.runtime.remove_job_containers(job_id)
        if prev in ACTIVE or removed:
            log.warning(
                "job %s: attempt %d follows a dead one; removed %s", job_id, attempt, removed
            )
    record = node.records.get(job_id)
    # -- node registry: the job is in this node's running set while the attempt runs
    if node.registry is None:
        return Attempt(node, job_id, attempt, record.spec).run()
    node.registry.job_started(node.name, job_id, os.getpid(), attempt)
    try:
        return Attempt(node, job_id, attempt, record.spec).run()
    finally:
        node.registry.job_finished(node.name, job_id)


class Attempt:
    def __init__(self, node: Node, job_id: str, attempt: int, spec: JobSpec) -> None:
        self.node, self.job_id, self.attempt, self.spec = node, job_id, attempt, spec
        self.container: str | None = None
        self.workspace: staging.Workspace | None = None
        self.timings: dict[str, float] = {}
        self.memo_key: str | None = None
        self.forwarder: LogForwarder | None = None
        self.t_start = 0.0

    def run(self) -> JobStatus:
        """Run the steps; the container and folder are gone before the end is recorded."""
        outputs: dict[str, str] = {}
        try:
            self.check_cancel()
            self.check_fits()
            self.stage()
            self.start()
            exit_ = self.wait()
            outputs = self.finish(exit_)
        except CacheHit as hit:
            self.cleanup()
            self.node.records.transition(
                self.job_id,
                JobStatus.SUCCEEDED,
                allowed_from=[JobStatus.STAGING],
                outputs=hit.memo.outputs,
                exit_code=0,
                cache_hit=hit.memo.job_id,
                timings=self.timings,
            )
            return JobStatus.SUCCEEDED
        except Outcome as o:
            self.cleanup()
            return self.end(o.status, o.reason, o.message, o.exit_code)
        except Exception as exc:
            log.exception("job %s attempt %d: worker error", self.job_id, self.attempt)
            self.cleanup()
            return self.end(JobStatus.FAILED, Reason.WORKER_ERROR, f"{type(exc).__name__}: {exc}")
        except BaseException:
            self.cleanup()
            raise
        self.cleanup()
        self.node.records.transition(
            self.job_id,
            JobStatus.SUCCEEDED,
            allowed_from=[JobStatus.UPLOADING],
            outputs=outputs,
            exit_code=0,
            timings=self.timings,
        )
        if self.node.memo is not None and self.memo_key is not None:
            self.node.memo.put(self.memo_key, outputs, self.job_id)
        return JobStatus.SUCCEEDED

    # -- steps -----------------------------------------------------------------------------

    def check_cancel(self) -> None:
        if self.node.records.cancel_requested(self.job_id):
            raise Outcome(JobStatus.CANCELLED, Reason.CANCELLED, "cancelled")

    def check_fits(self) -> None:
        why = self.node.capacity.can_run(self.spec.resources)
        if why:
            raise Outcome(
                JobStatus.FAILED, Reason.UNSCHEDULABLE, f"node {self.node.name}: job {why}"
            )

    def stage(self) -> None:
        t0 = time.monotonic()
        try:
            digest = self.node.runtime.ensure_image(self.spec.image)
        except ImageMissing as exc:
            raise Outcome(JobStatus.FAILED, Reason.IMAGE_NOT_FOUND, str(exc)) from None
        self.check_memo(digest)
        uid = int(self.node.user.split(":")[0]) if self.node.user[:1].isdigit() else None
        try:
            self.workspace = staging.prepare(
                self.node.work_dir, self.job_id, self.attempt, self.spec, self.node.store, uid
            )
        except staging.InputMissing as exc:
            raise Outcome(JobStatus.FAILED, Reason.INPUT_MISSING, str(exc)) from None
        except CacheError as exc:
            raise Outcome(
                JobStatus.FAILED, Reason.INPUT_MISSING, f"input unreadable: {exc}"
            ) from None
        self.timings["staging"] = time.monotonic() - t0

    def check_memo(self, digest: str) -> None:
        memo = self.node.memo
        if memo is None or not self.spec.cache:
            return
        self.memo_key = action_key(self.spec, digest)
        hit = memo.get(self.memo_key)
        if hit is None:
            return
        if all(self.node.store.has(oid) for oid in hit.outputs.values()):
            raise CacheHit(hit)
        memo.drop(self.memo_key)  # its outputs are gone: run the job again

    def start(self) -> None:
        assert self.workspace is not None
        res = self.spec.resources
        req = ContainerRequest(
            job_id=self.job_id,
            attempt=self.attempt,
            image=self.spec.image,
            command=self.spec.command,
            env=staging.job_env(self.job_id, self.spec),
            mounts=self.workspace.mounts(),
            cpu=res.cpu,
            memory=res.memory,
            gpus=res.gpus,
            network=self.spec.network,
            user=self.node.user,
            pids_limit=self.node.pids_limit,
            tmpfs_size=self.node.tmpfs_size,
            labels={f"offload.label.{k}": v for k, v in self.spec.labels.items()},
        )
        runtime = self.node.runtime
        try:
            self.container = runtime.create(req)
            moved = self.node.records.transition(
                self.job_id,
                JobStatus.RUNNING,
                allowed_from=[JobStatus.STAGING],
                container=self.container,
                started_at=time.time(),
            )
            if not moved:  # cancelled meanwhile
                raise Outcome(JobStatus.CANCELLED, Reason.CANCELLED, "cancelled before start")
            self.forwarder = LogForwarder(self.node.records, self.job_id)
            runtime.start(self.container, self.forwarder.write)
        except StartFailed as exc:
            reason = Reason.GPU_UNAVAILABLE if exc.gpu else Reason.START_FAILED
            raise Outcome(JobStatus.FAILED, reason, str(exc)) from None
        self.t_start = time.monotonic()

    def wait(self) -> Exit:
        assert self.container is not None
        runtime = self.node.runtime
        deadline = self.t_start + self.spec.timeout
        while True:
            exit_ = runtime.wait(self.container, min(POLL, max(0.0, deadline - time.monotonic())))
            if exit_ is not None:
                break
            if time.monotonic() >= deadline:
                runtime.kill(self.container)
                runtime.wait(self.container, 30)
                raise Outcome(
                    JobStatus.TIMED_OUT,
                    Reason.TIMEOUT,
                    f"ran longer than its timeout of {self.spec.timeout:g}s and was killed",
                )
            if self.node.records.cancel_requested(self.job_id):
                runtime.kill(self.container)
                runtime.wait(self.container, 30)
                raise Outcome(JobStatus.CANCELLED, Reason.CANCELLED, "cancelled while running")
        self.timings["running"] = time.monotonic() - self.t_start
        return exit_

    def finish(self, exit_: Exit) -> dict[str, str]:
        assert self.workspace is not None
        mem = self.spec.resources.memory
        if exit_.oom_killed:
            raise Outcome(
                JobStatus.FAILED,
                Reason.OOM_KILLED,
                f"killed for using more than its memory limit of {format_memory(mem)}",
                exit_.code,
            )
        if exit_.code != 0:
            raise Outcome(
                JobStatus.FAILED, Reason.EXIT_CODE, f"exited with code {exit_.code}", exit_.code
            )
        t0 = time.monotonic()
        self.node.records.transition(
            self.job_id, JobStatus.UPLOADING, allowed_from=[JobStatus.RUNNING]
        )
        try:
            outputs = staging.collect(self.workspace, self.node.store)
        except staging.OutputRejected as exc:
            raise Outcome(JobStatus.FAILED, Reason.OUTPUT_REJECTED, str(exc), 0) from None
        self.timings["uploading"] = time.monotonic() - t0
        return outputs

    # -- endings ---------------------------------------------------------------------------

    def drain_logs(self) -> None:
        if self.container is not None and self.forwarder is not None:
            self.node.runtime.finish_logs(self.container, 5)
            self.forwarder.flush()

    def end(
        self, status: JobStatus, reason: Reason, message: str, exit_code: int | None = None
    ) -> JobStatus:
        if reason in RETRYABLE and self.attempt <= self.spec.retries:
            moved = self.node.records.transition(
                self.job_id,
                JobStatus.QUEUED,
                allowed_from=ACTIVE,
                reason=reason.value,
                message=f"attempt {self.attempt} {message}; retrying",
                exit_code=exit_code,
            )
            if moved:
                self.node.requeue(self.job_id, self.spec, self.attempt)
                return JobStatus.QUEUED
        self.node.records.transition(
            self.job_id,
            status,
            allowed_from=ACTIVE,
            reason=reason.value,
            message=message,
            exit_code=exit_code,
            timings=self.timings,
        )
        return status

    def cleanup(self) -> None:
        if self.container is not None:
            self.drain_logs()
            try:
                self.node.runtime.remove(self.container)
            except Exception:
                log.exception("job %s: could not remove container %s", self.job_id, self.container)
        if self.workspace is not None:
            self.workspace.remove()
