"""A map is an array: one record for the whole, its items ordinary jobs found from its id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offload import JobArray, JobNotFound
from offload.broker import keys
from offload.broker.status import JobStatus

from .conftest import Platform, wait_for


def test_map_returns_an_array_whose_items_are_full_jobs(platform: Platform) -> None:
    c = platform.client
    script = 'echo "$OFFLOAD_TASK_INDEX" > /offload/out/i.txt; [ "$OFFLOAD_TASK_INDEX" != 3 ]'
    array = c.map(
        "offload/base", ["sh", "-c", script], each=[{} for _ in range(4)], retries=0, cache=False
    )
    assert isinstance(array, JobArray) and len(array) == 4
    assert [j.id for j in array] == [f"{array.id}{i:08x}" for i in range(4)]
    assert array[-1].id == array[3].id and [j.id for j in array[1:3]] == array.ids[1:3]
    with pytest.raises(IndexError):
        array[4]
    ended = dict(array.results(timeout=120, as_completed=True))
    assert sorted(ended) == [0, 1, 2, 3]
    results = array.wait(timeout=10)  # in index order
    assert [r.ok for r in results] == [True, True, True, False]
    assert [c.read(r.outputs["i.txt"]) for r in results[:3]] == [b"0\n", b"1\n", b"2\n"]
    st = array.status()
    assert st.done and st.count == 4 and st.succeeded == 3
    assert st.by_status == {JobStatus.SUCCEEDED: 3, JobStatus.FAILED: 1}
    assert st.by_reason == {"exit_code": 1} and st.failed == [3]
    assert array[3].record().exit_code == 1  # an item is a full job: record, timeline, logs
    assert c.array(array.id).ids == array.ids
    r = c.broker.redis
    assert r.hget(keys.array(array.id), "count") == "4"
    assert 0 < r.ttl(keys.array(array.id)) <= platform.settings.record_ttl


def test_an_arrays_outputs_feed_one_job_and_come_down_to_a_folder(
    platform: Platform, tmp_path: Path
) -> None:
    c = platform.client
    array = c.map(
        "offload/base",
        ["sh", "-c", 'echo "item $OFFLOAD_TASK_INDEX" > /offload/out/part.txt'],
        each=[{} for _ in range(3)],
        cache=False,
    )
    refs = array.outputs("part.txt")
    join = c.submit(
        "offload/base",
        ["sh", "-c", "cat /offload/in/p0 /offload/in/p1 /offload/in/p2"],
        inputs={f"p{i}": ref for i, ref in enumerate(refs)},
        cache=False,
    )
    assert join.result(timeout=120).ok
    assert [line.text for line in join.logs()] == ["item 0", "item 1", "item 2"]
    got = platform.cli("get", array.id, "--to", str(tmp_path / "parts"))
    assert got.returncode == 0, got.stderr
    assert [(tmp_path / "parts" / str(i) / "part.txt").read_text() for i in range(3)] == [
        f"item {i}\n" for i in range(3)
    ]


def test_an_array_is_cancelled_whole_and_shown_as_one(private_platform: Platform) -> None:
    platform = private_platform  # no worker, and a queue of its own: every item stays queued
    c = platform.client
    array = c.map("offload/base", ["true"], each=[{} for _ in range(5)], cpu=2, name="held")
    assert array.statuses() == [JobStatus.QUEUED] * 5
    shown = platform.cli("status", array.id, "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert (view["count"], view["by_status"], view["name"]) == (5, {"queued": 5}, "held")
    # no node serves the class: two items are fed to its queue, three wait in the array
    listed = json.loads(platform.cli("ls", "--array", array.id, "--json").stdout)
    assert sorted(j["id"] for j in listed["jobs"]) == array.ids[:2]
    assert listed["not_fed"] == 3
    assert array[4].status() is JobStatus.QUEUED  # an item not fed reads as queued
    assert array[4].record().spec.image == "offload/base"
    text = platform.cli("status", array.id).stdout
    assert "3 of the queued wait in the array, fed to the queue as cpu-large has room" in text
    one = platform.cli("status", f"{array.id}:2")
    assert one.returncode == 0 and array[2].id in one.stdout, one.stderr
    beyond = platform.cli("logs", f"{array.id}:5")
    assert beyond.returncode == 2 and "items 0..4, not 5" in beyond.stderr
    cancelled = platform.cli("cancel", array.id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "5 queued before" in cancelled.stdout
    assert array.statuses() == [JobStatus.CANCELLED] * 5
    assert all(j.record().started_at is None for j in array)  # none ran
    text = platform.cli("status", array.id)
    assert "cancelled 5" in text.stdout and "ended 5/5" in text.stdout, text.stdout
    assert "why items did not succeed: cancelled 5" in text.stdout


def test_an_unknown_array_is_not_found(platform: Platform) -> None:
    with pytest.raises(JobNotFound):
        platform.client.array("0" * 24)
    shown = platform.cli("status", "0" * 24)
    assert shown.returncode != 0 and "no array" in shown.stderr
    bad = platform.cli("ls", "--array", "nope")
    assert bad.returncode == 2 and "24 hex digits" in bad.stderr


def test_cancelling_an_array_kills_its_running_items_and_fails_their_dependents(
    private_platform: Platform,
) -> None:
    """On a worker of its own: both items must run at once, whatever other tests left."""
    private_platform.start_worker()
    c = private_platform.client
    array = c.map("offload/base", ["sleep", "60"], each=[{}, {}], cache=False, retries=0)
    child = c.submit("offload/base", ["true"], inputs={"x": array[1].output("none")})
    wait_for(lambda: array.statuses() == [JobStatus.RUNNING] * 2, 60, "both items running")
    assert array.cancel() == {JobStatus.RUNNING: 2}
    results = array.wait(timeout=60)
    assert [r.status for r in results] == [JobStatus.CANCELLED] * 2
    end = child.result(timeout=30, raise_on_failure=False)
    assert (end.status, end.reason) == (JobStatus.FAILED, "upstream_failed")


def test_item_ids_and_the_array_colon_index_form() -> None:
    from offload.spec.arrays import MAX_ITEMS, item_id, parse_item

    a = "ab" * 12
    assert item_id(a, 0) == a + "00000000" and item_id(a, 255) == a + "000000ff"
    with pytest.raises(ValueError):
        item_id(a, MAX_ITEMS)
    assert parse_item(f"{a}:7") == (a, 7)
    for text in (a, f"{a}:", f"{a}:-1", f"{a}:x", f"{a[:-1]}:1", f"{a}:{MAX_ITEMS}", "j:1"):
        assert parse_item(text) is None, text
