"""Defect i: on one machine the local provider never gives out more CPU or memory than the
machine has — the embedded worker included; the jobs beyond that wait, and say why.

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
from offload.broker.app import route
from offload.broker.nodes import NodeRegistry
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


def test_a_burst_starts_no_node_beyond_the_machine(plat: Platform, provider: LocalProvider) -> None:
    register(plat, plat.settings.node_name)  # the embedded worker: 1 slot of cpu-small
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
    # embedded worker's 1 slot + 2 of 1 CPU each is the machine's 3 CPUs
    assert first.start == {"cpu-small": 2}
    assert len(provider.nodes()) == 2
    reason = read_status(client.broker.redis, "cpu-small")["reason"]  # type: ignore[index]
    assert "starting 2 of 4 (at machine capacity: 1 CPUs / 2 GiB in use" in reason, reason

    again = scaler.tick(t + 1)
    assert again.start == {} and len(provider.nodes()) == 2
    full = "at machine capacity: 3 CPUs / 6 GiB in use (this machine: 3 CPUs / 16 GiB)"
    status = read_status(client.broker.redis, "cpu-small")
    assert status is not None and status["reason"].startswith(full), status
    assert status["desired"] == "8" and status["starting"] == "2"
    why = client.job(queued[-1]).why_waiting()
    assert why is not None and why.startswith(full), why

    with pytest.raises(ProviderError, match="at machine capacity: 3 CPUs"):
        provider.start_nodes("cpu-small", 1)
    assert len(provider.nodes()) == 2


def test_slots_are_fitted_to_what_is_left(plat: Platform, tmp_path: Path) -> None:
    node = tmp_path / "node.sh"
    node.write_text("#!/bin/sh\nexec sleep 120\n")
    node.chmod(0o755)
    provider = LocalProvider(plat.settings, python=str(node), machine=BUDGET)
    try:
        assert provider.headroom(["cpu-small", "cpu-large"])["cpu-large"].nodes == 0
        (name,) = provider.start_nodes("cpu-small", 2)  # one node of 3 slots fills it
        assert provider.in_use() == (3.0, 6 * GiB)
        assert provider.headroom(["cpu-small"])["cpu-small"].nodes == 0
        provider.drain(name)
        wait_for(lambda: provider.nodes() == [], 30, "the node to exit")
        assert provider.in_use() == (0.0, 0)
    finally:
        for n in provider.nodes():
            provider.drain(n.name)
