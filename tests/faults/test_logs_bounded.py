"""A job's log stream is bounded in bytes, whatever the job prints (issue 8, item 3).

Before: the cap counted entries, so a job printing 2 GB without newlines (split into 16 KiB
entries) left a 208 MB stream in Redis for a week.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from offload.broker import keys
from offload.broker.logs import SYS, marker
from offload.broker.records import JobRecords
from offload.broker.status import JobStatus
from offload.spec import JobSpec, MiB

from ..conftest import Platform, new_db

CAP = 4096


@pytest.fixture
def r(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_server}/{new_db()}", decode_responses=True)
    yield client
    client.flushdb()


def records(r: redis.Redis, max_bytes: int = CAP) -> JobRecords:
    return JobRecords(r, record_ttl=600, log_max_entries=1000, log_max_bytes=max_bytes)


def new_job(recs: JobRecords) -> str:
    job_id = uuid.uuid4().hex
    recs.create(job_id, JobSpec.create(image="offload/base"), "cpu-small")
    return job_id


def entries(r: redis.Redis, job_id: str) -> list[dict[str, str]]:
    return [f for _, f in r.xrange(keys.logs(job_id))]


def test_the_cap_holds_across_writers_and_ends_with_one_marker(r: redis.Redis) -> None:
    # two pool processes (or two attempts) writing the same job's log
    a, b = records(r), records(r)
    job_id = new_job(a)
    results = []
    for i in range(100):
        writer = a if i % 2 else b
        results.append(writer.append_logs(job_id, [("out", f"{i:03d}" + "x" * 97)] * 3))
    got = entries(r, job_id)
    lines = [e for e in got if e["s"] != SYS]
    assert sum(len(e["l"].encode()) for e in lines) <= CAP
    assert [e for e in got if e["s"] == SYS] == [got[-1]]  # one marker, the last entry
    assert got[-1]["l"] == marker(CAP) and "4 KiB" in got[-1]["l"]
    assert results[:13] == [False] * 13 and all(results[13:])
    assert int(r.hget(keys.job(job_id), "log_bytes") or 0) > CAP
    # later writes, from any writer, add nothing
    before = r.xlen(keys.logs(job_id))
    assert a.append_logs(job_id, [("err", "more")]) is True
    assert r.xlen(keys.logs(job_id)) == before


def test_the_crossing_line_is_cut_at_the_cap_on_a_character_boundary(r: redis.Redis) -> None:
    recs = records(r)
    job_id = new_job(recs)
    assert recs.append_logs(job_id, [("out", "a"), ("out", "é" * CAP), ("out", "b")]) is True
    got = entries(r, job_id)
    assert [e["s"] for e in got] == ["out", "out", SYS]
    assert got[0]["l"] == "a"
    cut = got[1]["l"]
    assert set(cut) == {"é"} and len(cut.encode()) == CAP - 2  # whole characters


def test_a_job_without_a_record_gets_no_stream(r: redis.Redis) -> None:
    recs = records(r)
    assert recs.append_logs("nosuchjob", [("out", "hello")]) is True
    assert not r.exists(keys.logs("nosuchjob")) and not r.exists(keys.job("nosuchjob"))


def test_a_finished_jobs_stream_keeps_its_expiry(r: redis.Redis) -> None:
    recs = records(r)
    job_id = new_job(recs)
    recs.append_logs(job_id, [("out", "x")])
    recs.transition(job_id, JobStatus.CANCELLED)
    recs.append_logs(job_id, [("out", "late line")])
    assert 0 < r.ttl(keys.job(job_id)) <= 600 and 0 < r.ttl(keys.logs(job_id)) <= 600


# 2 GB of stdout without a newline: ~15 s through the Docker engine on the 2-core test host.
BIG = 2_000_000_000


def test_two_gb_without_newlines_keeps_redis_bounded(platform: Platform) -> None:
    cap = platform.settings.log_max_bytes
    assert cap == 10 * MiB
    job = platform.client.submit(
        "offload/base",
        ["sh", "-c", f"head -c {BIG} /dev/zero | tr '\\0' x; echo done >&2"],
        cache=False,
        timeout=300,
    )
    assert job.result(timeout=280).ok  # the job is not failed for its chatter
    r = platform.client.broker.redis
    key = keys.logs(job.id)
    stored = sum(len(f["l"].encode()) for _, f in r.xrange(key) if "l" in f)
    assert stored <= cap + 1024
    usage = r.memory_usage(key, samples=0)
    assert usage is not None and usage < cap + MiB, usage  # was 208 MB
    lines = list(job.logs())
    assert lines[-1].stream == SYS and lines[-1].text == marker(cap)
    assert "log truncated at 10 MiB" in lines[-1].text
    assert all(set(line.text) == {"x"} for line in lines[:-1])
    assert not any(line.text == "done" for line in lines)  # after the cap: dropped
