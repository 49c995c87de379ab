"""Autoscaling end to end: `offload autoscaler` with real worker nodes — local processes
and docker containers — from zero, back to the minimum, never killing a busy node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import psutil
import pytest

from offload import JobStatus
from offload.broker.nodes import NodeRegistry

from .conftest import Platform, make_platform, wait_for

LIMITS = {"cpu-small": {"max_nodes": 2, "jobs_per_node": 2, "idle_window": 4}}


class Scaled:
    def __init__(self, platform: Platform, provider: str) -> None:
        self.p = platform
        self.provider = provider
        log = (platform.settings.home / "autoscaler.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "offload", "autoscaler", "--provider", provider,
             "--interval", "0.5", "--metrics-port", "0"],
            env=platform.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.registry = NodeRegistry(platform.client.broker.redis, lost_after=4)

    def nodes(self) -> list[str]:
        return [n.name for n in self.registry.nodes() if n.state != "lost"]

    def log(self) -> str:
        return (self.p.settings.home / "autoscaler.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


def scaled_platform(redis_server: str, home: Path, **env: str) -> Platform:
    return make_platform(
        redis_server, home,
        OFFLOAD_AUTOSCALE=json.dumps(LIMITS), OFFLOAD_LOST_AFTER="4",
        OFFLOAD_HEARTBEAT_INTERVAL="1", **env,
    )  # fmt: skip


def cleanup_local(p: Platform) -> None:
    from offload.autoscaler.local import LocalProvider

    provider = LocalProvider(p.settings)
    for node in provider.nodes():
        provider.drain(node.name)
    deadline = time.monotonic() + 30
    while provider.nodes() and time.monotonic() < deadline:
        time.sleep(0.5)
    for node in provider.nodes():  # a test failed midway: do not leave processes behind
        pid = provider.pid(node.name)
        if pid:
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def local(
    redis_server: str, docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[Scaled]:
    p = scaled_platform(redis_server, tmp_path / "home")
    s = Scaled(p, "local")
    yield s
    s.stop()
    cleanup_local(p)


def test_from_zero_a_burst_runs_and_nodes_drain_back_to_the_minimum(local: Scaled) -> None:
    assert local.nodes() == []
    jobs = [
        local.p.client.submit("offload/base", ["sh", "-c", f"sleep 0.5; echo {i}"], cache=False)
        for i in range(20)
    ]
    # a queued job says why it waits: the autoscaler's word on its class
    why = wait_for(
        lambda: (w := jobs[-1].why_waiting()) is None or ("desired" in w and w), 30, "a reason"
    )
    assert why is True or "class cpu-small: desired 2" in why, why
    results = [job.result(timeout=180) for job in jobs]
    assert all(r.ok for r in results), local.log()
    used = {r.node for r in results}
    assert 1 <= len(used) <= 2  # never above max_nodes
    assert all(r.attempt == 1 for r in results)
    # idle for the window (4 s) → drained back to min 0, processes gone
    wait_for(lambda: local.nodes() == [], 60, "nodes to drain back to zero", interval=0.5)


def test_scale_in_never_interrupts_a_running_job(local: Scaled) -> None:
    long = local.p.client.submit("offload/base", ["sh", "-c", "sleep 14; echo done"], cache=False)
    short = [
        local.p.client.submit("offload/base", ["sh", "-c", "sleep 1"], cache=False)
        for _ in range(5)
    ]
    assert all(j.result(timeout=120).ok for j in short)
    wait_for(lambda: long.status() is JobStatus.RUNNING, 60, "the long job to run")
    # after the idle window the idle node goes; the busy one keeps running its job
    busy = long.record().node
    wait_for(lambda: len(local.nodes()) == 1, 60, "the idle node to be drained", interval=0.5)
    assert local.nodes() == [busy]
    result = long.result(timeout=60)
    assert result.ok and result.attempt == 1
    assert [line.text for line in long.logs()] == ["done"]
    assert [e.status for e in long.timeline()].count(JobStatus.RUNNING) == 1
    wait_for(lambda: local.nodes() == [], 60, "the last node to drain", interval=0.5)


def test_a_node_killed_outright_its_job_runs_elsewhere_once(
    local: Scaled, docker_client: docker.DockerClient
) -> None:
    from offload.autoscaler.local import LocalProvider

    job = local.p.client.submit("offload/base", ["sh", "-c", "sleep 5; echo ok"], cache=False)
    wait_for(lambda: job.status() is JobStatus.RUNNING, 90, "the job to run")
    node = job.record().node
    assert node is not None
    pid = LocalProvider(local.p.settings).pid(node)
    assert pid is not None
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        proc.kill()  # no warm shutdown, no chance to requeue
    result = job.result(timeout=120)
    assert result.ok and result.attempt == 2, local.log()
    assert result.node != node
    statuses = [e.status for e in job.timeline()]
    assert statuses.count(JobStatus.SUCCEEDED) == 1
    assert (
        docker_client.api.containers(all=True, filters={"label": f"offload.job_id={job.id}"}) == []
    )


def test_docker_provider_from_zero_and_back(
    redis_server: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    try:
        docker_client.images.get("offload/worker")
    except docker.errors.ImageNotFound:
        pytest.fail("offload/worker is not built; run `make setup`", pytrace=False)
    p = scaled_platform(redis_server, tmp_path / "home")
    s = Scaled(p, "docker")
    seen: set[str] = set()

    def node_containers() -> list[dict[str, object]]:
        found = docker_client.api.containers(all=True, filters={"label": "offload.provider=docker"})
        mine = [c for c in found if c["Labels"].get("offload.node") in seen]
        return mine

    try:
        jobs = [
            p.client.submit("offload/base", ["sh", "-c", f"echo {i}"], cache=False)
            for i in range(20)
        ]
        results = [job.result(timeout=240) for job in jobs]
        assert all(r.ok for r in results), s.log()
        seen.update(str(r.node) for r in results)
        assert 1 <= len(seen) <= 2  # at most max_nodes containers ran the burst
        assert node_containers()  # the jobs ran in the provider's node containers
        # idle window over: the nodes drain, their containers exit and are removed
        wait_for(lambda: s.nodes() == [] and node_containers() == [], 120,
                 "the node containers to drain", interval=1)  # fmt: skip
    finally:
        s.stop()
        for c in node_containers():  # only when the test failed midway
            docker_client.api.remove_container(c["Id"], force=True)
