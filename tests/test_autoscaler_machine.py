"""Defect i: on one machine the local provider never gives out more CPU or memory than the
machine has — the embedded worker included; the jobs beyond that wait, and say why. What a
node uses is what its running jobs hold of the machine's room (an idle embedded worker holds
nothing), and at least one job of its class for a node the provider started.

The machine's budget is injected (``LocalProvider(machine=...)``); the nodes are stand-in
processes (``python=`` a script that sleeps), so the budget is all that is exercised.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.autoscaler.local import LocalProvider, MachineBudget
from offload.autoscaler.loop import Autoscaler
from offload.autoscaler.policy import ClassLimits, Limits
from offload.broker import keys
from offload.broker.app import route
from offload.broker.nodes import NodeRegistry
from offload.broker.room import Share, entry
from offload.broker.scaling import read_status
from offload.errors import ProviderError
from offload.spec import GiB, JobSpec

from .conftest import Platform, make_platform, wait_for

BUDGET = MachineBudget(cpus=3, memory=16 * GiB)


@pytest.fixture
def plat(redis_server: str, tmp_path: Path) -> Platform:
    return make_platform(redis_server, tmp_path / "home")


@pytest.fixture
def provider(plat: Platform, tmp_path: Path) -> Iterator[LocalProvider]:
    node = tmp_path / "node.sh"  # a node process that waits to be drained
    node.write_text("#!/bin/sh\nexec sleep 120\n")
    node.chmod(0o755)
    provider = LocalProvider(plat.settings, slots=1, python=str(node), machine=BUDGET)
    yield provider
    for n in provider.nodes():
        provider.drain(n.name)
    wait_for(lambda: provider.nodes() == [], 30, "the stand-in nodes to exit")


def register(plat: Platform, name: str, provider: str = "manual") -> None:
    NodeRegistry(plat.client.broker.redis, lost_after=15).register(
        name, provider=provider, classes=["cpu-small"], slots=1, cpus=3, memory=16 * GiB, gpus=0
    )


def hold(plat: Platform, node: str, job_id: str, need: Share) -> None:
    """What a running attempt on ``node`` holds of this machine's room."""
    r = plat.client.broker.redis
    r.hset(keys.node_owners(node), job_id, "1:1")
    alloc = Share(BUDGET.cpus, BUDGET.memory)
    room = plat.client.broker.room
    held = entry(node, 1, 1, need)
    verdict = room.admit(plat.settings.machine, job_id, held, need, alloc, starvation=60, ttl=30)
    assert verdict.admitted


def test_a_burst_starts_no_node_beyond_the_machine(plat: Platform, provider: LocalProvider) -> None:
    register(plat, plat.settings.node_name)  # the embedded worker, running a 1-CPU job
    hold(plat, plat.settings.node_name, "running-1", Share(1, 1 * GiB))
    register(plat, "another-host")  # a node of another machine does not count here
    client = plat.client
    queued = []
    for _ in range(10):
        job_id = uuid.uuid4().hex
        client.broker.records.create(
            job_id, JobSpec(image="offload/base", command=("true",)), "cpu-small"
        )
        route(client.broker.app, job_id, "cpu-small", "offload/base", "burst")
        queued.append(job_id)
    limits = Limits(per_class={"cpu-small": ClassLimits(max_nodes=8, jobs_per_node=1)})
    scaler = Autoscaler(client.broker, provider, ["cpu-small"], limits)
    t = time.time()

    first = scaler.tick(t)
    # the two registered nodes count as capacity, 4 more wanted (a step); 2 fit: the
    # embedded worker's running job holds 1 CPU, a node of cpu-small needs 1 CPU / 2 GiB
    assert first.start == {"cpu-small": 2}
    assert len(provider.nodes()) == 2
    reason = read_status(client.broker.redis, "cpu-small")["reason"]  # type: ignore[index]
    assert "starting 2 of 4 (at machine capacity: 1 CPUs / 1 GiB in use" in reason, reason

    again = scaler.tick(t + 1)
    assert again.start == {} and len(provider.nodes()) == 2
    full = "at machine capacity: 3 CPUs / 5 GiB in use (this machine: 3 CPUs / 16 GiB)"
    status = read_status(client.broker.redis, "cpu-small")
    assert status is not None and status["reason"].startswith(full), status
    assert status["desired"] == "8" and status["starting"] == "2"
    why = client.job(queued[-1]).why_waiting()
    assert why is not None and why.startswith(full), why

    with pytest.raises(ProviderError, match="at machine capacity: 3 CPUs"):
        provider.start_nodes("cpu-small", 1)
    assert len(provider.nodes()) == 2


def test_an_idle_machine_starts_a_node_for_a_large_job(plat: Platform, tmp_path: Path) -> None:
    """The README's case: a 2-CPU machine whose embedded worker serves cpu-small and is idle
    starts a cpu-large node for a 2-CPU job; what that node holds then counts."""
    node = tmp_path / "node.sh"
    node.write_text("#!/bin/sh\nexec sleep 120\n")
    node.chmod(0o755)
    small_machine = MachineBudget(cpus=2, memory=23 * GiB)
    provider = LocalProvider(plat.settings, python=str(node), machine=small_machine)
    register(plat, plat.settings.node_name)  # idle: holds nothing
    try:
        room = provider.headroom(["cpu-small", "cpu-large"])
        assert (room["cpu-small"].nodes, room["cpu-large"].nodes) == (2, 1)
        (name,) = provider.start_nodes("cpu-large", 2)  # one job of it may take the machine
        assert provider.in_use() == Share(2.0, 23 * GiB)
        assert provider.headroom(["cpu-small"])["cpu-small"].nodes == 0
        provider.drain(name)
        wait_for(lambda: provider.nodes() == [], 30, "the node to exit")
        assert provider.in_use() == Share()
    finally:
        for n in provider.nodes():
            provider.drain(n.name)
