"""The archive against a real Redis and a real sealed store: finished jobs leave Redis in
segments, every read finds them there, Redis keeps little of them, history is pruned."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.broker import keys
from offload.broker.archive import ArchiveReport
from offload.broker.arrays import ArrayInfo
from offload.broker.core import Broker
from offload.broker.listing import JobQuery, list_jobs
from offload.broker.status import JobStatus, Reason
from offload.broker.sweeper import Sweeper
from offload.cache.archive import SealedArchive
from offload.cache.factory import open_store
from offload.cache.keys import init_key
from offload.config import Settings
from offload.errors import JobNotFound
from offload.producer.client import Client
from offload.producer.job import Job
from offload.spec import JobSpec, OutputRef
from offload.spec.arrays import item_id
from tests.conftest import make_platform, new_db, offload_cli, wait_for

SPEC = JobSpec(image="offload/base", command=("echo", "hi"), params={"n": 1})


@pytest.fixture
def settings(redis_server: str, tmp_path: Path) -> Settings:
    s = Settings(
        redis_url=f"{redis_server}/{new_db()}",
        home=tmp_path / "home",
        archive_after=0,
        sweep_interval=0.01,
    )
    s.home.mkdir(parents=True)
    init_key(s.key_path)
    return s


@pytest.fixture
def broker(settings: Settings) -> Iterator[Broker]:
    b = Broker(settings, archive=SealedArchive(lambda: open_store(settings)))
    b.redis.flushdb()
    b.redis.set(keys.SWEEPER_LAST, repr(b.server_time()))
    yield b
    b.redis.flushdb()


def finish(b: Broker, job_id: str, to: JobStatus = JobStatus.SUCCEEDED, **fields: object) -> None:
    """Run a job through an attempt to ``to``, with a line of output."""
    rec = b.records
    rec.create(job_id, SPEC, "cpu-small")
    _, attempt = rec.begin_attempt(job_id, "n1")
    assert rec.transition(job_id, JobStatus.RUNNING, attempt=attempt)
    rec.append_logs(job_id, [("out", f"line of {job_id}")])
    assert rec.transition(job_id, JobStatus.UPLOADING, attempt=attempt)
    if to is JobStatus.SUCCEEDED:
        fields.setdefault("outputs", {"out.txt": "sha256:" + "a" * 64})
    else:
        fields.setdefault("reason", Reason.EXIT_CODE)
    assert rec.transition(job_id, to, attempt=attempt, **fields)


def archive(b: Broker) -> ArchiveReport:
    return b.records.archive.run(b.server_time())


def ids(n: int, start: int = 0) -> list[str]:
    return [f"{i:032x}" for i in range(start, start + n)]


def test_finished_jobs_leave_redis_and_read_back_the_same(broker: Broker) -> None:
    done, failed = ids(2)
    finish(broker, done)
    finish(broker, failed, JobStatus.FAILED, exit_code=3)
    broker.records.create(ids(1, 9)[0], SPEC, "cpu-small")  # queued: never archived
    before = {j: (broker.records.get(j), broker.records.timeline(j)) for j in (done, failed)}
    logs_before = list(broker.records.log_entries(done, follow=False))

    report = archive(broker)
    assert (report.archived, report.segments) == (2, 1)
    r = broker.redis
    for j in (done, failed):  # nothing of the job is left in Redis but two index entries
        assert not r.exists(keys.job(j), keys.events(j), keys.logs(j))
        assert r.hget(keys.ARCHIVE_WHERE, j) == "1" and r.zscore(keys.JOBS_INDEX, j)
    assert r.zcard(keys.ENDED) == 0 and r.exists(keys.job(ids(1, 9)[0]))

    fresh = Broker(broker.settings, archive=SealedArchive(lambda: open_store(broker.settings)))
    for j, (rec, timeline) in before.items():  # a process that never saw them in Redis
        assert fresh.records.get(j) == rec
        assert fresh.records.timeline(j) == timeline
        assert fresh.records.status(j) is rec.status
        assert fresh.records.wait(j, timeout=1) == rec
        assert fresh.records.latest(j, 2) == ("cpu-small", timeline[::-1][:2])
    assert list(fresh.records.log_entries(done, follow=False)) == logs_before
    assert list(fresh.records.log_entries(done, follow=True)) == logs_before

    job = Job.from_id(done, fresh)
    assert job.result(timeout=1).outputs == {"out.txt": "sha256:" + "a" * 64}
    assert [line.text for line in job.logs()] == [f"line of {done}"]
    listed = list_jobs(fresh.records, JobQuery(limit=10)).jobs
    assert {rec.id for rec in listed} == {done, failed, ids(1, 9)[0]}
    with pytest.raises(JobNotFound):
        fresh.records.get(ids(1, 7)[0])


def test_a_child_of_an_archived_parent_is_released_or_failed(broker: Broker) -> None:
    good, bad = ids(2, 100)
    finish(broker, good)
    finish(broker, bad, JobStatus.FAILED)
    assert archive(broker).archived == 2
    ok_child = JobSpec(image="offload/base", inputs={"x": str(OutputRef(good, "out.txt"))})
    bad_child = JobSpec(image="offload/base", inputs={"x": str(OutputRef(bad, "out.txt"))})
    assert broker.pipeline.submit(ids(1, 200)[0], ok_child, "cpu-small") is JobStatus.QUEUED
    assert broker.pipeline.submit(ids(1, 201)[0], bad_child, "cpu-small") is JobStatus.FAILED
    assert broker.records.get(ids(1, 201)[0]).reason is Reason.UPSTREAM_FAILED
    assert broker.pipeline.parents(ids(1, 200)[0]) == [good]

    # a child linked before its parent was archived: the views read the segment's sets
    kid, parent = ids(1, 202)[0], ids(1, 203)[0]
    finish(broker, parent)
    child = JobSpec(image="offload/base", inputs={"x": str(OutputRef(parent, "out.txt"))})
    assert broker.pipeline.submit(kid, child, "cpu-small") is JobStatus.QUEUED
    assert archive(broker).archived == 2  # the parent, and the child that failed above
    assert not broker.redis.exists(keys.children(parent))
    assert broker.pipeline.children(parent) == [kid] and broker.pipeline.parents(kid) == [parent]


def test_redis_keeps_at_most_300_bytes_per_archived_job(broker: Broker) -> None:
    n = 2000
    jobs = [(j, SPEC, "cpu-small", JobStatus.QUEUED) for j in ids(n, 1000)]
    broker.records.create_many(jobs)
    for j, *_ in jobs:
        assert broker.records.transition(j, JobStatus.CANCELLED, reason=Reason.CANCELLED)
    broker.records.archive.batch = 1000
    assert archive(broker).archived == 1000 and archive(broker).archived == 1000
    r = broker.redis
    left = [k for k in r.scan_iter("offload:*") if k.startswith(("offload:job:", "offload:logs:"))]
    assert left == []
    kept = sum(
        int(r.memory_usage(k, samples=0) or 0)
        for k in (keys.JOBS_INDEX, keys.ARCHIVE_WHERE, keys.ARCHIVE_SEGMENTS, keys.ARCHIVE_TIMES)
    )
    print(f"redis bytes per archived job: {kept / n:.0f}")
    assert kept / n <= 300, f"{kept / n:.0f} bytes per archived job"


def test_history_is_pruned_after_the_record_ttl(broker: Broker, settings: Settings) -> None:
    old, new = ids(2, 300)
    finish(broker, old)
    assert archive(broker).archived == 1
    ref = broker.redis.hget(keys.ARCHIVE_SEGMENTS, "1")
    store = open_store(settings)
    assert ref is not None and store.has(ref)
    finish(broker, new)
    broker.records.archive.after = 3600  # the new one stays in Redis for now
    broker.records.archive.ttl = 0.5  # OFFLOAD_RECORD_TTL, shortened
    wait_for(lambda: archive(broker).pruned == 1, 10, "the first segment to be pruned")
    with pytest.raises(JobNotFound):
        broker.records.get(old)
    assert not store.has(ref) and broker.redis.zscore(keys.JOBS_INDEX, old) is None
    assert not broker.redis.exists(keys.ARCHIVE_WHERE, keys.ARCHIVE_SEGMENTS, keys.ARCHIVE_TIMES)
    broker.records.archive.after, broker.records.archive.ttl = 0, 3600
    assert archive(broker) == ArchiveReport(archived=1, segments=1)
    assert broker.records.get(new).status is JobStatus.SUCCEEDED  # a newer segment stays


def test_the_cli_reads_archived_jobs(broker: Broker, settings: Settings) -> None:
    (j,) = ids(1, 400)
    finish(broker, j)
    assert archive(broker).archived == 1
    env = {"OFFLOAD_REDIS_URL": settings.redis_url, "OFFLOAD_HOME": str(settings.home)}
    import os

    env = {**os.environ, **env}
    out = offload_cli(env, "status", j, "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "succeeded" and [e["status"] for e in data["timeline"]][-1] == (
        "succeeded"
    )
    logs = offload_cli(env, "logs", j, timeout=60)
    assert logs.returncode == 0 and logs.stdout == f"line of {j}\n", logs.stderr
    ls = offload_cli(env, "ls", timeout=60)
    assert ls.returncode == 0 and j in ls.stdout, ls.stderr
    assert Client(settings).job(j).status() is JobStatus.SUCCEEDED


def test_a_worker_archives_finished_jobs_and_a_child_uses_an_archived_parents_output(
    redis_server: str, docker_client: object, tmp_path: Path
) -> None:
    p = make_platform(
        redis_server, tmp_path / "w", OFFLOAD_ARCHIVE_AFTER="1", OFFLOAD_SWEEP_INTERVAL="0.5"
    )
    p.start_worker()
    try:
        c = p.client
        parent = c.submit(
            "offload/base",
            ["sh", "-c", "echo made; echo 42 > /offload/out/n.txt"],
            cache=False,
        )
        assert parent.result(timeout=60).ok
        r = c.broker.redis
        wait_for(lambda: not r.exists(keys.job(parent.id)), 30, "the worker to archive it")
        assert r.hget(keys.ARCHIVE_WHERE, parent.id) is not None
        assert [line.text for line in Job.from_id(parent.id, c).logs()] == ["made"]
        assert parent.result(timeout=1).outputs.keys() == {"n.txt"}
        child = c.submit(
            "offload/base", ["cat", "/offload/in/n"], inputs={"n": parent.output("n.txt")}
        )
        assert child.result(timeout=60).ok
        assert [line.text for line in child.logs()] == ["42"]
    finally:
        p.stop_worker()


def test_an_arrays_items_are_found_through_its_archive_index(broker: Broker) -> None:
    """An array's archived items cost 8 bytes each in Redis (plus their ``ls`` member), not a
    field of the where hash each; they read back as any archived job."""
    array = ArrayInfo(id="ab" * 12, count=3000, name="photos", created_at=time.time())
    broker.arrays.begin(array)
    broker.arrays.activate(array)
    items = [item_id(array.id, i) for i in (0, 1, 2999)]
    for j in items:
        finish(broker, j)
    before = {j: broker.records.get(j) for j in items}
    assert archive(broker).archived == 3
    r = broker.redis
    assert r.hlen(keys.ARCHIVE_WHERE) == 0  # not one field for them
    assert r.strlen(keys.archive_array(array.id)) == 3000 * 8
    assert r.ttl(keys.archive_array(array.id)) > 0
    fresh = Broker(broker.settings, archive=SealedArchive(lambda: open_store(broker.settings)))
    for j in items:
        assert fresh.records.get(j) == before[j]
        assert fresh.records.status(j) is JobStatus.SUCCEEDED
    assert set(fresh.records.archive.entries([*items, item_id(array.id, 5)])) == set(items)
    with pytest.raises(JobNotFound):  # an item never archived (nor made) is not found
        fresh.records.get(item_id(array.id, 5))


def test_one_sweep_archives_segment_after_segment_while_a_backlog_is_due(
    broker: Broker,
) -> None:
    """Jobs ending faster than a segment a sweep (an array's tiny items) do not pile up in
    Redis: the sweeper archives segment after segment while full ones are due."""
    for job_id in ids(23):
        finish(broker, job_id)
    broker.records.archive.batch = 5
    sweeper = Sweeper(broker)
    report = sweeper.archive(broker.server_time())
    assert (report.archived, report.segments) == (23, 5)
    assert broker.redis.zcard(keys.ENDED) == 0


def test_an_arrays_ended_items_are_archived_sooner_than_jobs(settings: Settings) -> None:
    s = settings.model_copy(update={"archive_after": 300.0, "archive_items_after": 30.0})
    b = Broker(s, archive=SealedArchive(lambda: open_store(s)))
    assert b.records.items_sooner == 270.0
    array = ArrayInfo(id="cd" * 12, count=2, name="photos", created_at=time.time())
    b.arrays.begin(array)
    b.arrays.activate(array)
    job, item = ids(1, 7)[0], item_id(array.id, 1)
    for j in (job, item):
        finish(b, j)
    now = b.server_time()
    assert b.records.archive.run(now + 10).archived == 0  # neither is due yet
    report = b.records.archive.run(now + 31)  # the item's 30 s are past, not the job's 300
    assert report.archived == 1 and not b.redis.exists(keys.job(item))
    assert b.redis.exists(keys.job(job))
    assert b.records.get(item).status is JobStatus.SUCCEEDED  # read from the archive
    assert b.records.archive.run(now + 301).archived == 1
