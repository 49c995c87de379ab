"""The :class:`Broker`: the one object every process of offload gets.

Built from :class:`~offload.config.Settings` at a process's edge (the CLI, the worker's entry
point, ``offload up``), then handed to whatever needs the broker: the producer's
:class:`~offload.producer.Client`, the worker's node, the sweeper, the autoscaler, the
scheduler. It owns the Redis client and the Celery app and builds, once and lazily, every part
on top of them — nothing outside ``broker/`` builds a part or holds its own Redis client.
Parts are built on first use, so a command that only reads a record never imports Celery.

A Broker is not shared across threads that block on Redis or Celery connections for long
(the worker's heartbeat thread builds one of its own); pool processes build theirs after the
fork.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis

from offload.broker import keys
from offload.broker.archive import ArchiveStore
from offload.broker.arrays import ArrayInfo, Arrays
from offload.broker.chunks import ChunkLeases
from offload.broker.connection import broker_error, redis_client
from offload.broker.depths import ClassWork, read_depths
from offload.broker.highwater import RedisUsage, job_bytes, read_usage
from offload.broker.inflight import InFlight
from offload.broker.limits import held_classes
from offload.broker.nodes import NodeRegistry
from offload.broker.records import JobRecord, JobRecords
from offload.broker.room import Room
from offload.broker.scaling import ClassStatus, read_status, write_status
from offload.broker.schedules import ScheduleStore
from offload.broker.stats import ClusterStats, read_stats
from offload.broker.status import JobStatus
from offload.config import Settings
from offload.errors import BrokerError, CapacityError

if TYPE_CHECKING:
    from celery import Celery

    from offload.broker.feeder import Feeder
    from offload.broker.limits import Limits
    from offload.broker.pipeline import Pipeline
    from offload.broker.sweeper import Sweeper
    from offload.spec import JobSpec

log = logging.getLogger(__name__)


class Broker:
    """Redis, the Celery app, and every part of the broker built on them, for one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        app: Celery | None = None,
        archive: ArchiveStore | None = None,
    ) -> None:
        """``client`` and ``app`` are for a process that has them already (a worker's pool
        process publishes through the worker's app); by default both are built on first use.
        ``archive``: where archived jobs are read from and (by the sweeper) written to
        (:mod:`offload.broker.archive`); also attachable later (:meth:`attach_archive`)."""
        self.settings = settings
        self._client = client
        self._app = app
        self._archive = archive
        # admission's last read of Redis's usage: (usage, when, bytes admitted since)
        self._admitted: tuple[RedisUsage, float, int] | None = None
        self._producer: Any = None  # the kombu producer submits send with (kept warm)

    def attach_archive(self, store: ArchiveStore) -> None:
        """Give this broker its archive store (composition roots: the client, the worker)."""
        self._archive = store
        if "records" in self.__dict__:
            self.records.archive.store = store

    @property
    def has_archive(self) -> bool:
        return self._archive is not None

    def __repr__(self) -> str:
        return f"Broker({self.settings.redis_url!r})"

    # -- what it owns --------------------------------------------------------------------

    @cached_property
    def redis(self) -> redis.Redis:
        """The process's Redis client. Outside ``broker/`` only the data tier's own
        Redis-backed indexes (memo, object index, s3:// import memo) are handed it."""
        return self._client if self._client is not None else redis_client(self.settings)

    @cached_property
    def app(self) -> Celery:
        """The Celery app (imported on first use: reading a record needs no Celery)."""
        from offload.broker.app import make_app
        from offload.broker.publish import bind_client

        app = self._app if self._app is not None else make_app(self.settings)
        bind_client(app, self.redis)  # routing reads Redis through this broker's client
        return app

    @cached_property
    def records(self) -> JobRecords:
        records = JobRecords.from_settings(self.redis, self.settings)
        records.archive.store = self._archive
        records.unfed = self.arrays  # an array's items not fed yet read as queued
        return records

    @cached_property
    def pipeline(self) -> Pipeline:
        from offload.broker.pipeline import Pipeline

        return Pipeline(self.records, lambda: self.app)  # Celery only once it publishes

    @cached_property
    def limits(self) -> Limits:
        from offload.broker.limits import Limits

        return Limits(self.records, self.pipeline.park, self.pipeline.resume)

    @cached_property
    def inflight(self) -> InFlight:
        return InFlight(self.redis)

    @cached_property
    def arrays(self) -> Arrays:
        return Arrays(self.redis, self.settings.record_ttl)

    @cached_property
    def feeder(self) -> Feeder:
        """Feeds arrays' items to their queues (:mod:`offload.broker.feeder`)."""
        from offload.broker.feeder import Feeder

        return Feeder(self)

    @cached_property
    def chunks(self) -> ChunkLeases:
        """Who runs each chunk of a batched array now (:mod:`offload.broker.chunks`)."""
        return ChunkLeases(self.redis, self.settings.lease_ttl)

    @cached_property
    def nodes(self) -> NodeRegistry:
        return NodeRegistry(self.redis, lost_after=self.settings.lost_after)

    @cached_property
    def room(self) -> Room:
        """The machines' rooms: what running attempts hold of CPUs, memory and GPUs."""
        return Room(self.redis)

    @cached_property
    def schedules(self) -> ScheduleStore:
        return ScheduleStore(self.redis)

    @cached_property
    def sweeper(self) -> Sweeper:
        from offload.broker.sweeper import Sweeper

        return Sweeper(self)

    # -- admission -------------------------------------------------------------------------

    def redis_usage(self) -> RedisUsage:
        """How full Redis is against its high-water mark (:mod:`offload.broker.highwater`)."""
        return JobRecords._run(read_usage, self.redis, self.settings)

    # A usage read this recent (seconds) admits work that fits with what this process
    # admitted since it was read; anything else, a refusal first of all, reads Redis again.
    ADMIT_STALE = 1.0

    def admit(self, jobs: int = 1, needed: int = 0) -> None:
        """Refuse new work (:class:`CapacityError`) while Redis is above its high-water mark,
        or when ``needed`` more bytes would take it there; workers, the sweeper and the
        archiver never ask, so what runs is recorded.

        Amortised: a read of Redis's usage less than :attr:`ADMIT_STALE` seconds old admits
        work that keeps it below the mark counting the bytes this broker admitted since, so a
        run of single submits asks Redis once a second, not once a job. What others write in
        that second is seen at the next read (Redis's own limit refuses the rest, and a
        refused write leaves nothing); a refusal is always decided on a fresh read."""
        now = time.monotonic()
        if self._admitted is not None:
            usage, at, since = self._admitted
            if now - at < self.ADMIT_STALE and not usage.full and usage.fits(since + needed):
                self._admitted = (usage, at, since + needed)
                return
        usage = self.redis_usage()
        if usage.full or not usage.fits(needed):
            self._admitted = None
            raise CapacityError(usage.refusal(jobs, needed))
        self._admitted = (usage, now, needed)

    # -- publishing ------------------------------------------------------------------------

    def submit(self, job_id: str, spec: JobSpec, resource_class: str) -> JobStatus:
        """Record a sealed job and queue it — or, with unfinished parents, leave it waiting
        (:mod:`offload.broker.pipeline`). A job that cannot be published leaves no record.

        A job without parents takes one round trip of its own (admission reads Redis about
        once a second: :meth:`admit`): its record, its route and its message — built by
        Celery and kombu with a producer this broker keeps, with kombu's ``task-sent`` event —
        in one transaction (:func:`offload.broker.publish.send_in`), so a job is never
        recorded without its message or sent without its record."""
        from offload.broker import routing
        from offload.broker.publish import decide, send, send_in

        self.admit(1, job_bytes(len(spec.encode())))
        if spec.parents():
            with self._refused_whole(1):
                return self.pipeline.submit(job_id, spec, resource_class)
        decision = decide(self.app, job_id, spec, resource_class)
        producer = self.producer()
        sent = False

        def route_and_message(pipe: Any, rec: JobRecord) -> None:
            nonlocal sent
            routing.record(pipe, job_id, decision)
            sent = send_in(pipe, self.app, rec, decision, producer)

        try:
            with self._refused_whole(1):
                rec = self.records.create_queued(job_id, spec, resource_class, route_and_message)
        except BrokerError:
            raise
        except Exception as exc:  # kombu's or Celery's, building the message: nothing written
            self.close_producer()
            raise BrokerError(f"could not queue the job: {exc}") from exc
        if sent:
            return JobStatus.QUEUED
        try:  # a kombu that cannot write into the transaction: the message after it
            batch = producer.batch() if hasattr(producer, "batch") else contextlib.nullcontext()
            with batch:  # the task and its task-sent event: one round trip
                send(self.app, rec, decision, producer=producer)
        except Exception as exc:
            self.close_producer()  # a producer that failed is not sent with again
            self.records.delete(job_id)
            if "maxmemory" in str(exc):
                raise CapacityError(self.redis_usage().refusal(1, refused=str(exc))) from exc
            raise BrokerError(f"could not queue the job: {exc}") from exc
        return JobStatus.QUEUED

    def submit_array(self, array: ArrayInfo, parts: Sequence[bytes]) -> ArrayInfo:
        """Record an array compactly, all or none — ``parts``: its item table, packed
        (:func:`offload.broker.arrays.pack`: each item's class and sealed spec, part ``n``
        holding items ``n * TABLE_PART`` on) — then feed its first items to the queue
        (:mod:`offload.broker.feeder`; the rest follow as their class has room).

        The array's record is written ``pending``, then its item table, then it is made
        ``active``: if Redis refuses any step (full, or gone) what was written is deleted and
        the error raised; if Redis dies mid-way the ``pending`` array reads as absent and
        the sweeper deletes it. Once active the array is there whole: a feed that fails
        now (Redis gone) is the sweeper's to do again. Returns the array as written."""
        self.admit(array.count, sum(len(part) + 100 for part in parts))
        info = dataclasses.replace(array, state="pending", parts=len(parts))
        with self._refused_whole(array.count):
            self.arrays.begin(info)
            try:
                self.arrays.write_table(info, parts)
                self.arrays.activate(info)
            except BaseException:
                with contextlib.suppress(Exception):  # gone with Redis: the sweeper deletes it
                    self.arrays.delete(info.id, info.parts)
                raise
        try:
            self.feeder.feed(info.id)
        except (BrokerError, redis.RedisError) as exc:
            log.warning("array %s: recorded; its items are fed once Redis answers (%s)",
                        info.id, exc)  # fmt: skip
        return dataclasses.replace(info, state="active")

    @contextlib.contextmanager
    def _refused_whole(self, jobs: int) -> Iterator[None]:
        """Redis refusing a write for want of memory is a :class:`CapacityError` too."""
        try:
            yield
        except BrokerError as exc:
            if "maxmemory" in str(exc) or "OOM" in str(exc):
                raise CapacityError(self.redis_usage().refusal(jobs, refused=str(exc))) from exc
            raise

    def publish(self, rec: JobRecord, task_id: str | None = None) -> str:
        """Send a queued job's message (routing decides the queue); the queue's name."""
        from offload.broker.publish import publish

        return publish(self.app, rec, task_id)

    def producer(self) -> Any:
        """The kombu producer this broker's submits send with, on a connection of this
        broker's own, made on first use and kept (closed by :meth:`close`).

        Not taken from the app's pool: kombu keeps its connection and producer pools in
        process-wide registries keyed by the broker URL (``kombu.pools``), shared by every
        Celery app of the process and limited to ``broker_pool_limit`` (10). A producer kept
        from there by each Broker would leave the eleventh Broker of a process (eleven
        ``Client()`` objects) blocked forever on its first submit."""
        if self._producer is None:
            from kombu import Producer

            self._producer = Producer(self.app.connection_for_write())
        return self._producer

    def close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # its connection may be gone already
                producer.connection.close()

    def cancel(self, job_id: str, *, with_descendants: bool = False) -> JobStatus:
        """Cancel a job (and, with ``with_descendants``, everything downstream of it)."""
        if with_descendants:
            return self.pipeline.cancel_with_descendants(job_id)[job_id]
        status = self.records.request_cancel(job_id)
        self.pipeline.on_done(job_id)
        return status

    def cancel_many(self, job_ids: Sequence[str]) -> list[JobStatus]:
        """Cancel many jobs (an array's items), each as :meth:`cancel` cancels one, in
        pipelined chunks; their statuses after. The jobs waiting on one that ended are
        released or failed as for one (:meth:`Pipeline.on_done`)."""
        after = self.records.request_cancel_many(job_ids)
        ended = [j for j, s in zip(job_ids, after, strict=True) if s.terminal]
        for start in range(0, len(ended), 1000):
            part = ended[start : start + 1000]
            pipe = self.redis.pipeline(transaction=False)
            for job_id in part:
                pipe.exists(keys.children(job_id))
            for job_id, has in zip(part, JobRecords._run(pipe.execute), strict=True):
                if has:
                    self.pipeline.on_done(job_id)
        return after

    # -- what the queues hold --------------------------------------------------------------

    def depths(self, classes: Iterable[str] | None = None) -> dict[str, ClassWork]:
        """Ready, delivered-unacknowledged and running jobs per class (kombu's formats are
        read here, in :mod:`offload.broker.depths`, and nowhere else)."""
        names = [c.name for c in self.settings.classes] if classes is None else list(classes)
        try:
            return read_depths(self.redis, names)
        except redis.RedisError as exc:
            raise broker_error(exc) from exc

    def stats(self, classes: Iterable[str] | None = None) -> ClusterStats:
        """The cluster-wide figures the metrics export (:mod:`offload.broker.stats`)."""
        names = [c.name for c in self.settings.classes] if classes is None else list(classes)
        return JobRecords._run(read_stats, self.redis, self.settings, names)

    def held(self) -> set[str]:
        """The classes held now (``offload hold``)."""
        try:
            return held_classes(self.redis)
        except redis.RedisError as exc:
            raise broker_error(exc) from exc

    def class_status(self, resource_class: str) -> dict[str, str] | None:
        """The autoscaler's last word on a class (None when no autoscaler runs)."""
        return JobRecords._run(read_status, self.redis, resource_class)

    def write_class_status(self, statuses: Mapping[str, ClassStatus], ttl: int) -> None:
        JobRecords._run(write_status, self.redis, statuses, ttl)

    def server_time(self) -> float:
        """Redis's clock (leases and node liveness are judged on it)."""
        return self.nodes.server_time()

    def ping(self) -> bool:
        """Whether Redis answers now (False rather than an error)."""
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        """Drop the connections (the object can be used again: it reconnects)."""
        self.close_producer()
        if "redis" in self.__dict__:
            self.redis.close()
        if "app" in self.__dict__:
            self.app.close()


__all__ = ["Broker", "ClassWork"]
