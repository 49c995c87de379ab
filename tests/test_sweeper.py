"""The sweeper against a real Redis: expired leases, poison jobs, broker outages, lost
messages, stale deliveries, lost nodes — and one sweeper at a time."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from offload.broker import keys
from offload.broker.app import make_app, route
from offload.broker.chunks import ChunkLeases
from offload.broker.core import Broker
from offload.broker.nodes import NodeRegistry
from offload.broker.records import JobRecords
from offload.broker.status import JobStatus, Reason
from offload.broker.sweeper import UNACKED, Sweeper, message_job
from offload.config import Settings
from offload.spec import JobSpec
from offload.spec.arrays import chunk_id, item_id
from tests.conftest import new_db, ready_messages

SPEC = JobSpec(image="offload/base", command=("true",))


@pytest.fixture
def settings(redis_server: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=f"{redis_server}/{new_db()}",
        home=tmp_path,
        lease_ttl=10,
        sweep_interval=0.01,
        lost_message_grace=5,
        max_node_losses=3,
    )


@pytest.fixture
def r(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def parts(settings: Settings, r: redis.Redis) -> tuple[JobRecords, NodeRegistry, Sweeper]:
    records = JobRecords.from_settings(r, settings)
    registry = NodeRegistry(r, lost_after=settings.lost_after)
    sweeper = Sweeper(Broker(settings, client=r))
    r.set(keys.SWEEPER_LAST, repr(sweeper.now()))  # a sweeper ran just now: no outage
    return records, registry, sweeper


def now(r: redis.Redis) -> float:
    sec, usec = r.time()
    return float(sec) + usec / 1e6


def running_job(records: JobRecords, node: str = "n1") -> str:
    job_id = uuid.uuid4().hex
    records.create(job_id, SPEC, "cpu-small")
    records.begin_attempt(job_id, node, 4242)
    assert records.transition(job_id, JobStatus.RUNNING, attempt=records.get(job_id).attempt)
    return job_id


def expire(r: redis.Redis, job_id: str) -> None:
    r.zadd(keys.LEASES, {job_id: now(r) - 1})


def queued_ids(r: redis.Redis) -> list[str]:
    return [message_job(m) or "" for m in ready_messages(r, "cpu-small")]


def sweep(sweeper: Sweeper, r: redis.Redis):  # type: ignore[no-untyped-def]
    r.set(keys.SWEEPER_LAST, repr(now(r) - 1))  # the previous sweep, a second ago
    report = sweeper.sweep()
    assert report is not None
    return report


def test_a_job_whose_lease_expired_is_queued_again_without_spending_a_retry(
    parts: tuple[JobRecords, NodeRegistry, Sweeper], r: redis.Redis
) -> None:
    records, _, sweeper = parts
    alive, dead = running_job(records), running_job(records)
    expire(r, dead)
    report = sweep(sweeper, r)
    assert report.requeued == [dead]
    rec = records.get(dead)
    assert rec.status is JobStatus.QUEUED and rec.reason is Reason.NODE_LOST
    assert rec.message == "attempt 1 on node n1 stopped renewing its lease"
    assert queued_ids(r) == [dead]  # published again, once
    assert r.zscore(keys.LEASES, dead) is None
    assert dead not in r.smembers(keys.node_running("n1"))
    assert records.get(alive).status is JobStatus.RUNNING  # a live lease is left alone
    assert not sweep(sweeper, r)  # nothing more to do


def test_a_job_that_keeps_killing_its_worker_ends_failed(
    parts: tuple[JobRecords, NodeRegistry, Sweeper], r: redis.Redis
) -> None:
    records, _, sweeper = parts
    job_id = running_job(records)
    for attempt in (1, 2, 3):
        expire(r, job_id)
        report = sweep(sweeper, r)
        if attempt < 3:
            assert report.requeued == [job_id]
            records.begin_attempt(job_id, f"n{attempt + 1}", 1)
        else:
            assert report.failed == [job_id]
    rec = records.get(job_id)
    assert rec.status is JobStatus.FAILED and rec.reason is Reason.NODE_LOST
    assert "3 attempts died with their worker" in (rec.message or "")


def test_after_a_broker_outage_leases_are_extended_not_expired(
    parts: tuple[JobRecords, NodeRegistry, Sweeper], r: redis.Redis, settings: Settings
) -> None:
    records, _, sweeper = parts
    job_id = running_job(records)
    expire(r, job_id)
    r.set(keys.SWEEPER_LAST, repr(now(r) - 60))  # nobody could sweep for a minute
    report = sweeper.sweep()
    assert report is not None and report.extended == 1 and not report.requeued
    lease = r.zscore(keys.LEASES, job_id)
    assert lease is not None and lease >= now(r) + settings.lease_ttl - 1
    assert records.get(job_id).status is JobStatus.RUNNING
    assert not sweep(sweeper, r).requeued  # its worker renews in time: never taken for dead


def test_a_queued_job_whose_message_was_lost_is_published_again(
    parts: tuple[JobRecords, NodeRegistry, Sweeper], r: redis.Redis, settings: Settings
) -> None:
    records, _, sweeper = parts
    app = make_app(settings)
    lost, kept, fresh = (uuid.uuid4().hex for _ in range(3))
    for job_id in (lost, kept, fresh):
        records.create(job_id, SPEC, "cpu-small")
    route(app, kept, "cpu-small", "kept", "")
    old = now(r) - 60
    r.zadd(keys.QUEUED, {lost: old, kept: old})  # queued a minute ago; `fresh` just now
    report = sweep(sweeper, r)
    assert report.republished == [lost]
    assert sorted(queued_ids(r)) == sorted([kept, lost])
    assert records.get(lost).status is JobStatus.QUEUED
    assert not sweep(sweeper, r).republished  # looked at: not again before the grace


def test_a_queued_job_delivered_long_ago_to_a_worker_that_never_began_is_published_again(
    parts: tuple[JobRecords, NodeRegistry, Sweeper], r: redis.Redis
) -> None:
    """A worker took the message (kombu's unacked entry) and then died, or lost its broker in
    a failover, before the job's first step: the entry would keep the job `queued` until the
    visibility timeout (a day). Past the grace it is dropped and the job published again; a
    delivery within the grace is left alone."""
    records, _, sweeper = parts
    taken_long_ago, taken_just_now = uuid.uuid4().hex, uuid.uuid4().hex
    old = now(r) - 60
    for tag, job_id, delivered in (
        ("t-old", taken_long_ago, old),
        ("t-new", taken_just_now, now(r)),
    ):
        records.create(job_id, SPEC, "cpu-small")
        message = {"headers": {"id": f"{job_id}.1"}, "body": ""}
        r.hset(UNACKED, tag, json.dumps([message, "", "cpu-small"]))
        r.zadd("unacked_index", {tag: delivered})
        r.zadd(keys.QUEUED, {job_id: old})
    report = sweep(sweeper, r)
    assert report.republished == [taken_long_ago]
    assert queued_ids(r) == [taken_long_ago]
    assert set(r.hkeys(UNACKED)) == {"t-new"} and r.zrange("unacked_index", 0, -1) == ["t-new"]


def test_deliveries_of_finished_jobs_are_dropped_from_unacked(
    parts: tuple[JobRecords, NodeRegistry, Sweeper], r: redis.Redis
) -> None:
    records, _, sweeper = parts
    done, live = running_job(records), running_job(records)
    assert records.transition(done, JobStatus.FAILED, attempt=1, reason=Reason.EXIT_CODE)
    for tag, job_id in (("t-done", done), ("t-live", live), ("t-gone", uuid.uuid4().hex)):
        message = {"headers": {"id": f"{job_id}.1"}, "body": ""}
        r.hset(UNACKED, tag, json.dumps([message, "", "cpu-small"]))
        r.zadd("unacked_index", {tag: 1.0})
    report = sweep(sweeper, r)
    assert report.dropped_deliveries == 2
    assert set(r.hkeys(UNACKED)) == {"t-live"} and r.zrange("unacked_index", 0, -1) == ["t-live"]


def test_a_lost_node_is_forgotten_once_it_holds_no_job(
    parts: tuple[JobRecords, NodeRegistry, Sweeper], r: redis.Redis
) -> None:
    records, registry, sweeper = parts
    for name in ("empty", "busy"):
        registry.register(
            name, provider="manual", classes=["cpu-small"], slots=1, cpus=1, memory=1 << 30, gpus=0
        )
        r.hset(keys.node(name), "heartbeat_at", repr(now(r) - 600))
    job_id = running_job(records, "busy")
    assert sweep(sweeper, r).deregistered == ["empty"]
    expire(r, job_id)
    report = sweep(sweeper, r)
    assert report.requeued == [job_id] and report.deregistered == ["busy"]
    assert [n.name for n in registry.nodes()] == []


def test_concurrent_sweepers_do_the_work_once(
    parts: tuple[JobRecords, NodeRegistry, Sweeper], r: redis.Redis, settings: Settings
) -> None:
    records, _registry, _ = parts
    jobs = [running_job(records) for _ in range(5)]
    for job_id in jobs:
        expire(r, job_id)
    r.set(keys.SWEEPER_LAST, repr(now(r) - 1))
    sweepers = [Sweeper(Broker(settings, client=r)) for _ in range(6)]
    barrier = threading.Barrier(len(sweepers))
    requeued: list[str] = []

    def go(s: Sweeper) -> None:
        barrier.wait()
        report = s.sweep()
        if report is not None:
            requeued.extend(report.requeued)

    threads = [threading.Thread(target=go, args=(s,)) for s in sweepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(requeued) == sorted(jobs)
    assert sorted(queued_ids(r)) == sorted(jobs)  # one message each, not six


def test_a_chunk_delivered_long_ago_keeps_its_items_while_its_lease_lives(
    parts: tuple[JobRecords, NodeRegistry, Sweeper], r: redis.Redis, settings: Settings
) -> None:
    """A batched array's chunk (one message, several items) delivered long ago: its items
    wait their turn in its warm container while a worker holds the chunk's lease; once the
    lease is gone (its worker died) each item still queued is published alone, and the
    chunk's delivery is dropped only when every item of it has ended."""
    records, _, sweeper = parts
    array = uuid.uuid4().hex[:24]
    items = [item_id(array, i) for i in range(3)]
    for job_id in items:
        records.create(job_id, SPEC, "cpu-small")
    chunk = chunk_id(array, 0, 3)
    message = {"headers": {"id": chunk, "task": "offload.run_chunk"}, "body": ""}
    r.hset(UNACKED, "t-chunk", json.dumps([message, "", "cpu-small"]))
    r.zadd("unacked_index", {"t-chunk": now(r) - 60})
    r.zadd(keys.QUEUED, dict.fromkeys(items, now(r) - 60))
    leases = ChunkLeases(r, settings.lease_ttl)
    assert leases.hold(chunk, "n1", 7) and not leases.hold(chunk, "n2", 8)
    report = sweep(sweeper, r)
    assert report.republished == [] and report.dropped_deliveries == 0  # its worker has them
    r.zadd(keys.QUEUED, dict.fromkeys(items, now(r) - 60))
    leases.release(chunk, "n1", 7)
    assert leases.holder(chunk) is None
    report = sweep(sweeper, r)
    assert sorted(report.republished) == items
    assert sorted(queued_ids(r)) == items  # one message each
    assert not r.hexists(UNACKED, "t-chunk")

    # a chunk's delivery is stale only when all its items ended
    r.hset(UNACKED, "t-chunk", json.dumps([message, "", "cpu-small"]))
    r.zadd("unacked_index", {"t-chunk": now(r)})
    for job_id in items[:2]:
        r.hset(keys.job(job_id), "status", "succeeded")
    assert sweeper.drop_stale_deliveries() == 0
    r.hset(keys.job(items[2]), "status", "failed")
    assert sweeper.drop_stale_deliveries() == 1
