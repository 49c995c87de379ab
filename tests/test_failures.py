"""How jobs end when things go wrong: each with a reason a person can act on."""

from __future__ import annotations

import docker
import pytest

from offload import JobFailed, JobStatus
from offload.producer.client import Client

from .conftest import Platform, job_containers


def failed(job) -> JobFailed:  # type: ignore[no-untyped-def]
    with pytest.raises(JobFailed) as info:
        job.result(timeout=120)
    return info.value


def test_non_zero_exit_reports_the_code(
    platform: Platform, docker_client: docker.DockerClient
) -> None:
    job = platform.client.submit("offload/base", ["sh", "-c", "echo about to fail; exit 3"])
    err = failed(job)
    assert err.result.status is JobStatus.FAILED
    assert err.result.reason == "exit_code"
    assert err.result.exit_code == 3
    assert [line.text for line in job.logs()] == ["about to fail"]
    assert job_containers(docker_client, job.id) == []


def test_timeout_kills_the_container(
    platform: Platform, docker_client: docker.DockerClient
) -> None:
    job = platform.client.submit("offload/base", ["sleep", "60"], timeout=2)
    err = failed(job)
    assert err.result.status is JobStatus.TIMED_OUT
    assert err.result.reason == "timeout"
    assert "timeout of 2s" in (err.result.message or "")
    assert err.result.duration is not None and err.result.duration < 20
    assert job_containers(docker_client, job.id) == []


def test_oom_is_reported_as_oom_killed(
    platform: Platform, docker_client: docker.DockerClient
) -> None:
    # tail buffers an endless line in memory until the kernel kills it
    job = platform.client.submit("offload/base", ["tail", "/dev/zero"], memory="32m", timeout=60)
    err = failed(job)
    assert err.result.status is JobStatus.FAILED
    assert err.result.reason == "oom_killed"
    assert "32MiB" in (err.result.message or "")
    assert job_containers(docker_client, job.id) == []


def test_missing_image_fails_with_image_not_found(platform: Platform) -> None:
    job = platform.client.submit("offload/no-such-image:never", ["true"])
    err = failed(job)
    assert err.result.reason == "image_not_found"
    assert "offload/no-such-image:never" in (err.result.message or "")


def test_missing_input_fails_with_input_missing(platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A producer whose store the worker cannot see: the worker's store lacks the input.
    other = platform.settings.model_copy(update={"cache_dir": tmp_path / "other-store"})
    elsewhere = Client(other)
    src = tmp_path / "data.txt"
    src.write_text("only in the other store\n")
    job = elsewhere.submit("offload/base", ["cat", "/offload/in/data"], inputs={"data": src})
    err = failed(job)
    assert err.result.reason == "input_missing"
    assert "'data'" in (err.result.message or "")


def test_retries_rerun_a_failing_job(platform: Platform) -> None:
    job = platform.client.submit("offload/base", ["sh", "-c", "exit 5"], retries=2)
    err = failed(job)
    assert err.result.attempt == 3
    statuses = [e.status for e in job.timeline()]
    assert statuses.count(JobStatus.RUNNING) == 3
    assert statuses[-1] is JobStatus.FAILED
