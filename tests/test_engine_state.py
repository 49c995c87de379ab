"""A node's engine as the registry, the router, the autoscaler and the recorder see it (real
Redis; the engine faults themselves are in ``tests/faults/test_engine.py``)."""

from __future__ import annotations

from offload.autoscaler.loop import join_nodes
from offload.broker.nodes import ENGINE_DOWN, NodeInfo, NodeRegistry
from offload.broker.routing import read_nodes
from offload.broker.status import JobStatus, Reason
from offload.worker.endings import RETRYABLE, Recorder, retries_used

from .conftest import Platform


def test_engine_down_is_a_state_of_its_own_kept_from_its_first_sighting(
    private_platform: Platform,
) -> None:
    r = private_platform.client.broker.redis
    reg = NodeRegistry(r, lost_after=30)
    reg.register("n1", provider="p", classes=["cpu-small"], slots=2, cpus=1, memory=1, gpus=0)
    assert reg.get("n1").state == "up"  # type: ignore[union-attr]
    assert reg.set_engine("n1", up=False)
    first = reg.get("n1")
    assert first is not None and first.state == ENGINE_DOWN and first.engine_down_at > 0
    reg.set_draining("n1")
    reg.set_engine("n1", up=False)  # told again: the first time it was seen down stays
    again = reg.get("n1")
    assert again is not None and again.engine_down_at == first.engine_down_at
    assert again.state == ENGINE_DOWN  # over draining: it can run nothing at all
    (view,) = read_nodes(r, "cpu-small", ["sha256:00"], lost_after=30)
    assert not view.live  # locality routing sends it nothing
    reg.set_engine("n1", up=True)
    back = reg.get("n1")
    assert back is not None and back.state == "draining" and back.engine_down_at == 0
    assert read_nodes(r, "cpu-small", ["sha256:00"], lost_after=30)[0].live
    assert not reg.set_engine("gone", up=False)  # an unregistered node gets no hash


def _info(name: str, down_at: float) -> NodeInfo:
    return NodeInfo(
        name=name, provider="p", classes=("cpu-small",), slots=2, cpus=1, memory=1, gpus=0,
        started_at=10.0, heartbeat_at=99.0, draining=False, running=(),
        state=ENGINE_DOWN if down_at else "up", engine_down_at=down_at,
    )  # fmt: skip


def test_the_autoscaler_replaces_a_node_whose_engine_stays_down() -> None:
    nodes = [_info("fine", 0.0), _info("restarting", 95.0), _info("dead-engine", 80.0)]
    views = {v.name: v.state for v in join_nodes(nodes, [], ["cpu-small"], 100.0, 60.0, 15.0)}
    # within lost_after an engine may come back (a restart); past it the node is lost
    assert views == {"fine": "up", "restarting": "up", "dead-engine": "lost"}


def test_engine_losses_spend_no_retry_and_end_the_job_after_max_node_losses(
    private_platform: Platform,
) -> None:
    p = private_platform
    records = p.client.broker.records
    job = p.client.submit("offload/base", ["true"], retries=2)
    published: list[int] = []
    ends = []
    for _ in range(3):
        prev, attempt = records.begin_attempt(job.id, "n1", 1)
        assert prev is JobStatus.QUEUED
        rec = Recorder(
            records,
            None,
            lambda job_id, spec, n: published.append(n),
            job.id,
            attempt,
            records.get(job.id).spec,
            retries_used(records, job.id),
            max_losses=3,
        )
        ends.append(rec.requeue(Reason.ENGINE_LOST, f"attempt {attempt}: engine gone"))
        if ends[-1] is not JobStatus.QUEUED:
            break
    assert ends == [JobStatus.QUEUED, JobStatus.QUEUED, JobStatus.FAILED]
    assert published == [1, 2]  # published again after each loss but the last
    final = job.record()
    assert (final.status, final.reason) == (JobStatus.FAILED, Reason.ENGINE_LOST)
    assert "3 attempts lost their engine" in (final.message or "")
    assert Reason.ENGINE_LOST not in RETRYABLE and retries_used(records, job.id) == 0
