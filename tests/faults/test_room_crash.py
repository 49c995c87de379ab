"""A pool process SIGKILLed while its attempt holds room: the room comes back (once the process
reaper has queued the job again), the job runs again once, and a job that did not fit beside
it runs too — never at the same time as either of its attempts (the engine's own events)."""

from __future__ import annotations

import itertools
import os
import signal

import docker

from offload.broker.status import JobStatus
from tests.conftest import Platform, wait_for
from tests.faults.conftest import Runs, leftovers

WHOLE = {"cpu": 2, "memory": "1g"}  # the node's 2 CPUs: two never fit together


def test_a_killed_pool_process_gives_its_room_back(
    fault_platform: Platform, docker_client: docker.DockerClient, runs: Runs
) -> None:
    p = fault_platform
    p.env.update(
        OFFLOAD_NODE_CPUS="2", OFFLOAD_ADMISSION_WAIT="1", OFFLOAD_WORKER_CLASSES="cpu-large"
    )
    p.start_worker()
    c, room, machine = p.client, p.client.broker.room, p.settings.machine
    first = c.submit("offload/base", ["sh", "-c", "sleep 3; echo a"], cache=False, **WHOLE)
    wait_for(lambda: first.status() is JobStatus.RUNNING, 60, "the first job running")
    second = c.submit("offload/base", ["sh", "-c", "sleep 2; echo b"], cache=False, **WHOLE)
    (held,) = room.holders(machine).values()
    assert held.attempt == 1 and held.share.cpus == 2
    os.kill(first.record().pid, signal.SIGKILL)  # the pool process holding the room

    first_result = first.result(timeout=90)
    second_result = second.result(timeout=90)
    assert first_result.ok and second_result.ok
    ran = [e.attempt for e in first.timeline() if e.status is JobStatus.RUNNING]
    assert len(ran) == 2 and ran[0] == 1, ran  # later attempts may have waited for room
    assert runs.count([first.id, second.id]) == {first.id: 2, second.id: 1}
    spans = runs.intervals({first.id, second.id})
    # the killed attempt's container is removed before its room is given out: none overlap
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        assert end <= start, f"{a} and {b} ran at once: {spans}"
    wait_for(lambda: room.holders(machine) == {}, 10, "the room given back")
    assert leftovers(p, docker_client, [first.id, second.id]) == []
