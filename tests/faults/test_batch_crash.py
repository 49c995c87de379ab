"""A worker SIGKILLed mid-batch (``map(..., batch=K)``): the batch's finished items stay
finished, the item it was running runs again once, the items it had not reached run once,
and nothing is left behind — no warm container, no folder, no chunk lease, no lease.

Two ways to die: the pool process alone (Celery requeues the chunk's message, the node's
process reaper puts the item back) and the whole worker, restarted at once under the same
name (the chunk's delivery is never acknowledged: the sweeper publishes the items still to
run once the chunk's lease is gone)."""

from __future__ import annotations

import signal

import docker
import pytest

from offload.broker import keys
from offload.broker.status import JobStatus
from offload.spec.arrays import chunk_id
from tests.conftest import Platform, wait_for
from tests.faults.conftest import leftovers, wait_terminal

ITEMS = 6
SCRIPT = 'sleep 1; echo "item $OFFLOAD_TASK_INDEX" > /offload/out/r.txt'


@pytest.mark.parametrize("kill", ["pool process", "whole worker"])
def test_worker_killed_mid_batch(
    fault_platform: Platform, docker_client: docker.DockerClient, kill: str
) -> None:
    p = fault_platform
    p.start_worker()
    c = p.client
    array = c.map(
        "offload/base", ["sh", "-c", SCRIPT], each=[{}] * ITEMS, batch=ITEMS, retries=0,
        cache=False,
    )  # fmt: skip
    chunk = chunk_id(array.id, 0, ITEMS)

    def third_running() -> bool:
        return array[2].status() is JobStatus.RUNNING

    wait_for(third_running, 60, "item 2 to run")
    before = array.statuses()
    assert before[:2] == [JobStatus.SUCCEEDED] * 2 and before[3:] == [JobStatus.QUEUED] * 3
    if kill == "pool process":
        for child in p.pool_children():
            child.send_signal(signal.SIGKILL)
    else:
        p.kill_worker()
        p.start_worker()

    wait_terminal(p, array.ids, 90)
    records = [job.record() for job in array]
    assert [r.status for r in records] == [JobStatus.SUCCEEDED] * ITEMS
    assert [c.read(r.outputs["r.txt"]) for r in records] == [
        f"item {i}\n".encode() for i in range(ITEMS)
    ]
    # attempts begun: the finished items and the ones not reached once, the interrupted twice
    assert [r.attempt for r in records] == [1, 1, 2, 1, 1, 1]
    for i in (0, 1):  # finished before the kill: untouched since
        assert records[i].finished_at is not None and records[2].started_at is not None
        assert records[i].finished_at <= records[2].started_at

    r = c.broker.redis

    def clean() -> list[str]:
        found = leftovers(p, docker_client, array.ids)
        found += [
            f"warm container {x['Names']}"
            for x in docker_client.api.containers(all=True, filters={"name": f"offload-{chunk}"})
        ]
        if r.exists(keys.chunk(chunk)):
            found.append("chunk lease")
        return found

    wait_for(lambda: not clean(), 30, "nothing left behind")
