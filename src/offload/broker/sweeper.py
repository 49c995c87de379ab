"""The sweeper: brings back work whose owner died, wherever it died.

Run by every worker's heartbeat thread and by the autoscaler loop, every
``Settings.sweep_interval`` seconds; a lock (``SET NX PX``) lets one of them sweep at a time.
One pass, on Redis server time:

1. **Broker outage?** When the previous sweep is older than a lease (Redis was away, or no
   sweeper ran), no lease is judged this pass: every lease is extended to ``now + lease_ttl``
   so the workers, reconnecting, can renew theirs. An outage is not a death.
2. **Expired leases.** A job whose current attempt's lease expired (its worker or pool process
   died, or was cut off for longer than a lease) is put back to ``queued`` and published again
   (fenced by that attempt; reason ``node_lost``, spending no retry). After
   ``max_node_losses`` such losses it ends ``failed`` (``node_lost``) instead: a job that
   kills its worker every time (a poison job) must not take the fleet down with it.
3. **Lost messages.** A job ``queued`` for longer than ``lost_message_grace`` whose message is
   in no queue and not unacknowledged (a Redis crash lost it, or a publisher died between
   writing the record and publishing) is published again. So is one whose only message was
   delivered (kombu's unacknowledged entry) longer than the grace ago without the job
   starting: the worker that took it died, or lost its broker (a failover), before its
   first step; that stale entry is dropped. A duplicate message is harmless: only a
   ``queued`` job starts an attempt.
4. **Stale deliveries.** kombu's unacknowledged entries of jobs that are finished (or whose
   record expired) are dropped, so they neither count as work nor come back a day later.
5. **Lost nodes.** A node silent for ``lost_after`` seconds is deregistered once it holds no
   job (its jobs leave it through step 2).
6. **Waiting jobs.** A job ``waiting`` for longer than ``lost_message_grace`` whose parents
   have ended is released or failed (:meth:`~offload.broker.pipeline.Pipeline.check_waiting`):
   a release that a crash between a parent's end and its children's release missed.
7. **Permits and holds.** A concurrency permit whose attempt is no longer active is returned
   and the limit's waiters queued (:meth:`~offload.broker.limits.Limits.sweep`).
8. **The archive.** Up to ``archive_batch`` jobs ended ``archive_after`` seconds ago leave
   Redis for one archive segment, and segments older than ``record_ttl`` are pruned
   (:mod:`offload.broker.archive`) — by a sweeper that has an archive store (the workers').
9. **Arrays.** Each array with items not fed yet is fed as its class has room, and an array
   whose submit died half way (``pending`` for long) is deleted (:mod:`offload.broker.feeder`).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import redis

from offload.broker import keys, scripts
from offload.broker.archive import ArchiveReport
from offload.broker.core import Broker
from offload.broker.limits import Limits
from offload.broker.pipeline import Pipeline
from offload.broker.publish import move_overdue, publish
from offload.broker.queues import UNACKED, UNACKED_INDEX, message_job, message_jobs, queue_lists
from offload.broker.recovery import requeue
from offload.broker.routing import node_queue_messages, registered_nodes
from offload.broker.status import ACTIVE, JobStatus
from offload.errors import JobNotFound
from offload.spec.arrays import chunk_items

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    extended: int = 0  # leases extended after an outage
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # poison jobs
    republished: list[str] = field(default_factory=list)
    dropped_deliveries: int = 0
    deregistered: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)  # waiting jobs released or failed
    retried: list[str] = field(default_factory=list)  # delayed retries published when due
    moved: list[str] = field(default_factory=list)  # out of node queues (locality grace)
    fed: int = 0  # arrays' items fed to their queues
    archived: ArchiveReport = field(default_factory=ArchiveReport)  # not worth a warning

    def __bool__(self) -> bool:
        return bool(
            self.settled
            or self.retried
            or self.moved
            or self.extended
            or self.requeued
            or self.failed
            or self.republished
            or self.dropped_deliveries
            or self.deregistered
        )


class Sweeper:
    def __init__(self, broker: Broker) -> None:
        settings = broker.settings
        self.records, self.registry, self.app = broker.records, broker.nodes, broker.app
        self.r: redis.Redis = broker.redis
        self.queues = [c.name for c in settings.classes]
        self.lease_ttl = settings.lease_ttl
        self.grace = settings.lost_message_grace
        self.locality_grace = settings.locality_grace
        self.max_losses = settings.max_node_losses
        self.interval = settings.sweep_interval
        self.lock_ms = int(max(settings.sweep_interval, 1.0) * 4000)
        self.pipeline: Pipeline = broker.pipeline
        self.limits: Limits = broker.limits
        self.chunks = broker.chunks
        self.broker = broker
        self._extend = self.r.register_script(scripts.EXTEND_ALL)
        self._release = self.r.register_script(scripts.RELEASE_LOCK)

    def now(self) -> float:
        sec, usec = self.r.time()
        return float(sec) + usec / 1e6

    def sweep(self) -> SweepReport | None:
        """One pass; None when another process sweeps now or swept less than an interval ago.
        Anyone may call it as often as they like: the cluster sweeps about once an interval."""
        last = self.r.get(keys.SWEEPER_LAST)
        if last is not None and self.now() - float(last) < self.interval * 0.9:
            return None
        token = uuid.uuid4().hex
        if not self.r.set(keys.SWEEPER_LOCK, token, nx=True, px=self.lock_ms):
            return None
        try:
            return self._sweep()
        finally:
            self._release(keys=[keys.SWEEPER_LOCK], args=[token])

    def _sweep(self) -> SweepReport:
        report = SweepReport()
        now = self.now()
        last = self.r.getset(keys.SWEEPER_LAST, repr(now))
        if last is None or now - float(last) > self.lease_ttl:
            report.extended = int(self._extend(keys=[keys.LEASES], args=[self.lease_ttl]))
            if report.extended:
                log.warning(
                    "no sweep for %s: broker outage? %d lease(s) extended by %gs, none expired",
                    "ever" if last is None else f"{now - float(last):.0f}s",
                    report.extended,
                    self.lease_ttl,
                )
            return report
        self.expire_leases(now, report)
        report.retried = self.publish_due_retries(now)
        report.moved = move_overdue(self.app, self.records, self.locality_grace, now)
        self.republish_lost(now, report)
        report.dropped_deliveries = self.drop_stale_deliveries()
        report.deregistered = self.forget_lost_nodes(now)
        report.settled = self.pipeline.check_waiting(now - self.grace)
        report.settled += self.limits.sweep(self.queues, now - self.grace)  # permits, holds
        report.fed = self.feed()
        if report:
            log.warning("sweep: %s", report)
        report.archived = self.archive(now)
        return report

    # -- 9. arrays ---------------------------------------------------------------------------

    def feed(self) -> int:
        """Feed every array with items left as its class has room (a worker feeds an
        item's array as it ends; this pass is for the rest: a new node, a crash, scaling),
        and delete arrays whose submit never finished (:mod:`offload.broker.feeder`)."""
        try:
            return self.broker.feeder.feed_all()
        except Exception:
            log.exception("feeding arrays failed; tried again next sweep")
            return 0

    # -- 8. the archive -----------------------------------------------------------------------

    def archive(self, now: float) -> ArchiveReport:
        """The archiver's passes (a segment each) while a full segment's worth is due, for
        at most half a sweep interval: it keeps up with jobs ending faster than a segment a
        sweep (an array's tiny items, hundreds a second). A failure (the store unreachable)
        is retried next sweep, and leaves every job readable where it was."""
        total = ArchiveReport()
        deadline = time.monotonic() + max(0.5, self.interval / 2)
        archive = self.records.archive
        while True:
            try:
                done = archive.run(now)
            except Exception:
                log.exception("archiving failed; retried next sweep")
                break
            for name in ("archived", "segments", "pruned", "gone"):
                setattr(total, name, getattr(total, name) + getattr(done, name))
            if done.archived + done.gone < archive.batch or time.monotonic() >= deadline:
                break
        if total.archived or total.pruned:
            log.info("archive: %s", total)
        return total

    # -- 2. expired leases ----------------------------------------------------------------

    def expire_leases(self, now: float, report: SweepReport) -> None:
        for job_id in self.r.zrangebyscore(keys.LEASES, "-inf", now):
            job_id = str(job_id)
            try:
                rec = self.records.get(job_id)
            except JobNotFound:
                self.r.zrem(keys.LEASES, job_id)
                continue
            if rec.status not in ACTIVE or not rec.node:
                self.r.zrem(keys.LEASES, job_id)
                continue
            what = f"attempt {rec.attempt} on node {rec.node} stopped renewing its lease"
            outcome = requeue(
                self.records,
                self.app,
                job_id,
                node=rec.node,
                attempt=rec.attempt,
                message=what,
                max_losses=self.max_losses,
            )
            if outcome is JobStatus.QUEUED:
                report.requeued.append(job_id)
            elif outcome is JobStatus.FAILED:
                report.failed.append(job_id)

    # -- delayed retries --------------------------------------------------------------------

    def publish_due_retries(self, now: float) -> list[str]:
        """Publish the queued jobs whose retry backoff is over (ZREM decides who does it)."""
        sent = []
        for job_id in self.r.zrangebyscore(keys.RETRIES, "-inf", now):
            job_id = str(job_id)
            if not self.r.zrem(keys.RETRIES, job_id):
                continue  # another sweeper took it
            try:
                rec = self.records.get(job_id)
            except JobNotFound:
                continue
            if rec.status is JobStatus.QUEUED:
                publish(self.app, rec, f"{job_id}.d{rec.attempt + 1}")
                sent.append(job_id)
        return sent

    # -- 3. lost messages -------------------------------------------------------------------

    def republish_lost(self, now: float, report: SweepReport) -> None:
        stale = [str(j) for j in self.r.zrangebyscore(keys.QUEUED, "-inf", now - self.grace)]
        if not stale:
            return
        present, delivered = self.jobs_with_a_message(now - self.grace)
        for job_id in stale:
            try:
                rec = self.records.get(job_id)
            except JobNotFound:
                self.r.zrem(keys.QUEUED, job_id)
                continue
            if rec.status is not JobStatus.QUEUED:
                self.r.zrem(keys.QUEUED, job_id)
                continue
            self.r.zadd(keys.QUEUED, {job_id: now})  # looked at now; again after the grace
            if job_id in present:
                continue
            for tag in delivered.get(job_id, ()):  # taken long ago by a worker that never began
                self.r.pipeline().hdel(UNACKED, tag).zrem(UNACKED_INDEX, tag).execute()
            publish(self.app, rec, f"{job_id}.p{uuid.uuid4().hex[:8]}")
            log.warning("job %s: queued with no live message; published again", job_id)
            report.republished.append(job_id)

    def jobs_with_a_message(self, delivered_before: float) -> tuple[set[str], dict[str, list[str]]]:
        """The jobs with a message in a queue or delivered since ``delivered_before``; and,
        by job, the delivery tags of messages delivered before it (kombu's unacked index
        holds each delivery's time). A chunk's message (a batched array's) stands for each
        of its items; delivered long ago, it still does while a worker holds the chunk's
        lease (its items wait their turn in its warm container)."""
        present: set[str] = set()
        for queue in self.queues:
            for name in queue_lists(queue):
                present.update(message_jobs(self.r.lrange(name, 0, -1)))
        for _, _, j in node_queue_messages(self.r, registered_nodes(self.r)):
            present.update(chunk_items(j) or [j])  # a chunk routed to a node: its items
        since = {str(t) for t in self.r.zrangebyscore(UNACKED_INDEX, delivered_before, "+inf")}
        old: dict[str, list[str]] = {}
        running: dict[str, str] = {}  # a chunk delivered long ago -> its delivery tag
        for tag, raw in self.r.hgetall(UNACKED).items():
            job_id = message_job(raw)
            if job_id is None:
                continue
            items = chunk_items(job_id)
            if str(tag) in since:
                present.update(items or [job_id])
            elif items:
                running[job_id] = str(tag)
            else:
                old.setdefault(job_id, []).append(str(tag))
        held = self.chunks.live(sorted(running))
        for chunk, tag in running.items():
            if chunk in held:
                present.update(chunk_items(chunk))
            else:
                for item in chunk_items(chunk):
                    old.setdefault(item, []).append(tag)
        return present, old

    # -- 4. stale deliveries ----------------------------------------------------------------

    def drop_stale_deliveries(self) -> int:
        """Drop kombu's unacknowledged entries of finished jobs (of chunks whose every item
        is finished)."""
        dropped = 0
        for tag, raw in self.r.hgetall(UNACKED).items():
            job_id = message_job(raw)
            if job_id is None:
                continue
            jobs = chunk_items(job_id) or [job_id]
            pipe = self.r.pipeline(transaction=False)
            for each in jobs:
                pipe.hget(keys.job(each), "status")
            if all(s is None or JobStatus(str(s)).terminal for s in pipe.execute()):
                pipe = self.r.pipeline()
                pipe.hdel(UNACKED, tag)
                pipe.zrem(UNACKED_INDEX, tag)
                pipe.execute()
                dropped += 1
        return dropped

    # -- 5. lost nodes ------------------------------------------------------------------------

    def forget_lost_nodes(self, now: float) -> list[str]:
        gone = []
        for node in self.registry.lost(now):
            if not node.running:
                self.registry.deregister(node.name)
                gone.append(node.name)
        return gone
