"""`offload down` lets running jobs finish, and `--force` hands them back to the queue.

The whole embedded platform (`offload up`) on a temporary home and free loopback ports.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from offload.broker.status import JobStatus, Reason
from offload.producer.client import Client
from offload.producer.job import Job
from tests.conftest import bare_settings

from .conftest import free_port, job_containers, offload_cli, wait_for


def offload(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return offload_cli(env, *args, timeout=timeout)


class Embedded:
    def __init__(self, home: Path) -> None:
        self.env = {
            **os.environ,
            "OFFLOAD_HOME": str(home),
            "OFFLOAD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "OFFLOAD_FLOWER_PORT": str(free_port()),
            "OFFLOAD_NODE_NAME": f"down-{uuid.uuid4().hex[:8]}",
        }
        self.settings = bare_settings(
            home=home,
            redis_url=self.env["OFFLOAD_REDIS_URL"],
            node_name=self.env["OFFLOAD_NODE_NAME"],
        )

    def up(self) -> None:
        done = offload(self.env, "up")
        assert done.returncode == 0, done.stdout + done.stderr

    def down(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = offload(self.env, "down", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def client(self) -> Client:  # a new one after each `up`: Redis was restarted
        return Client(self.settings)

    def running(self, job: Job) -> bool:
        status = job.status()
        assert not status.terminal, job.record()
        return status == JobStatus.RUNNING


@pytest.fixture
def embedded(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Embedded]:
    platform = Embedded(tmp_path / "home")
    try:
        yield platform
    finally:
        offload(platform.env, "down", "--force")


def test_down_waits_for_a_running_job_to_finish(embedded: Embedded) -> None:
    embedded.up()
    job = embedded.client().submit(
        "offload/base", ["sh", "-c", "sleep 5; echo finished"], name="five-seconds", cache=False
    )
    wait_for(lambda: embedded.running(job), 60, "the job to run")

    down = embedded.down("--timeout", "120")

    assert "waiting for 1 running job(s)" in down.stdout, down.stdout
    assert f"{job.id} five-seconds" in down.stdout
    assert "killed" not in down.stdout and "handed back" not in down.stdout
    embedded.up()  # the record outlives `down`: Redis keeps it in its AOF
    result = Job(embedded.client(), job.id).result(timeout=30)
    assert result.ok and result.attempt == 1
    assert [line.text for line in Job(embedded.client(), job.id).logs()] == ["finished"]


def test_down_force_hands_a_running_job_back_and_up_runs_it(
    embedded: Embedded, docker_client: docker.DockerClient
) -> None:
    embedded.up()
    job = embedded.client().submit(
        "offload/base", ["sh", "-c", "sleep 8; echo finished"], name="handed-back", cache=False
    )
    wait_for(lambda: embedded.running(job), 60, "the job to run")
    assert job_containers(docker_client, job.id)

    down = embedded.down("--force")

    assert "killed" in down.stdout and "handed back" in down.stdout, down.stdout
    assert f"{job.id} handed-back" in down.stdout
    assert not job_containers(docker_client, job.id)
    embedded.up()
    client = embedded.client()
    # queued again by `down`, not lost, and its retry budget (0) untouched: it runs again
    handed = [e for e in client.broker.records.timeline(job.id) if e.reason == Reason.HANDED_BACK]
    assert [e.status for e in handed] == [JobStatus.QUEUED], client.broker.records.timeline(job.id)
    result = Job(client, job.id).result(timeout=60)
    assert result.ok, result
    assert not job_containers(docker_client, job.id)


def test_down_help_says_it_waits_and_how_to_force() -> None:
    done = offload(dict(os.environ), "down", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "--timeout SECONDS" in text and "wait until they finish" in text
    assert "--force" in text and "hand their running jobs back to the queue" in text
