"""A machine's room against a real Redis, without workers: the script that takes it is atomic,
a dead attempt's room comes back, a starved big job gets the room it needs kept, and the
settings that size the room are checked."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from offload.broker import keys
from offload.broker.room import Room, Share, entry
from offload.errors import ConfigError
from offload.spec import GiB, MiB
from offload.worker.capacity import Capacity, allocatable, slots
from tests.conftest import bare_settings, new_db

ALLOC = Share(2.0, 8 * GiB, 0)
M = "machine-a"


@pytest.fixture
def r(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_server}/{new_db()}", decode_responses=True)
    yield client
    client.flushdb()


def own(r: redis.Redis, node: str, job: str, pid: int, attempt: int) -> str:
    """What begin_attempt writes: the node's owner of the job."""
    r.hset(keys.node_owners(node), job, f"{pid}:{attempt}")
    return job


def admit(room: Room, job: str, need: Share, *, pid: int = 1, starvation: float = 60) -> bool:
    held = entry("n1", pid, 1, need)
    return room.admit(M, job, held, need, ALLOC, starvation=starvation, ttl=30).admitted


def test_jobs_are_admitted_while_they_fit_and_fractions_add_up(r: redis.Redis) -> None:
    room = Room(r)
    for i in range(4):
        own(r, "n1", f"j{i}", 1, 1)
        assert admit(room, f"j{i}", Share(0.5, GiB))  # four half-CPU jobs on 2 CPUs
    own(r, "n1", "j4", 1, 1)
    assert not admit(room, "j4", Share(0.01, MiB * 6))
    assert room.used(M) == Share(2.0, 4 * GiB)
    room.release(M, "j0", entry("n1", 1, 1, Share(0.5, GiB)))
    assert admit(room, "j4", Share(0.5, GiB))
    assert admit(room, "j4", Share(0.5, GiB))  # the same attempt again: holds it already
    assert room.used(M) == Share(2.0, 4 * GiB)


def test_memory_and_gpus_bound_admission_as_cpus_do(r: redis.Redis) -> None:
    room = Room(r)
    gpus = Share(2.0, 8 * GiB, 1)
    for job in ("a", "b"):
        own(r, "n1", job, 1, 1)
    need = Share(0.5, GiB, 1)
    assert room.admit(M, "a", entry("n1", 1, 1, need), need, gpus, starvation=60, ttl=30).admitted
    verdict = room.admit(M, "b", entry("n1", 1, 1, need), need, gpus, starvation=60, ttl=30)
    assert not verdict.admitted and verdict.used == Share(0.5, GiB, 1)
    own(r, "n1", "big", 1, 1)
    assert not admit(room, "big", Share(1, 7.5 * GiB))  # 1 GiB + 7.5 GiB > 8 GiB


def test_two_processes_never_both_take_the_last_room(redis_server: str, r: redis.Redis) -> None:
    url = f"{redis_server}/{r.connection_pool.connection_kwargs['db']}"
    need = Share(1.5, GiB)
    jobs = [own(r, "n1", f"race{i}", 1, 1) for i in range(16)]
    won: list[str] = []
    start = threading.Barrier(len(jobs))

    def race(job: str) -> None:
        room = Room(redis.Redis.from_url(url))  # a client of its own, as a pool process has
        start.wait()
        if admit(room, job, need):
            won.append(job)

    threads = [threading.Thread(target=race, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(won) == 1, won
    assert set(Room(r).holders(M)) == set(won)


def test_a_dead_attempts_room_comes_back_once_it_no_longer_owns_the_job(r: redis.Redis) -> None:
    room = Room(r)
    own(r, "n1", "dead", 41, 1)
    assert admit(room, "dead", Share(2, GiB), pid=41)
    own(r, "n1", "next", 42, 1)
    assert not admit(room, "next", Share(1, GiB), pid=42)  # still its owner: held
    # the process reaper queued the dead attempt's job again: its transition drops the owner
    r.hdel(keys.node_owners("n1"), "dead")
    assert room.holders(M) == {}
    assert admit(room, "next", Share(1, GiB), pid=42)
    # a later attempt of the same job (another owner value) does not count the earlier one
    own(r, "n1", "next", 42, 2)
    assert room.used(M) == Share()


def test_a_starved_big_job_gets_the_room_it_needs_kept(r: redis.Redis) -> None:
    room = Room(r)
    small = Share(0.5, GiB)
    for i in range(3):
        own(r, "n1", f"s{i}", 1, 1)
        assert admit(room, f"s{i}", small)
    own(r, "n1", "big", 1, 1)
    big = Share(1, 6 * GiB)
    verdict = room.admit(M, "big", entry("n1", 1, 1, big), big, ALLOC, starvation=0, ttl=30)
    assert not verdict.admitted and room.waiting(M).keys() == {"big"}
    # not starved yet (a bound of 60 s): small work still fits and is admitted
    own(r, "n1", "s3", 1, 1)
    assert admit(room, "s3", small, starvation=60)
    room.release(M, "s3", entry("n1", 1, 1, small))
    # starved (a bound of 0 s): a small job that fits is refused, the room is kept for big
    refused = room.admit(M, "s3", entry("n1", 1, 1, small), small, ALLOC, starvation=0, ttl=30)
    assert not refused.admitted and refused.kept_for == "big"
    for i in range(3):
        room.release(M, f"s{i}", entry("n1", 1, 1, small))
    assert room.admit(M, "big", entry("n1", 1, 1, big), big, ALLOC, starvation=0, ttl=30).admitted
    assert "big" not in room.waiting(M)
    # beside the big job, a small one that fits is admitted again
    assert admit(room, "s3", small, starvation=0)


def test_the_allocatable_room_and_its_settings() -> None:
    machine = Capacity(cpus=2, memory=8 * GiB)
    cap = allocatable(bare_settings(node_memory_reserve="1g"), machine)
    assert (cap.cpus, cap.memory) == (2, 7 * GiB)
    assert allocatable(bare_settings(), machine).memory == 8 * GiB - 512 * MiB
    small = allocatable(bare_settings(node_cpus=1.5, node_memory="4g"), machine)
    assert (small.cpus, small.memory) == (1.5, 4 * GiB - 512 * MiB)
    with pytest.raises(ConfigError, match="OFFLOAD_NODE_MEMORY_RESERVE=8GiB leaves no memory"):
        allocatable(bare_settings(node_memory_reserve="8g"), machine)
    with pytest.raises(ConfigError, match="OFFLOAD_NODE_CPUS=3: this machine has 2"):
        allocatable(bare_settings(node_cpus=3), machine)
    with pytest.raises(Exception, match="node_memory_reserve"):
        bare_settings(node_memory_reserve="lots")
    # the default cap on jobs at once: two per CPU, so half-CPU jobs fill the node
    assert slots(bare_settings(), machine) == 4
    assert slots(bare_settings(), Capacity(cpus=1, memory=GiB)) == 2
    assert slots(bare_settings(worker_slots=3), machine) == 3
