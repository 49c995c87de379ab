"""The node registry: workers register and heartbeat, show their running jobs, drain without
dropping work, and a lost node's jobs run again elsewhere — once."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from offload import JobStatus
from offload.broker.app import route
from offload.broker.nodes import NodeRegistry

from .conftest import Platform, job_containers, ready_messages, wait_for

WORKER = {"OFFLOAD_WORKER_SLOTS": "1", "OFFLOAD_WORKER_CLASSES": "cpu-small"}


def nodes(p: Platform) -> dict[str, dict[str, Any]]:
    out = p.cli("nodes", "--json", timeout=30)
    assert out.returncode == 0, out.stderr
    return {n["name"]: n for n in json.loads(out.stdout)}


def sibling(p: Platform, **extra: str) -> Platform:
    """Another worker node on the same Redis database and home (so the same cache)."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    env = {**p.env, "OFFLOAD_NODE_NAME": name, **extra}
    return Platform(settings=p.settings.model_copy(update={"node_name": name}), env=env)


def running_on(p: Platform, job_id: str, node: str, attempt: int) -> bool:
    rec = p.client.job(job_id).record()
    return rec.status is JobStatus.RUNNING and rec.node == node and rec.attempt == attempt


@pytest.fixture
def siblings(private_platform: Platform) -> Iterator[list[Platform]]:
    started: list[Platform] = []
    yield started
    for s in started:
        s.kill_worker()


def test_worker_registers_heartbeats_and_drains_on_sigterm(private_platform: Platform) -> None:
    p = private_platform
    p.env.update(WORKER, OFFLOAD_WORKER_SLOTS="2")
    p.start_worker()
    name = p.settings.node_name
    node = nodes(p)[name]
    assert node["classes"] == ["cpu-small"] and node["slots"] == 2
    assert node["provider"] == "manual" and node["state"] == "up"
    assert node["running"] == [] and node["heartbeat_age"] < 3
    time.sleep(2.5)
    assert nodes(p)[name]["heartbeat_age"] < 3  # still beating

    job = p.client.submit("offload/base", ["sh", "-c", "sleep 12; echo ok"], name="drained")
    wait_for(lambda: nodes(p)[name]["running"] == [job.id], 60, "the job in the running set")
    table = p.cli("nodes", timeout=30).stdout.splitlines()  # stdout is a pipe: tab-separated
    row = next(line.split("\t") for line in table if line.startswith(name))
    assert row[1:6] == ["manual", "cpu-small", "2", "1", job.id] and row[7] == "up"

    assert p.proc is not None
    os.kill(p.proc.pid, signal.SIGTERM)  # warm shutdown: stop consuming, finish, exit
    wait_for(lambda: nodes(p)[name]["state"] == "draining", 10, "the node to show draining")
    assert nodes(p)[name]["running"] == [job.id]
    result = job.result(timeout=60)
    assert result.ok and result.attempt == 1
    assert [line.text for line in job.logs()] == ["ok"]
    wait_for(lambda: name not in nodes(p), 30, "the node to deregister")
    assert p.proc.wait(30) == 0


def test_draining_flag_in_the_registry_drains_the_node(private_platform: Platform) -> None:
    p = private_platform
    p.env.update(WORKER)
    p.start_worker()
    name = p.settings.node_name
    job = p.client.submit("offload/base", ["sh", "-c", "sleep 3; echo ok"], name="flagged")
    wait_for(lambda: nodes(p)[name]["running"] == [job.id], 60, "the job in the running set")
    NodeRegistry(p.client.broker.redis, lost_after=p.settings.lost_after).set_draining(
        name
    )  # what the autoscaler does
    assert job.result(timeout=60).ok
    wait_for(lambda: name not in nodes(p), 30, "the node to deregister")
    assert p.proc is not None and p.proc.wait(30) == 0


def test_lost_node_jobs_run_elsewhere_once(
    private_platform: Platform, siblings: list[Platform], docker_client: docker.DockerClient
) -> None:
    p = private_platform
    p.env.update(WORKER, OFFLOAD_LOST_AFTER="3", OFFLOAD_LEASE_TTL="3", OFFLOAD_SWEEP_INTERVAL="1")
    # three live nodes of the same class before the job exists (a node started while the job
    # runs could take longer to come up than the job takes to finish)
    p.start_worker()
    for _ in range(2):
        siblings.append(sibling(p))
        siblings[-1].start_worker()
    platforms = {q.settings.node_name: q for q in (p, *siblings)}
    assert set(platforms) <= set(nodes(p))
    script = "echo attempt start; sleep 10; echo done > /offload/out/result.txt"
    job = p.client.submit("offload/base", ["sh", "-c", script], name="lost-node")

    def running_first() -> str | None:
        rec = job.record()
        return rec.node if rec.status is JobStatus.RUNNING and rec.attempt == 1 else None

    lost = str(wait_for(running_first, 60, "the job to run on a first node"))
    live = set(platforms) - {lost}
    first = {str(c["Id"]) for c in job_containers(docker_client, job.id)}

    platforms[lost].kill_worker()  # SIGKILL the whole node: no requeue, no deregistration
    t0 = time.monotonic()

    def recovered() -> str | None:
        rec = job.record()
        ok = rec.status is JobStatus.RUNNING and rec.attempt == 2 and rec.node in live
        return rec.node if ok else None

    second = wait_for(recovered, 20, "the job to run again on a live node")
    assert time.monotonic() - t0 < 15  # lease 3 s + a sweep (1 s) + pick-up
    wait_for(lambda: lost not in nodes(p), 10, "the lost node forgotten")
    assert nodes(p)[second]["running"] == [job.id]

    # the broker hands the dead node's message out again (as after the visibility timeout)
    rec = job.record()
    route(p.client.broker.app, job.id, rec.resource_class, rec.name, rec.spec.summary())
    wait_for(
        lambda: not ready_messages(p.client.broker.redis, "cpu-small"),
        10,
        "the stale message taken",
    )
    time.sleep(1)
    assert running_on(p, job.id, second, 2), "the stale delivery must not start attempt 3"

    result = job.result(timeout=60)
    assert result.ok and result.attempt == 2
    assert p.client.read(result.outputs["result.txt"]) == b"done\n"
    timeline = job.timeline()
    assert [e.status for e in timeline].count(JobStatus.SUCCEEDED) == 1
    assert [e.attempt for e in timeline if e.status is JobStatus.RUNNING] == [1, 2]
    requeued = [e for e in timeline if e.status is JobStatus.QUEUED and e.attempt == 1]
    assert [e.reason for e in requeued] == ["node_lost"]
    assert job_containers(docker_client, job.id) == []
    assert not first & {c["Id"] for c in docker_client.api.containers(all=True)}
    assert "acknowledging this delivery without running" in p.worker_log()


def test_pool_process_killed_with_another_node_up(
    private_platform: Platform, siblings: list[Platform]
) -> None:
    """Celery requeues the dead process's message; wherever it lands, the job runs once more."""
    p = private_platform
    p.env.update(WORKER)
    p.start_worker()
    siblings.append(sibling(p))
    siblings[-1].start_worker()  # up before the job: its start cannot outlast the job
    platforms = {q.settings.node_name: q for q in (p, *siblings)}
    job = p.client.submit("offload/base", ["sh", "-c", "sleep 4; echo ok"], name="pool-kill")

    def running_first() -> str | None:
        rec = job.record()
        return rec.node if rec.status is JobStatus.RUNNING and rec.attempt == 1 else None

    node = platforms[str(wait_for(running_first, 60, "the job to run"))]
    (child,) = [c for c in node.pool_children() if c.pid == job.record().pid]
    os.kill(child.pid, signal.SIGKILL)
    result = job.result(timeout=60)
    assert result.ok and result.attempt == 2
    timeline = job.timeline()
    assert [e.status for e in timeline].count(JobStatus.SUCCEEDED) == 1
    assert [e.attempt for e in timeline if e.status is JobStatus.RUNNING] == [1, 2]
    wait_for(lambda: all(not n["running"] for n in nodes(p).values()), 10, "running sets empty")
