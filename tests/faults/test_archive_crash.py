"""The archiver dying mid-archive loses nothing: every job is in Redis or in the archive,
never in neither, never read from both (:mod:`offload.broker.archive`).

The faults: a real archiver process killed (``os._exit``) right after it wrote a segment and
before it moved the jobs out of Redis; a second archiver racing the first (a sweeper lock
that expired); a record written between the archiver's read and its move.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.broker import keys
from offload.broker.core import Broker
from offload.broker.records import JobRecord
from offload.broker.status import JobStatus, Reason
from offload.cache.archive import SealedArchive
from offload.cache.factory import open_store
from offload.cache.keys import init_key
from offload.config import Settings
from offload.spec import JobSpec
from tests.conftest import new_db

SPEC = JobSpec(image="offload/base", command=("true",))
N = 300


@pytest.fixture
def settings(redis_server: str, tmp_path: Path) -> Settings:
    s = Settings(redis_url=f"{redis_server}/{new_db()}", home=tmp_path / "home", archive_after=0)
    s.home.mkdir(parents=True)
    init_key(s.key_path)
    return s


def broker_of(settings: Settings, archive: SealedArchive | None = None) -> Broker:
    return Broker(settings, archive=archive or SealedArchive(lambda: open_store(settings)))


@pytest.fixture
def ended(settings: Settings) -> Iterator[dict[str, JobRecord]]:
    """N cancelled jobs, each with a line of output: what the archiver will take."""
    b = broker_of(settings)
    b.redis.flushdb()
    ids = [f"{i:032x}" for i in range(1, N + 1)]
    b.records.create_many([(j, SPEC, "cpu-small", JobStatus.QUEUED) for j in ids])
    for j in ids:
        b.records.append_logs(j, [("out", j)])
        assert b.records.transition(j, JobStatus.CANCELLED, reason=Reason.CANCELLED)
    yield {j: b.records.get(j) for j in ids}
    b.redis.flushdb()


def places(b: Broker, job_id: str) -> tuple[bool, bool]:
    """(in Redis, in the archive) for one job."""
    return bool(b.redis.exists(keys.job(job_id))), b.records.archive.entry(job_id) is not None


def assert_each_in_one_place(b: Broker, ended: dict[str, JobRecord]) -> None:
    for j, rec in ended.items():
        assert places(b, j) in {(True, False), (False, True)}, (j, places(b, j))
        assert b.records.get(j) == rec
        assert [f["l"] for f in b.records.log_entries(j, follow=False)] == [j]


class DiesAfterPut(SealedArchive):
    def put(self, data: bytes) -> str:
        ref = super().put(data)
        os._exit(137)  # killed between writing the segment and moving the jobs
        return ref


def _dying_archiver(settings: Settings) -> None:
    b = broker_of(settings, DiesAfterPut(lambda: open_store(settings)))
    b.records.archive.run(b.server_time())


def test_an_archiver_killed_after_writing_a_segment_loses_nothing(
    settings: Settings, ended: dict[str, JobRecord]
) -> None:
    proc = multiprocessing.get_context("fork").Process(target=_dying_archiver, args=(settings,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 137
    b = broker_of(settings)
    assert b.redis.hlen(keys.ARCHIVE_WHERE) == 0  # the segment is referenced by nothing
    assert b.redis.zcard(keys.ENDED) == N  # every job is still owed its archiving
    assert_each_in_one_place(b, ended)
    assert all(places(b, j) == (True, False) for j in ended)

    report = b.records.archive.run(b.server_time())  # the next sweep's archiver
    assert report.archived == N
    assert_each_in_one_place(b, ended)
    assert all(places(b, j) == (False, True) for j in ended)
    assert b.redis.zcard(keys.ENDED) == 0


def test_two_archivers_racing_move_each_job_once(
    settings: Settings, ended: dict[str, JobRecord]
) -> None:
    other = broker_of(settings)
    seen: list[str] = []

    class RacedAfterPut(SealedArchive):
        def put(self, data: bytes) -> str:
            ref = super().put(data)
            seen.append(ref)
            assert other.records.archive.run(other.server_time()).archived == N  # wins
            return ref

    b = broker_of(settings, RacedAfterPut(lambda: open_store(settings)))
    report = b.records.archive.run(b.server_time())
    assert report.archived == 0  # its segment moved nothing, and was deleted
    assert not open_store(settings).has(seen[0])
    assert b.redis.hlen(keys.ARCHIVE_SEGMENTS) == 1
    assert_each_in_one_place(b, ended)


def test_a_record_written_during_archiving_stays_in_redis_until_the_next_pass(
    settings: Settings, ended: dict[str, JobRecord]
) -> None:
    late = next(iter(ended))
    writer = broker_of(settings)

    class WriteDuringPut(SealedArchive):
        def put(self, data: bytes) -> str:
            writer.redis.hset(keys.job(late), mapping={"updated_at": "1", "message": "late"})
            return super().put(data)

    b = broker_of(settings, WriteDuringPut(lambda: open_store(settings)))
    assert b.records.archive.run(b.server_time()).archived == N - 1
    assert places(b, late) == (True, False)
    assert b.records.get(late).message == "late"  # Redis's copy, not the segment's
    assert broker_of(settings).records.archive.run(b.server_time()).archived == 1
    assert places(b, late) == (False, True) and b.records.get(late).message == "late"
