"""Cancelling a queued job and a running one."""

from __future__ import annotations

import time

import docker
import pytest

from offload import JobFailed, JobStatus

from .conftest import Platform, job_containers, wait_for


def test_cancel_a_queued_job(platform: Platform) -> None:
    # cpu-large has no worker on this node, so the job stays queued
    job = platform.client.submit("offload/base", ["true"], cpu=2)
    assert job.status() is JobStatus.QUEUED
    assert job.why_waiting() == "no node of class cpu-large is up and no autoscaler is running"
    assert job.cancel() is JobStatus.CANCELLED
    assert job.why_waiting() is None
    with pytest.raises(JobFailed) as info:
        job.result(timeout=5)
    assert info.value.result.status is JobStatus.CANCELLED
    assert info.value.result.reason == "cancelled"
    assert job.cancel() is JobStatus.CANCELLED  # idempotent


def test_cancel_a_running_job_kills_its_container(
    platform: Platform, docker_client: docker.DockerClient
) -> None:
    job = platform.client.submit("offload/base", ["sh", "-c", "echo started; sleep 120"])
    wait_for(lambda: job.status() is JobStatus.RUNNING, 60, "the job to run")
    wait_for(lambda: [line.text for line in job.logs()] == ["started"], 30, "its first line")
    t0 = time.monotonic()
    assert job.cancel() is JobStatus.RUNNING  # asked; the worker acts
    with pytest.raises(JobFailed) as info:
        job.result(timeout=30)
    assert time.monotonic() - t0 < 15
    assert info.value.result.status is JobStatus.CANCELLED
    assert info.value.result.message == "cancelled while running"
    assert job_containers(docker_client, job.id) == []


def test_cancel_from_the_cli(platform: Platform) -> None:
    job = platform.client.submit("offload/base", ["true"], cpu=2)
    done = platform.cli("cancel", job.id)
    assert done.returncode == 0, done.stderr
    assert f"{job.id} cancelled" in done.stdout
    assert job.status() is JobStatus.CANCELLED
    missing = platform.cli("cancel", "no-such-job")
    assert missing.returncode == 4
    assert "no job with id 'no-such-job'" in missing.stderr
