"""At-least-once delivery made effectively once: a worker dies mid-job, the job still
succeeds exactly once, and nothing of the dead attempt is left behind."""

from __future__ import annotations

import os
import signal

import docker

from offload import JobStatus

from .conftest import Platform, job_containers, ready_messages, unacked_jobs, wait_for

SCRIPT = "echo attempt start; sleep 4; echo done > /offload/out/result.txt"


def running_container(docker_client: docker.DockerClient, job_id: str) -> str:
    def find() -> str | None:
        running = [c for c in job_containers(docker_client, job_id) if c["State"] == "running"]
        return str(running[0]["Id"]) if running else None

    return str(wait_for(find, 60, "the job's container to run"))


def check_ran_once_more(
    job_id: str, platform: Platform, docker_client: docker.DockerClient, first: str
) -> None:
    job = platform.client.job(job_id)
    result = job.result(timeout=120)
    assert result.ok and result.attempt == 2
    assert platform.client.read(result.outputs["result.txt"]) == b"done\n"
    statuses = [e.status for e in job.timeline()]
    assert statuses.count(JobStatus.SUCCEEDED) == 1
    assert statuses.count(JobStatus.RUNNING) == 2
    assert [e.attempt for e in job.timeline() if e.status is JobStatus.RUNNING] == [1, 2]
    assert job_containers(docker_client, job_id) == []
    assert first not in {c["Id"] for c in docker_client.api.containers(all=True)}


def test_pool_process_sigkilled_mid_job(
    private_platform: Platform, docker_client: docker.DockerClient
) -> None:
    p = private_platform
    p.env["OFFLOAD_WORKER_SLOTS"] = "1"
    p.start_worker()
    job = p.client.submit("offload/base", ["sh", "-c", SCRIPT], name="redelivery")
    first = running_container(docker_client, job.id)
    (child,) = p.pool_children()
    os.kill(child.pid, signal.SIGKILL)
    check_ran_once_more(job.id, p, docker_client, first)
    # Every message of the job is consumed and acknowledged in the end (late: after its task
    # returned). Two may be out: Celery requeues the dead process's delivery and the node's
    # process reaper queues the job again; the second one a worker takes is acknowledged
    # without running (the job is done): no third attempt.
    r = p.client.broker.redis

    def drained() -> bool:
        return job.id not in unacked_jobs(r) and not ready_messages(r, "cpu-small")

    wait_for(drained, 30, "every message of the job consumed and acknowledged")
    assert job.record().attempt == 2


def test_whole_worker_sigkilled_then_another_takes_over(
    private_platform: Platform, docker_client: docker.DockerClient
) -> None:
    p = private_platform
    # a short visibility window so the broker hands the unacknowledged job out again soon
    p.env.update(OFFLOAD_MAX_TIMEOUT="10", OFFLOAD_VISIBILITY_MARGIN="5")
    p.start_worker()
    job = p.client.submit("offload/base", ["sh", "-c", SCRIPT], timeout=10)
    first = running_container(docker_client, job.id)
    p.kill_worker()  # SIGKILL the main process and its pool: no chance to requeue
    assert job.status() is JobStatus.RUNNING
    p.start_worker()
    check_ran_once_more(job.id, p, docker_client, first)


def test_redelivery_of_a_finished_job_does_not_run_it_again(platform: Platform) -> None:
    job = platform.client.submit("offload/base", ["sh", "-c", "echo ran"], name="once")
    assert job.result(timeout=60).ok
    # deliver the same message again, as the broker would after a lost acknowledgement
    from offload.broker.app import route

    rec = job.record()
    route(platform.client.broker.app, job.id, rec.resource_class, rec.name, rec.spec.summary())
    r = platform.client.broker.redis
    wait_for(lambda: not ready_messages(r, "cpu-small"), 30, "the message to be consumed")
    wait_for(lambda: job.id not in unacked_jobs(r), 15, "the duplicate to be acknowledged")
    again = platform.client.job(job.id)
    assert again.result(timeout=10).attempt == 1
    assert [line.text for line in again.logs()] == ["ran"]
