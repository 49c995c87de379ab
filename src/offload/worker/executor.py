"""Running one job attempt: a short sequence of named steps, free of Celery.

``execute`` is called for every delivery of a job message. Delivery is at least once, so it
first claims a new attempt in the job record, which only a ``queued`` job gives: a delivery of
a finished job, or of one another attempt holds (a duplicate message), is acknowledged without
running. The attempt holds a lease while it runs (:mod:`offload.worker.lease`); if its worker
dies, the sweeper brings the job back (:mod:`offload.broker.sweeper`). How it ended is
recorded by :mod:`offload.worker.endings`, fenced by the attempt, journaled when Redis is away.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable

import redis

from offload.broker.status import JobStatus, Reason
from offload.errors import BrokerError, CacheError, ForgedJob
from offload.spec import JobSpec, format_memory
from offload.worker import deliver, engine, fanin, staging, trust
from offload.worker.admission import take_room
from offload.worker.endings import Recorder, retries_used
from offload.worker.fetching import Fetched, resolve_uris, spool_dir
from offload.worker.gpus import GpuLease, GpusBusy
from offload.worker.identical import Identical
from offload.worker.lease import LeaseKeeper
from offload.worker.logsink import LogForwarder
from offload.worker.node import CacheHit, HandBack, Node, Outcome, Parked, Superseded
from offload.worker.runtime import (
    ContainerRequest,
    EngineUnavailable,
    Exit,
    ImageMissing,
    StartFailed,
)

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between cancel checks while a container runs


def execute(node: Node, job_id: str) -> JobStatus | None:
    """Run one delivery of ``job_id``; returns the status it ended in (None: nothing to do)."""
    prev, attempt = node.records.begin_attempt(job_id, node.name, os.getpid())
    if prev is None:
        log.warning("job %s has no record; dropping the message", job_id)
        return None
    if prev is not JobStatus.QUEUED:  # finished, waiting, or held by a live attempt
        log.info("job %s is %s; acknowledging this delivery without running", job_id, prev)
        return None
    if attempt > 1:  # an earlier attempt's container may remain on this engine
        with contextlib.suppress(EngineUnavailable):  # the attempt hands the job back
            removed = node.runtime.remove_job_containers(job_id)
            if removed:
                log.warning("job %s: removed earlier attempts' containers %s", job_id, removed)
    # The node's running set and the lease follow the record: begin_attempt put the job
    # there, the attempt's last transition takes it out (same atomic calls).
    record = node.records.get(job_id)
    return Attempt(node, job_id, attempt, record.spec).run()


class Attempt:
    def __init__(self, node: Node, job_id: str, attempt: int, spec: JobSpec) -> None:
        self.node, self.job_id, self.attempt, self.spec = node, job_id, attempt, spec
        self.container: str | None = None
        self.workspace: staging.Workspace | None = None
        self.timings: dict[str, float] = {}
        self.identical = Identical(node, job_id, attempt)  # memo and in-flight claim
        self.forwarder: LogForwarder | None = None
        self.t_start = 0.0
        self.gpu_lease: GpuLease | None = None
        self.fetched = Fetched()  # input URIs' content ids, by input name
        self.delivery = deliver.Delivery()
        self.keeper = LeaseKeeper(node.records, job_id, attempt)
        self.rec = Recorder(
            node.records,
            node.journal,
            node.requeue,
            job_id,
            attempt,
            spec,
            retries_used(node.records, job_id),
            node.classes,
            node.key,
            node.max_losses,
        )

    @property
    def ident(self) -> tuple[str, int]:
        return self.job_id, self.attempt

    def run(self) -> JobStatus:
        """Run the steps, then record how the attempt ended.

        One way out: everything the attempt holds — its lease, its room, its limit permits,
        its workspace, its GPUs, its container — is taken on ``held`` as it is acquired and given
        back, in reverse, however the steps end (an outcome, a cancel, a lost lease, a broker
        outage, a crash of a step, the process being stopped), before the end is recorded.
        The claim on identical jobs in flight goes last, once the end and memo are written.
        """
        with contextlib.ExitStack() as claim:
            claim.callback(self.identical.release)
            with contextlib.ExitStack() as held:
                held.enter_context(self.keeper)
                end = self.steps(held)
            return end()

    def steps(self, held: contextlib.ExitStack) -> Callable[[], JobStatus]:
        """The attempt's steps; returns how to record their end (called once ``held`` is
        released). A broker outage is raised: with Redis away there is nothing to record —
        the lease runs out and the sweeper queues the job again once the broker is back."""
        try:
            self.verify()
            self.check_cancel()
            self.check_fits()
            take_room(self.node, self.job_id, self.attempt, self.spec.resources, held, self.check)
            self.check_limits(held)
            self.stage(held)
            self.start(held)
            outputs = self.finish(self.wait())
        except CacheHit as hit:
            source = deliver.store_source(self.node.store, self.node.work_dir)
            self.deliver(hit.memo.outputs, source)
            return functools.partial(
                self.rec.record,
                JobStatus.SUCCEEDED,
                outputs=hit.memo.outputs,
                exit_code=0,
                cache_hit=hit.memo.job_id,
                timings=self.timings,
                fetched=self.fetched.ids,
                **self.delivery.fields(),
            )
        except Outcome as o:
            return functools.partial(
                self.rec.end, o.status, o.reason, o.message, o.exit_code, self.timings
            )
        except HandBack as hb:
            return functools.partial(self.rec.requeue, hb.reason, hb.message)
        except EngineUnavailable as exc:  # the platform's fault: no retry spent
            why = f"node {self.node.name}: {exc}; queued again"
            return functools.partial(self.rec.requeue, Reason.ENGINE_LOST, why)
        except Parked:
            return lambda: JobStatus.WAITING
        except Superseded:
            log.warning("job %s attempt %d: no longer current; stopped", *self.ident)
            return functools.partial(self.node.records.status, self.job_id)
        except BrokerError:
            raise
        except redis.RedisError as exc:  # a Redis call no part translated: an outage as well
            raise BrokerError(f"broker (Redis) error: {exc}") from exc
        except Exception as exc:
            log.exception("job %s attempt %d: worker error", self.job_id, self.attempt)
            why = f"{type(exc).__name__}: {exc}"
            return functools.partial(
                self.rec.end, JobStatus.FAILED, Reason.WORKER_ERROR, why, None, self.timings
            )
        return functools.partial(self.succeed, outputs)

    def succeed(self, outputs: dict[str, str]) -> JobStatus:
        status = self.rec.record(
            JobStatus.SUCCEEDED,
            outputs=outputs,
            exit_code=0,
            timings=self.timings,
            **self.delivery.fields(),
        )
        if status is JobStatus.SUCCEEDED:
            self.identical.remember(outputs)
        return status

    # -- steps -----------------------------------------------------------------------------

    def verify(self) -> None:
        """Run only what a key holder submitted (:mod:`offload.worker.trust`); from here on
        ``self.spec`` holds the secrets in clear, in memory only."""
        try:
            self.spec = trust.verify(self.node, self.job_id, self.spec)
        except ForgedJob as exc:
            log.error("job %s refused, not run: %s", self.job_id, exc)
            raise Outcome(JobStatus.FAILED, Reason.FORGED, f"refused, not run: {exc}") from None

    def check_cancel(self) -> None:
        if self.node.records.cancel_requested(self.job_id):
            raise Outcome(JobStatus.CANCELLED, Reason.CANCELLED, "cancelled")

    def check(self) -> None:
        """Stop a wait (for room): the job was cancelled, or given to another attempt."""
        if self.keeper.lost.is_set():
            raise Superseded()
        self.check_cancel()

    def check_limits(self, held: contextlib.ExitStack) -> None:
        """A permit of every concurrency limit the job's labels fall under, or the job waits
        (so does a job of a held class) and its slot goes back (:mod:`offload.broker.limits`).
        The permits go back once the container is gone (whatever ``enter`` took, even if it
        failed half-way: ``leave`` returns only this attempt's)."""
        limits = self.node.limits
        if limits is None:
            return
        held.callback(limits.leave, self.job_id, self.attempt, self.spec.labels)
        verdict = limits.enter(self.job_id, self.attempt, self.spec.labels)
        if verdict == "parked":
            raise Parked()
        if verdict == "fenced":
            raise Superseded()

    def check_fits(self) -> None:
        why = self.node.capacity.can_run(self.spec.resources)
        if why:
            raise Outcome(
                JobStatus.FAILED, Reason.UNSCHEDULABLE, f"node {self.node.name}: job {why}"
            )

    def stage(self, held: contextlib.ExitStack) -> None:
        t0 = time.monotonic()
        try:
            digest = self.node.runtime.ensure_image(self.spec.image)
        except ImageMissing as exc:
            raise Outcome(JobStatus.FAILED, Reason.IMAGE_NOT_FOUND, str(exc)) from None
        if self.spec.uris():
            spool = spool_dir(self.node.work_dir, self.job_id, self.attempt)
            held.callback(shutil.rmtree, spool, ignore_errors=True)
            self.spec, self.fetched = resolve_uris(self.node, self.spec, spool)  # by content
        self.identical.check(self.spec, digest)  # CacheHit, or Parked behind an identical job
        uid = int(self.node.user.split(":")[0]) if self.node.user[:1].isdigit() else None
        try:
            folders = fanin.array_inputs(self.node, self.spec)  # every item's output
        except ForgedJob as exc:
            raise Outcome(JobStatus.FAILED, Reason.FORGED, f"refused, not run: {exc}") from None
        try:
            self.workspace = staging.prepare(
                self.node.work_dir,
                self.job_id,
                self.attempt,
                self.spec,
                self.node.store,
                uid,
                self.fetched.files,
                folders,
            )
            held.callback(self.workspace.remove)
        except staging.InputMissing as exc:
            raise Outcome(JobStatus.FAILED, Reason.INPUT_MISSING, str(exc)) from None
        except CacheError as exc:
            raise Outcome(
                JobStatus.FAILED, Reason.INPUT_MISSING, f"input unreadable: {exc}"
            ) from None
        self.timings["staging"] = time.monotonic() - t0

    def start(self, held: contextlib.ExitStack) -> None:
        assert self.workspace is not None
        res = self.spec.resources
        if res.gpus:  # GPUs of its own, or none: never a GPU another job runs on
            if self.node.gpus is None:
                why = f"node {self.node.name} does not assign GPUs"
                raise Outcome(JobStatus.FAILED, Reason.GPU_UNAVAILABLE, why)
            try:
                self.gpu_lease = self.node.gpus.acquire(
                    res.gpus,
                    holder=f"job={self.job_id} attempt={self.attempt}",
                    in_use=self.node.runtime.gpus_in_use,
                )
                held.callback(self.gpu_lease.release)  # after the container is gone
            except GpusBusy as exc:
                why = f"node {self.node.name}: {exc}; queued again"
                raise HandBack(Reason.GPU_UNAVAILABLE, why) from None
        gpus = self.gpu_lease.uuids if self.gpu_lease is not None else ()
        req = ContainerRequest(
            job_id=self.job_id,
            attempt=self.attempt,
            image=self.spec.image,
            command=self.spec.command,
            env=staging.job_env(self.job_id, self.spec),
            mounts=self.workspace.mounts(),
            cpu=res.cpu,
            memory=res.memory,
            gpus=gpus,
            network=self.spec.network,
            user=self.node.user,
            pids_limit=self.node.pids_limit,
            tmpfs_size=self.node.tmpfs_size,
            labels={f"offload.label.{k}": v for k, v in self.spec.labels.items()},
            node=self.node.name,
            cluster=self.node.cluster,
        )
        runtime = self.node.runtime
        try:
            self.container = runtime.create(req)
            held.callback(self.remove_container)
            moved = self.node.records.transition(
                self.job_id,
                JobStatus.RUNNING,
                attempt=self.attempt,
                container=self.container,
                started_at=time.time(),
                gpus=",".join(gpus),
                fetched=self.fetched.ids,
            )
            if not moved:  # fenced: the job was given to another attempt meanwhile
                raise Superseded()
            self.forwarder = LogForwarder(self.node.records, self.job_id)
            self.rec.last_lines = self.forwarder.tail
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
            if time.monotonic() >= deadline:  # a deadline, even when the engine hangs
                killed = engine.kill(runtime, self.container)
                raise Outcome(
                    JobStatus.TIMED_OUT,
                    Reason.TIMEOUT,
                    f"ran longer than its timeout of {self.spec.timeout:g}s and was killed"
                    + ("" if killed else " (its engine did not answer: removed once it does)"),
                )
            if self.keeper.lost.is_set():  # the sweeper gave the job to another attempt
                engine.kill(runtime, self.container, 0)
                raise Superseded()
            if self.cancel_requested():
                engine.kill(runtime, self.container)
                raise Outcome(JobStatus.CANCELLED, Reason.CANCELLED, "cancelled while running")
        self.timings["running"] = time.monotonic() - self.t_start
        return exit_

    def finish(self, exit_: Exit) -> dict[str, str]:
        assert self.workspace is not None
        mem = self.spec.resources.memory
        if exit_.engine_lost:  # stopped by its engine, not by its program: not the job's fault
            why = f"node {self.node.name}: exited with code {exit_.code}, {exit_.engine_lost}"
            raise HandBack(Reason.ENGINE_LOST, f"{why}; queued again")
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
        try:
            if not self.node.records.transition(
                self.job_id, JobStatus.UPLOADING, attempt=self.attempt
            ):
                raise Superseded()
        except BrokerError:
            pass  # Redis is away: upload all the same; the outcome is journaled
        self.fetched.wait_sealed()  # the inputs fetched for it are in the store for the next
        try:
            outputs = staging.collect(self.workspace, self.node.store)
        except staging.OutputRejected as exc:
            raise Outcome(JobStatus.FAILED, Reason.OUTPUT_REJECTED, str(exc), 0) from None
        self.deliver(outputs, deliver.workspace_source(self.workspace.outputs))
        self.timings["uploading"] = time.monotonic() - t0
        return outputs

    def deliver(self, outputs: dict[str, str], source: deliver.Source) -> None:
        """Outputs to ``spec.deliver`` (a failure is recorded on the job, never fails it)."""
        if self.spec.deliver is not None:
            t0 = time.monotonic()
            self.delivery = deliver.run(
                self.node.deliverer, self.job_id, self.spec, outputs, source
            )
            self.timings["delivering"] = time.monotonic() - t0

    # -- endings ---------------------------------------------------------------------------

    def drain_logs(self) -> None:
        if self.container is not None and self.forwarder is not None:
            self.node.runtime.finish_logs(self.container, 5)
            self.forwarder.flush()

    def cancel_requested(self) -> bool:
        try:
            return self.node.records.cancel_requested(self.job_id)
        except BrokerError:  # Redis away: nobody can have asked meanwhile; keep running
            return False

    def remove_container(self) -> None:
        """Drain its logs and remove it (a failure is logged: the reaper removes it later)."""
        if self.container is None:
            return
        self.drain_logs()
        try:
            self.node.runtime.remove(self.container)
        except EngineUnavailable as exc:
            log.warning("job %s: container %s stays until its engine answers (%s)",
                        self.job_id, self.container[:12], exc)  # fmt: skip
        except Exception:
            log.exception("job %s: could not remove container %s", self.job_id, self.container)
