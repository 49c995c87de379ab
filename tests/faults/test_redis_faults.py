"""Redis killed with kill -9 during a burst of submissions, and Redis away for several leases
while jobs run: every job that got an id ends, each container runs once, nothing is left.

The Redis here runs as `offload up` runs it: append-only file, fsync on every write. With
``appendfsync everysec`` (Redis's default) a kill -9 may lose the last second of writes: a
submission acknowledged in that second may be gone (docs/security.md states the window)."""

from __future__ import annotations

import threading
import time

import docker

from offload.broker.status import JobStatus
from offload.errors import OffloadError
from tests.conftest import Platform, wait_for
from tests.faults.conftest import RedisProcess, Runs, leftovers, wait_terminal


def containers_running(client: docker.DockerClient, job_ids: list[str]) -> int:
    """Running containers of these jobs (other tests' containers may run beside them)."""
    up = client.api.containers(filters={"label": "offload.managed=1", "status": "running"})
    return sum(1 for c in up if c["Labels"].get("offload.job_id") in job_ids)


def test_redis_killed_during_a_submission_burst(
    fault_platform: Platform,
    own_redis: RedisProcess,
    docker_client: docker.DockerClient,
    runs: Runs,
) -> None:
    p = fault_platform
    p.start_worker()
    client = p.client
    ids: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def submit_burst() -> None:
        for i in range(24):
            if stop.is_set():
                return
            try:
                job = client.submit(
                    "offload/base", ["sh", "-c", f"sleep 1; echo {i}"], name=f"burst-{i}"
                )
                ids.append(job.id)
            except OffloadError as exc:  # Redis is down: the caller is told, no id
                refused.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.2)

    submitter = threading.Thread(target=submit_burst)
    submitter.start()
    try:
        wait_for(
            lambda: len(ids) >= 4 and containers_running(docker_client, list(ids)),
            60,
            "jobs running",
        )
        own_redis.kill9()
        time.sleep(2)  # the outage itself
        own_redis.start()
        submitter.join(120)
    finally:
        stop.set()
        submitter.join(10)
    assert refused, "the burst never met the dead Redis"
    assert len(ids) >= 10

    wait_terminal(p, ids, 150)
    statuses = {j: client.job(j).status() for j in ids}
    assert set(statuses.values()) == {JobStatus.SUCCEEDED}, statuses
    counts = runs.count(ids)
    assert {j: counts[j] for j in ids} == dict.fromkeys(ids, 1)
    wait_for(lambda: not leftovers(p, docker_client, ids), 20, "nothing left behind")


def test_redis_away_for_several_leases_while_jobs_run(
    fault_platform: Platform,
    own_redis: RedisProcess,
    docker_client: docker.DockerClient,
    runs: Runs,
) -> None:
    """Jobs that end during the outage are journaled and recorded when Redis is back; jobs
    still running then are not taken for dead: every job runs exactly once."""
    p = fault_platform
    p.start_worker()
    client = p.client
    ids = [
        client.submit(
            "offload/base", ["sh", "-c", f"sleep 8; echo {i} > /offload/out/n"], name=f"out-{i}"
        ).id
        for i in range(4)
    ]
    wait_for(lambda: containers_running(docker_client, ids) == 2, 60, "two jobs running")
    own_redis.kill9()
    time.sleep(16)  # four leases (4 s): both running jobs (8 s) end while Redis is away
    own_redis.start()

    wait_terminal(p, ids, 120)
    records = {j: client.job(j).record() for j in ids}
    assert {j: r.status for j, r in records.items()} == dict.fromkeys(ids, JobStatus.SUCCEEDED)
    assert {j: r.attempt for j, r in records.items()} == dict.fromkeys(ids, 1)
    for i, j in enumerate(ids):
        assert client.read(records[j].outputs["n"]) == f"{i}\n".encode()
    counts = runs.count(ids)
    assert {j: counts[j] for j in ids} == dict.fromkeys(ids, 1)
    journal = p.settings.journal_dir
    wait_for(lambda: not list(journal.glob("*.json")), 10, "the journal replayed")
    wait_for(lambda: not leftovers(p, docker_client, ids), 20, "nothing left behind")
    assert "journaled" in (p.settings.home / "worker.log").read_text(errors="replace")
