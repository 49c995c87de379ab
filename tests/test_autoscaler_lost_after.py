"""Defect c: the autoscaler and ``Job.why_waiting`` judge nodes lost by OFFLOAD_LOST_AFTER.

With ``lost_after`` above 15 s, a node whose heartbeat is 20 s old is alive: the autoscaler
must not recover its jobs (they would run twice) nor call it down, and a queued job must
not say no node is up.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from offload.autoscaler.loop import build_autoscaler
from offload.broker import keys
from offload.broker.core import Broker
from offload.broker.nodes import NodeRegistry
from offload.broker.scaling import read_status
from offload.broker.status import JobStatus
from offload.cli.scalecmd import make_provider
from offload.spec import JobSpec

from .conftest import Platform, make_platform


@pytest.fixture
def plat(redis_server: str, tmp_path: Path) -> Platform:
    return make_platform(redis_server, tmp_path / "home", OFFLOAD_LOST_AFTER="40")


def busy_node_with_old_heartbeat(p: Platform, age: float) -> tuple[str, str]:
    """A node running one job, its last heartbeat ``age`` seconds ago; (node, job id)."""
    r = p.client.broker.redis
    node = f"slow-{uuid.uuid4().hex[:6]}"
    NodeRegistry(r, lost_after=p.settings.lost_after).register(
        node, provider="manual", classes=["cpu-small"], slots=1, cpus=1, memory=1 << 30, gpus=0
    )
    job_id = uuid.uuid4().hex
    records = p.client.broker.records
    records.create(job_id, JobSpec(image="offload/base", command=("true",)), "cpu-small")
    records.begin_attempt(job_id, node)
    records.transition(job_id, JobStatus.RUNNING, attempt=1)
    r.hset(keys.node(node), "heartbeat_at", str(time.time() - age))
    return node, job_id


def test_the_autoscaler_keeps_a_node_alive_within_lost_after(plat: Platform) -> None:
    assert plat.settings.lost_after == 40
    node, job_id = busy_node_with_old_heartbeat(plat, 20)
    provider = make_provider("local", plat.settings)
    scaler = build_autoscaler(Broker(plat.settings), provider)
    try:
        scaler.tick()
    finally:  # were the node taken for lost, its job would start a node: drain it
        for n in provider.nodes():
            provider.drain(n.name)
    rec = plat.client.job(job_id).record()
    assert (rec.status, rec.node, rec.attempt) == (JobStatus.RUNNING, node, 1)  # not requeued
    info = scaler.registry.get(node)
    assert info is not None and info.state == "up"
    status = read_status(plat.client.broker.redis, "cpu-small")
    assert status is not None and status["up"] == "1", status


def test_why_waiting_counts_a_node_alive_within_lost_after(plat: Platform) -> None:
    busy_node_with_old_heartbeat(plat, 20)
    queued = uuid.uuid4().hex
    plat.client.broker.records.create(
        queued, JobSpec(image="offload/base", command=("true",)), "cpu-small"
    )
    why = plat.client.job(queued).why_waiting()  # no autoscaler: the registry's word
    assert why == "waiting for a free slot: 1 of 1 slot(s) of class cpu-small busy"
