"""A feed of an array's items whose publication is cut half way (Redis gone between two
chunks of messages): every item fed is recorded, the sweeper publishes the items left
without a message, and each item runs exactly once."""

from __future__ import annotations

from typing import Any

import docker
import pytest
import redis

from offload.broker import feeder as feeder_module
from offload.broker import publish as publish_module
from offload.broker.status import JobStatus
from tests.conftest import Platform, wait_for
from tests.faults.conftest import Runs, leftovers, wait_terminal


def test_a_map_cut_between_two_chunks_of_messages_runs_every_item_once(
    fault_platform: Platform,
    docker_client: docker.DockerClient,
    runs: Runs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = fault_platform
    p.start_worker()
    client = p.client
    real = publish_module.send_in
    sent: list[str] = []

    def cut_after_two(pipe: Any, app: Any, rec: Any, decision: Any, producer: Any) -> bool:
        if len(sent) == 2:  # the first chunk went out; Redis goes away before the second
            raise redis.ConnectionError("Connection closed by server.")
        sent.append(rec.id)
        return real(pipe, app, rec, decision, producer)

    monkeypatch.setattr(publish_module, "PUBLISH_CHUNK", 2)
    monkeypatch.setattr(publish_module, "send_in", cut_after_two)
    monkeypatch.setattr(feeder_module, "MIN_TARGET", 5)  # the submit feeds all five
    script = 'echo "item $OFFLOAD_TASK_INDEX"'
    array = client.map(
        "offload/base", ["sh", "-c", script], each=[{} for _ in range(5)], cache=False
    )  # the array is whole; its feed's publication was cut: logged, not raised
    monkeypatch.undo()
    assert len(sent) == 2 and array.not_fed() == (0, False)  # every item recorded
    assert len(array) == 5
    wait_terminal(p, array.ids, 120)
    assert array.statuses() == [JobStatus.SUCCEEDED] * 5
    assert [[line.text for line in job.logs()] for job in array] == [
        [f"item {i}"] for i in range(5)
    ]
    counts = runs.count(array.ids)
    assert {j: counts[j] for j in array.ids} == dict.fromkeys(array.ids, 1)  # once each
    wait_for(lambda: not leftovers(p, docker_client, array.ids), 20, "nothing left behind")
