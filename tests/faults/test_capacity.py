"""Redis never wedges: above its high-water mark new work is refused whole, what runs is
still recorded, and submits are accepted again by themselves once there is room.

A redis-server of the test's own, with a small ``maxmemory`` and ``noeviction`` (as
``offload up`` runs it), filled with queued jobs of a class no node serves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import redis

from offload import CapacityError, JobStatus
from offload.broker import arrays as arrays_module
from offload.broker import keys
from offload.producer.client import Client

from ..conftest import Platform, free_port, make_platform, wait_for

MAX = 24 * 1024 * 1024
FAT = "x" * 8000  # a param of 8 kB: a queued job's record holds ~17 kB


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is not installed; run `make setup`"
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
         "--maxmemory", str(MAX), "--maxmemory-policy", "noeviction", "--databases", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}"
    r = redis.Redis.from_url(url)
    wait_for(lambda: _pings(r), 10, "the small redis-server")
    yield url
    proc.terminate()
    proc.wait(10)


def _pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.ConnectionError:
        return False


def records(c: Client) -> int:
    return int(c.broker.redis.zcard(keys.JOBS_INDEX))


def fill(c: Client) -> int:
    """Queue cpu-large jobs (no node serves that class) until Redis admits no more (a job
    is admitted only if it keeps Redis below the mark), then settle it just above the mark
    (a limit of used / 0.82: Redis itself still has room, admission none, whatever the size
    asked for — a margin that Redis's own bookkeeping, client buffers included, cannot
    cross); how many jobs were queued. Single jobs, each a full record: an array's items
    wait compactly in its table, and a few hundred thousand of them would fill nothing."""
    queued = 0
    for _ in range(20_000):
        try:
            c.submit("offload/base", ["true"], cpu=2, params={"fat": FAT})
        except CapacityError as exc:
            assert "high-water mark" in str(exc), exc
            used = int(c.broker.redis.info("memory")["used_memory"])
            c.broker.redis.config_set("maxmemory", str(int(used / 0.82)))
            return queued
        queued += 1
    raise AssertionError(f"{queued} jobs queued and Redis never filled")


def test_above_the_mark_a_map_is_refused_whole_while_running_jobs_are_recorded(
    small_redis: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    p: Platform = make_platform(small_redis, tmp_path / "home", OFFLOAD_REDIS_HIGH_WATER="0.8")
    p.start_worker()
    try:
        c = p.client
        running = c.submit("offload/base", ["sh", "-c", "sleep 4; echo done"], cache=False)
        wait_for(lambda: running.status() is JobStatus.RUNNING, 60, "the job to run")

        queued = fill(c)
        usage = c.broker.redis_usage()
        assert queued > 0 and usage.full, usage
        before = records(c)

        with pytest.raises(CapacityError) as refused:  # a map: refused whole
            c.map("offload/base", ["true"], each=[{}] * 50)
        message = str(refused.value)
        assert "above its high-water mark of 80% (OFFLOAD_REDIS_HIGH_WATER)" in message, message
        assert "OFFLOAD_REDIS_MAX_MEMORY" in message
        assert f"{before} job records: {queued} queued" in message, message
        with pytest.raises(CapacityError):  # a single submit too
            c.submit("offload/base", ["true"])
        assert records(c) == before  # nothing of either was written

        # the job that runs finishes and is recorded: workers are never refused
        result = running.result(timeout=60)
        assert result.ok, result
        assert [line.text for line in running.logs()] == ["done"]
        assert sum(1 for e in running.timeline() if e.status is JobStatus.SUCCEEDED) == 1

        cli = p.cli("submit", "offload/base", "--", "true")
        assert cli.returncode == CapacityError.exit_code, cli.stderr
        assert "nothing was queued" in cli.stderr

        # room again (here: a larger limit) — submits are accepted by themselves
        c.broker.redis.config_set("maxmemory", str(4 * MAX))
        again = c.submit("offload/base", ["sh", "-c", "echo again"], cache=False)
        assert again.result(timeout=60).ok
        assert records(c) == before + 1  # the refused ones never came back; nothing lost
    finally:
        p.stop_worker()


def test_a_map_that_redis_refuses_mid_way_leaves_nothing(
    small_redis: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = make_platform(small_redis, tmp_path / "home")
    c = p.client
    c.map("offload/base", ["true"], each=[{}] * 100, cpu=2)
    before = records(c)
    keys_before = set(c.broker.redis.scan_iter("offload:*"))

    # The fault: once the map's first part of its item table is written, Redis's limit drops
    # to what it uses (an operator's CONFIG SET, another tenant filling it): the next part is
    # refused part-way through the array.
    monkeypatch.setattr(arrays_module, "PARTS_PER_TRIP", 1)
    part_key = keys.array_table
    parts: list[int] = []

    def shrinking(array_id: str, part: int) -> str:
        parts.append(part)
        if part == 1:
            r = c.broker.redis
            r.config_set("maxmemory", str(r.info("memory")["used_memory"]))
        return part_key(array_id, part)

    monkeypatch.setattr(keys, "array_table", shrinking)
    each = [{"params": {"n": os.urandom(64).hex()}} for _ in range(2500)]
    with pytest.raises(CapacityError) as refused:
        c.map("offload/base", ["true"], each=each, cpu=2)
    monkeypatch.undo()
    assert parts[:2] == [0, 1]  # the first part was written, the second refused
    c.broker.redis.config_set("maxmemory", str(MAX))
    assert "Redis refused the write" in str(refused.value) and "nothing was queued" in str(
        refused.value
    )
    assert records(c) == before
    left = set(c.broker.redis.scan_iter("offload:*")) - keys_before
    assert left == set()  # nothing of the refused array is left: record, table, feed state
    c.map("offload/base", ["true"], each=[{}] * 10, cpu=2)  # and what fits is taken
    assert c.broker.redis.zcard(keys.ARRAYS_FEEDING) >= 1


def test_once_the_archiver_moves_finished_jobs_out_submits_are_accepted_again(
    small_redis: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """Full of jobs that then end (here: cancelled, as the queued ones of a class no node
    serves can only end): nobody raises any limit, yet the worker's sweeper archives them
    out of Redis and the platform admits work again by itself."""
    p = make_platform(
        small_redis,
        tmp_path / "home",
        OFFLOAD_REDIS_HIGH_WATER="0.8",
        OFFLOAD_ARCHIVE_AFTER="1",
        OFFLOAD_ARCHIVE_BATCH="2000",
        OFFLOAD_SWEEP_INTERVAL="0.5",
    )
    p.start_worker()
    try:
        c = p.client
        queued = fill(c)
        assert queued > 0 and c.broker.redis_usage().full
        with pytest.raises(CapacityError):
            c.submit("offload/base", ["true"])
        before = records(c)
        ids = [str(j) for j in c.broker.redis.zrange(keys.QUEUED, 0, -1)]
        assert len(ids) == queued
        for job_id in ids:  # they end; still in Redis, so still full
            assert c.broker.cancel(job_id) is JobStatus.CANCELLED

        wait_for(lambda: not c.broker.redis_usage().full, 60, "the archiver to make room")
        again = c.submit("offload/base", ["sh", "-c", "echo again"], cache=False)  # admitted
        # room comes back after the first passes; the rest of the ended jobs follow them
        archived = lambda: c.broker.redis.hlen(keys.ARCHIVE_WHERE) >= queued  # noqa: E731
        wait_for(archived, 60, "every ended job archived")
        # moved, not dropped (the admitted job may have ended and been archived by now too)
        where = set(map(str, c.broker.redis.hkeys(keys.ARCHIVE_WHERE)))
        assert set(ids) <= where and where - set(ids) <= {again.id}
        assert again.result(timeout=60).ok
        assert records(c) == before + 1  # every job is still listed; nothing was lost
        assert {c.job(j).status() for j in ids} == {JobStatus.CANCELLED}  # read from archive
        assert not any(c.broker.redis.exists(keys.job(j)) for j in ids)
    finally:
        p.stop_worker()
