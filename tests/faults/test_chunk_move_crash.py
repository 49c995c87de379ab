"""A chunk routed to a node that never takes it, moved by a sweeper that dies between taking
its message out of the node's queue and sending it to the class queue: its items are
``queued`` with no message anywhere, the next sweep publishes each of them, and each item
runs exactly once."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
import redis

from offload.broker import keys
from offload.broker import publish as publish_module
from offload.broker.nodes import NodeRegistry
from offload.broker.status import JobStatus
from offload.cache.objindex import ObjectIndex
from offload.spec import GiB
from tests.conftest import Platform, ready_messages, wait_for
from tests.faults.conftest import Runs, leftovers, wait_terminal


def test_a_chunk_moved_by_a_sweeper_that_dies_half_way_runs_every_item_once(
    fault_platform: Platform,
    docker_client: docker.DockerClient,
    runs: Runs,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    p = fault_platform
    c = p.client
    r = c.broker.redis
    data = tmp_path / "photo.bin"
    data.write_bytes(b"chunk move " * 1000)
    oid = c.put(data)
    # a node that holds the items' input and never takes anything (no worker behind it)
    registry = NodeRegistry(r, lost_after=60)
    registry.register("ghost", provider="manual", classes=["cpu-small"], slots=4, cpus=4,
                      memory=8 * GiB, gpus=0)  # fmt: skip
    ObjectIndex(r, "ghost", min_bytes=1, max_objects=10).add(oid, 2 * 1024 * 1024)
    each = [{"inputs": {"f": oid}, "params": {"n": i}} for i in range(3)]
    script = 'echo "item $OFFLOAD_TASK_INDEX"; cat /offload/in/f > /dev/null'
    array = c.map("offload/base", ["sh", "-c", script], each=each, batch=3, cache=False)
    chunk = f"{array.id}x00000000x00000003"
    assert [m for m in ready_messages(r, "node.ghost") if chunk in m]
    assert r.zrange(keys.ROUTED, 0, -1) == [chunk]

    def dies(*args: object, **kwargs: object) -> list[str]:
        raise redis.ConnectionError("the sweeper died here")

    monkeypatch.setattr(publish_module, "publish_chunks", dies)
    with pytest.raises(redis.ConnectionError):
        publish_module.move_overdue(c.broker.app, c.broker.records, 1, c.broker.server_time() + 5)
    monkeypatch.undo()
    # the message is out of the node's queue and in no other: the items are queued, unsent
    assert ready_messages(r, "node.ghost") == [] and ready_messages(r, "cpu-small") == []
    assert array.statuses() == [JobStatus.QUEUED] * 3 and r.zcard(keys.ROUTED) == 0
    registry.deregister("ghost")  # gone: the items are not routed to it again

    p.start_worker()
    wait_terminal(p, array.ids, 120)
    assert array.statuses() == [JobStatus.SUCCEEDED] * 3
    assert [[line.text for line in job.logs()] for job in array] == [
        [f"item {i}"] for i in range(3)
    ]
    counts = runs.count(array.ids)
    assert {j: counts[j] for j in array.ids} == dict.fromkeys(array.ids, 1)  # once each
    wait_for(lambda: not leftovers(p, docker_client, array.ids), 20, "nothing left behind")
