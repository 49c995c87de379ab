"""A worker SIGKILLed mid-job: restarted at once under the same name, or never again.

Each run asserts the terminal states, how many times the engine started each job's container
(from its event stream, not from offload's records) and that nothing is left behind."""

from __future__ import annotations

import time

import docker

from offload.broker.status import JobStatus, Reason
from tests.conftest import Platform, wait_for
from tests.faults.conftest import Runs, leftovers, wait_terminal

SCRIPT = "sleep 3; echo done > /offload/out/result.txt; echo {}"  # distinct: no memo hits


def running(client: docker.DockerClient, job_ids: list[str]) -> list[str]:
    """The jobs whose containers the engine runs now."""
    up = client.api.containers(filters={"label": "offload.managed=1", "status": "running"})
    ids = {c["Labels"].get("offload.job_id") for c in up}
    return [j for j in job_ids if j in ids]


def test_worker_killed_and_restarted_under_the_same_name(
    fault_platform: Platform, docker_client: docker.DockerClient, runs: Runs
) -> None:
    p = fault_platform
    p.start_worker()
    jobs = [
        p.client.submit(
            "offload/base", ["sh", "-c", SCRIPT.format(i)], name=f"crash-{i}", retries=0
        ).id
        for i in range(6)
    ]
    interrupted = wait_for(
        lambda: len(running(docker_client, jobs)) == 2 and running(docker_client, jobs),
        60,
        "2 containers running",
    )
    p.kill_worker()  # SIGKILL the whole process group: no requeue, no deregistration
    t0 = time.monotonic()
    p.start_worker()  # at once, same node name, same home

    wait_terminal(p, jobs, 90)
    took = time.monotonic() - t0
    records = {j: p.client.job(j).record() for j in jobs}
    assert {j: r.status for j, r in records.items()} == dict.fromkeys(jobs, JobStatus.SUCCEEDED)
    for j in jobs:
        assert p.client.read(records[j].outputs["result.txt"]) == b"done\n"
    counts = runs.count(jobs)
    for j in jobs:
        expected = 2 if j in interrupted else 1
        assert counts[j] == expected, (j, counts[j], j in interrupted)
        assert records[j].attempt == expected
    for j in interrupted:  # the lost attempt spent no retry (retries=0) and says why
        timeline = p.client.job(j).timeline()
        lost = [e for e in timeline if e.status is JobStatus.QUEUED and e.attempt]
        assert [e.reason for e in lost] == [Reason.NODE_LOST]
    assert took < 60, f"took {took:.0f}s after the restart"
    wait_for(lambda: not leftovers(p, docker_client, jobs), 15, "nothing left behind")


def test_worker_killed_for_good_its_job_runs_elsewhere_once(
    fault_platform: Platform,
    docker_client: docker.DockerClient,
    runs: Runs,
) -> None:
    p = fault_platform
    p.env.update(OFFLOAD_WORKER_SLOTS="1")
    p.start_worker()
    job = p.client.submit("offload/base", ["sh", "-c", "sleep 6; echo ok"], name="orphan")
    wait_for(lambda: job.status() is JobStatus.RUNNING, 60, "the job to run")
    first_node = job.record().node

    other = Platform(
        settings=p.settings.model_copy(update={"node_name": "survivor"}),
        env={**p.env, "OFFLOAD_NODE_NAME": "survivor"},
    )
    other.start_worker()
    try:
        p.kill_worker()
        t0 = time.monotonic()
        result = job.result(timeout=90)
        assert result.ok and result.attempt == 2
        assert job.record().node == "survivor" != first_node
        assert time.monotonic() - t0 < 30  # lease 4 s + a sweep + 6 s of work
        assert runs.count([job.id])[job.id] == 2
        wait_for(lambda: not leftovers(p, docker_client, [job.id]), 15, "nothing left behind")
        nodes = {n for n in p.client.broker.redis.smembers("offload:nodes")}
        wait_for(
            lambda: first_node not in p.client.broker.redis.smembers("offload:nodes"),
            20,
            f"the dead node forgotten (nodes: {nodes})",
        )
    finally:
        other.kill_worker()
