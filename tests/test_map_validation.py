"""`Client.map` checks every field of every item before it uploads or queues anything."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from offload import SpecError, UnschedulableError

from .conftest import Platform


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"env": {"1BAD": "x"}}, "each[2].env"),
        ({"env": {"OFFLOAD_X": "x"}}, "each[2].env"),
        ({"name": ""}, "each[2].name"),
        ({"memory": "lots"}, "each[2].resources.memory"),
        ({"labels": {"team": 3}}, "each[2].labels.team"),
        ({"params": {"a-b": 1}}, "each[2].params"),
        ({"inputs": {"f": "/nonexistent/missing.txt"}}, "each[2].inputs.f"),
        ({"inputs": {"f": "sha256:abc"}}, "each[2].inputs.f"),
        ({"timeout": 10_000}, "each[2].timeout"),
        ({"size": 3}, "each[2]"),
        ({"env": ["A=1"]}, "each[2].env"),
    ],
)
def test_a_bad_third_item_of_four_writes_nothing(
    private_platform: Platform, tmp_path: Path, bad: dict[str, Any], field: str
) -> None:
    client = private_platform.client
    parts = []
    for i in range(4):
        part = tmp_path / f"part{i}.txt"
        part.write_bytes(f"map validation {i} {tmp_path}".encode())
        parts.append(part)
    each: list[dict[str, Any]] = [
        {"inputs": {"f": p}, "name": f"part {i}"} for i, p in enumerate(parts)
    ]
    each[2] = {**each[2], **bad}
    assert client.broker.redis.dbsize() == 0

    with pytest.raises(SpecError) as info:
        client.map("offload/base", ["true"], each=each, env={"COMMON": "1"}, memory="64m")

    assert info.value.field == field, info.value
    assert str(info.value).startswith(f"{field}: ")
    # nothing queued and no record written (this platform's Redis database is its own) ...
    assert client.broker.redis.dbsize() == 0
    # ... and no input uploaded: checking comes before any upload
    for part in parts:
        assert not client.store.has("sha256:" + hashlib.sha256(part.read_bytes()).hexdigest())


def test_an_item_no_class_can_take_names_its_index(private_platform: Platform) -> None:
    client = private_platform.client
    each: list[dict[str, Any]] = [{}, {}, {"cpu": 500}, {}]
    with pytest.raises(UnschedulableError) as info:
        client.map("offload/base", ["true"], each=each)
    assert info.value.field == "each[2].resources"
    assert client.broker.redis.dbsize() == 0


def test_items_may_set_their_own_resources_and_name(private_platform: Platform) -> None:
    client = private_platform.client
    jobs = client.map(
        "offload/base",
        ["true"],
        each=[{"name": "small"}, {"name": "big", "cpu": 4, "memory": "8g", "env": {"B": "2"}}],
        env={"A": "1"},
    )
    small, big = (job.record() for job in jobs)
    assert (small.name, small.resource_class, small.spec.env) == ("small", "cpu-small", {"A": "1"})
    assert (big.name, big.resource_class) == ("big", "cpu-large")
    assert big.spec.env == {"A": "1", "B": "2"} and big.spec.task == (1, 2)
