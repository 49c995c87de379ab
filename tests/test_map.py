"""Fan-out: one job per item, each told its index and the count."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload import SpecError

from .conftest import Platform


def test_map_fans_out_with_task_index_and_count(platform: Platform, tmp_path: Path) -> None:
    files = []
    for i in range(3):
        f = tmp_path / f"part{i}.txt"
        f.write_text(f"part {i}\n")
        files.append(f)
    script = (
        'echo "$OFFLOAD_TASK_INDEX/$OFFLOAD_TASK_COUNT $(cat /offload/in/part) $OFFLOAD_PARAM_TAG"'
    )
    jobs = platform.client.map(
        "offload/base",
        ["sh", "-c", script],
        each=[{"inputs": {"part": f}, "name": f"part {i}"} for i, f in enumerate(files)],
        params={"tag": "common"},
        cache=False,
    )
    results = platform.client.wait(jobs, timeout=120)
    assert [r.ok for r in results] == [True, True, True]
    assert [[line.text for line in job.logs()] for job in jobs] == [
        ["0/3 part 0 common"],
        ["1/3 part 1 common"],
        ["2/3 part 2 common"],
    ]
    assert [job.record().name for job in jobs] == ["part 0", "part 1", "part 2"]


def test_a_bad_item_queues_nothing(platform: Platform, tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("x")
    before = platform.client.broker.redis.zcard("offload:jobs")
    with pytest.raises(SpecError) as info:
        platform.client.map(
            "offload/base",
            ["true"],
            each=[{"inputs": {"f": good}}, {"inputs": {"f": tmp_path / "missing.txt"}}],
        )
    assert info.value.field == "each[1].inputs.f"
    with pytest.raises(SpecError) as info:
        platform.client.map("offload/base", ["true"], each=[{"params": {"a-b": 1}}])
    assert info.value.field.startswith("each[0].params")
    assert platform.client.broker.redis.zcard("offload:jobs") == before
