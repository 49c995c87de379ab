"""A worker SIGKILLed right after a parent job succeeds: its children still run, once; Redis
SIGKILLed in the middle of a cancel with descendants: nothing failed upstream, nothing stuck.

The kill lands somewhere around the parent's release of its children (before it, and the
sweeper releases them; after it, and they are simply queued); either way no child waits for
ever and nothing runs twice. tests/test_pipeline.py covers the exact window deterministically.
"""

from __future__ import annotations

import time

import docker
import pytest

from offload.broker.pipeline import Pipeline
from offload.broker.records import JobRecords
from offload.broker.status import JobStatus, Reason
from offload.errors import BrokerError
from tests.conftest import Platform, wait_for
from tests.faults.conftest import RedisProcess, Runs, leftovers, wait_terminal


def test_children_run_once_when_the_parents_worker_dies_as_it_succeeds(
    fault_platform: Platform, docker_client: docker.DockerClient, runs: Runs
) -> None:
    p = fault_platform
    p.start_worker()
    c = p.client
    parent = c.submit("offload/base", ["sh", "-c", "echo 42 > /offload/out/n"], name="parent")
    kids = [
        c.submit(
            "offload/base",
            ["sh", "-c", f"cat /offload/in/n > /offload/out/k; echo {i} >> /offload/out/k"],
            inputs={"n": parent.output("n")},
            name=f"kid-{i}",
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while parent.status() is not JobStatus.SUCCEEDED:  # poll tightly: the kill must be quick
        assert time.monotonic() < deadline, "the parent never succeeded"
        time.sleep(0.01)
    p.kill_worker()
    p.start_worker()

    ids = [k.id for k in kids]
    wait_terminal(p, ids, 90)
    for i, kid in enumerate(kids):
        result = kid.result(timeout=5)
        assert c.read(result.outputs["k"]) == f"42\n{i}\n".encode()
    counts = runs.count([parent.id, *ids])
    assert {j: counts[j] for j in [parent.id, *ids]} == dict.fromkeys([parent.id, *ids], 1)
    wait_for(lambda: not leftovers(p, docker_client, [parent.id, *ids]), 20, "nothing left")


def test_redis_killed_in_the_middle_of_a_cancel_with_descendants(
    fault_platform: Platform,
    own_redis: RedisProcess,
    docker_client: docker.DockerClient,
    runs: Runs,
) -> None:
    """Redis dies after the descendants are cancelled and before the job is: the caller gets
    an error, what was cancelled stays cancelled (fsynced), the job runs on untouched, and
    the same cancel, asked again, finishes the work. Nothing is failed upstream on the way."""
    p = fault_platform
    p.start_worker()
    c = p.client
    root = c.submit("offload/base", ["sleep", "60"], name="root", cache=False)
    kids = [c.submit("offload/base", ["true"], after=[root]) for _ in range(2)]
    grandkid = c.submit("offload/base", ["true"], after=kids)
    wait_for(lambda: root.status() is JobStatus.RUNNING, 60, "the root to run")

    class RedisDiesFirst(JobRecords):
        def request_cancel(self, job_id: str) -> JobStatus:
            if job_id == root.id:
                own_redis.kill9()
            return super().request_cancel(job_id)

    records = RedisDiesFirst.from_settings(c.broker.redis, p.settings)
    with pytest.raises(BrokerError):
        Pipeline(records, c.broker.app).cancel_with_descendants(root.id)
    own_redis.start()

    below = [*kids, grandkid]
    assert [j.status() for j in below] == [JobStatus.CANCELLED] * 3
    assert root.status() is JobStatus.RUNNING  # the cancel never reached it
    root.cancel(with_descendants=True)  # asked again: the rest is done
    wait_for(lambda: root.status() is JobStatus.CANCELLED, 60, "the root cancelled")
    assert [j.record().reason for j in below] == [Reason.CANCELLED] * 3
    ids = [root.id, *(j.id for j in below)]
    assert runs.count(ids) == {root.id: 1}
    wait_for(lambda: not leftovers(p, docker_client, ids), 30, "nothing left")
