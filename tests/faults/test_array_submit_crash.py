"""Redis killed in the middle of an array's submit: the array is wholly there or wholly absent.

* Killed while its item table is written (the array still ``pending``): the caller is told,
  the array and its items read as absent, nothing of it is ever fed or run, and the sweeper
  deletes what was written.
* Killed once the array is written (``active``) but before its first items are fed: the
  submit returns the array, and once Redis is back the sweeper feeds it; every item runs once.
"""

from __future__ import annotations

from typing import Any

import docker
import pytest

from offload import JobNotFound
from offload.broker import feeder as feeder_module
from offload.broker import keys
from offload.broker.arrays import Arrays
from offload.broker.core import Broker
from offload.broker.status import JobStatus
from offload.broker.sweeper import Sweeper
from offload.errors import BrokerError
from tests.conftest import Platform, wait_for
from tests.faults.conftest import RedisProcess, Runs, leftovers, wait_terminal


def test_redis_killed_while_the_table_is_written_leaves_no_array(
    fault_platform: Platform, own_redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = fault_platform
    client = p.client
    real = Arrays.write_table
    made: list[str] = []

    def die_after_the_first_part(self: Arrays, info: Any, parts: Any) -> None:
        made.append(info.id)
        real(self, info, parts[:1])  # the first part is written (and fsynced)...
        own_redis.kill9()  # ...then Redis dies
        real(self, info, parts)

    monkeypatch.setattr(Arrays, "write_table", die_after_the_first_part)
    with pytest.raises(BrokerError):
        client.map("offload/base", ["true"], each=[{}] * 2500, cache=False)
    monkeypatch.undo()
    own_redis.start()  # its append-only file holds what was written before the kill
    (array_id,) = made
    r = Broker(p.settings).redis
    assert r.hget(keys.array(array_id), "state") == "pending"  # a part of it survived...
    with pytest.raises(JobNotFound):  # ...and reads as absent
        client.array(array_id)
    with pytest.raises(JobNotFound):
        client.job(f"{array_id}00000000").status()
    shown = p.cli("status", array_id)
    assert shown.returncode != 0 and "no array" in shown.stderr
    monkeypatch.setattr(feeder_module, "PENDING_GRACE", 0.0)
    Sweeper(Broker(p.settings)).feed()  # a pending array older than the grace is deleted
    assert r.keys(f"offload:array:{array_id}*") == []
    assert r.zscore(keys.ARRAYS_FEEDING, array_id) is None
    assert r.keys(f"offload:job:{array_id}*") == []  # no item was ever made


def test_redis_killed_before_the_first_feed_runs_every_item_once(
    fault_platform: Platform,
    own_redis: RedisProcess,
    docker_client: docker.DockerClient,
    runs: Runs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = fault_platform
    client = p.client
    real = Arrays.activate

    def die_once_active(self: Arrays, info: Any) -> None:
        real(self, info)
        own_redis.kill9()

    monkeypatch.setattr(Arrays, "activate", die_once_active)
    script = 'echo "item $OFFLOAD_TASK_INDEX"'
    array = client.map("offload/base", ["sh", "-c", script], each=[{}] * 6, cache=False)
    monkeypatch.undo()
    own_redis.start()
    assert client.array(array.id).not_fed() == (6, False)  # whole, none fed yet
    assert array.statuses() == [JobStatus.QUEUED] * 6
    p.start_worker()  # its sweeper feeds the array
    wait_terminal(p, array.ids, 120)
    assert array.statuses() == [JobStatus.SUCCEEDED] * 6
    assert [[line.text for line in job.logs()] for job in array] == [
        [f"item {i}"] for i in range(6)
    ]
    counts = runs.count(array.ids)
    assert {j: counts[j] for j in array.ids} == dict.fromkeys(array.ids, 1)  # once each
    wait_for(lambda: not leftovers(p, docker_client, array.ids), 20, "nothing left behind")
    r = client.broker.redis
    assert r.zscore(keys.ARRAYS_FEEDING, array.id) is None  # fed whole
    assert r.keys(f"offload:array:{array.id}:t:*") == []  # its table went once fed
