"""``map(..., batch=K)``: chunks of an array's items, each run in one warm container by a real
worker, every item still a full job (its own status, exit code, timeout, logs, outputs)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import docker
import pytest

from offload import SpecError
from offload.broker.status import JobStatus
from offload.spec.arrays import chunk_id, chunk_items, chunks, parse_chunk

from .conftest import Platform, ready_messages, wait_for


def container_starts(client: docker.DockerClient, since: float, prefix: str) -> list[str]:
    """Names of the containers started since ``since`` whose name begins with ``prefix``."""
    events = client.events(
        since=int(since), until=int(time.time()) + 1, decode=True,
        filters={"type": "container", "event": "start"},
    )  # fmt: skip
    names = [e["Actor"]["Attributes"].get("name", "") for e in events]
    return [n for n in names if n.startswith(prefix)]


def warm_starts(client: docker.DockerClient, array_id: str) -> int:
    """Warm containers made for this array's chunks (their names hold the chunk id)."""
    return len(client.api.containers(all=True, filters={"name": f"offload-{array_id}x"}))


def test_chunk_ids_name_their_items() -> None:
    a = "ab" * 12
    assert chunks(a, [0, 1, 2, 3, 4], 2) == [
        chunk_id(a, 0, 2),
        chunk_id(a, 2, 4),
        chunk_id(a, 4, 5),
    ]
    assert chunks(a, [0, 1, 5, 6], 10) == [chunk_id(a, 0, 2), chunk_id(a, 5, 7)]  # gaps cut
    assert parse_chunk(chunk_id(a, 3, 9)) == (a, 3, 9)
    assert chunk_items(chunk_id(a, 3, 5)) == [f"{a}00000003", f"{a}00000004"]
    assert parse_chunk(a) is None and chunk_items(f"{a}00000003") == []


def test_batched_items_each_see_their_own_offload_and_fail_alone(
    platform: Platform, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    c = platform.client
    t0 = time.time()
    for i in range(5):
        (tmp_path / f"x{i}").write_text(f"data {i}\n")
    script = (
        'cat /offload/in/x; echo "p=$OFFLOAD_PARAM_N i=$OFFLOAD_TASK_INDEX"; '
        "ls /offload/out | wc -l; "
        'echo "$OFFLOAD_TASK_INDEX" > /offload/out/i.txt; [ "$OFFLOAD_PARAM_N" != 2 ]'
    )
    each = [{"params": {"n": i}, "inputs": {"x": str(tmp_path / f"x{i}")}} for i in range(5)]
    array = c.map("offload/base", ["sh", "-c", script], each=each, batch=3, retries=0, cache=False)
    results = array.wait(timeout=120)
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert [c.read(r.outputs["i.txt"]) for i, r in enumerate(results) if i != 2] == [
        b"0\n",
        b"1\n",
        b"3\n",
        b"4\n",
    ]
    for i in (0, 1, 3, 4):  # each item saw its own input, params, and an empty out/
        assert [line.text for line in array[i].logs()] == [f"data {i}", f"p={i} i={i}", "0"]
    assert array[2].record().exit_code == 1 and array[2].record().reason == "exit_code"
    assert array.status().by_status == {JobStatus.SUCCEEDED: 4, JobStatus.FAILED: 1}
    # the warm containers go once their chunk ends (a moment after its last item)
    wait_for(lambda: warm_starts(docker_client, array.id) == 0, 30, "warm containers removed")
    started = container_starts(docker_client, t0 - 1, "offload-")
    mine = [n for n in started if array.id in n]
    # two chunks (0..2, 3..4): two warm containers, no container of an item's own
    assert len(mine) == 2 and all(n.startswith(f"offload-{array.id}x") for n in mine), started
    routes = {tuple(array[i].record().route_why.rsplit(": ", 1)) for i in range(5)}
    # no node held their inputs (new files): each chunk went to the class queue
    assert routes == {
        ("batched: chunk 0..2", "no live node holds its inputs"),
        ("batched: chunk 3..4", "no live node holds its inputs"),
    }


def test_batched_items_time_out_alone_and_the_next_runs(platform: Platform) -> None:
    c = platform.client
    each = [{"params": {"s": s}} for s in (0, 30, 0)]
    array = c.map(
        "offload/base",
        ["sh", "-c", 'sleep "$OFFLOAD_PARAM_S"; echo done'],
        each=each,
        batch=3,
        timeout=2,
        retries=0,
        cache=False,
    )
    results = array.wait(timeout=120)
    assert [r.status for r in results] == [
        JobStatus.SUCCEEDED,
        JobStatus.TIMED_OUT,
        JobStatus.SUCCEEDED,
    ]
    assert [line.text for line in array[2].logs()] == ["done"]


def test_one_message_per_chunk_and_cancel_before_it_runs(private_platform: Platform) -> None:
    c = private_platform.client  # no worker, and a queue of its own: the chunks stay queued
    array = c.map("offload/base", ["true"], each=[{} for _ in range(7)], batch=3, cpu=2)
    msgs = [json.loads(m) for m in ready_messages(c.broker.redis, "cpu-large")]
    mine = [m for m in msgs if m["headers"]["id"].startswith(array.id)]
    # no node serves the class: the feeder sends two messages (two chunks), the rest waits
    assert sorted(m["headers"]["task"] for m in mine) == ["offload.run_chunk"] * 2
    assert sorted(m["headers"]["id"] for m in mine) == [
        chunk_id(array.id, 0, 3),
        chunk_id(array.id, 3, 6),
    ]
    assert mine[0]["headers"]["shadow"].endswith(("[0..2]", "[3..5]"))
    assert array.not_fed() == (1, False)
    assert c.broker.arrays.get(array.id).batch == 3
    array.cancel()
    assert array.statuses() == [JobStatus.CANCELLED] * 7


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True, 1001])
def test_batch_must_be_a_whole_number_of_items(platform: Platform, bad: object) -> None:
    with pytest.raises(SpecError) as err:
        platform.client.map("offload/base", ["true"], each=[{}], batch=bad)  # type: ignore[arg-type]
    assert err.value.field == "batch"


def test_cli_map_batch(platform: Platform, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"params": {"n": i}}) + "\n" for i in range(4)))
    bad = platform.cli("map", "offload/base", "--each", str(items), "--batch", "0", "--", "true")
    assert bad.returncode == 2 and "--batch" in bad.stderr
    done = platform.cli(
        "map", "offload/base", "--each", str(items), "--batch", "2", "--wait", "--no-cache",
        "--", "sh", "-c", 'echo "n=$OFFLOAD_PARAM_N"',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    array_id = done.stdout.split()[0]
    assert "2 items a container" in done.stderr
    shown = platform.cli("status", array_id)
    assert "array of 4 items, 2 a warm container" in shown.stdout, shown.stderr
    assert "succeeded 4" in shown.stdout
    logs = platform.cli("logs", f"{array_id}:3")
    assert logs.stdout.strip() == "n=3", logs.stderr


def test_a_batched_item_whose_memo_matches_runs_no_container(platform: Platform) -> None:
    c = platform.client
    tag = time.time_ns()
    script = f'echo "{tag} $OFFLOAD_PARAM_N" > /offload/out/r.txt'
    each = [{"params": {"n": i}} for i in range(3)]
    first = c.map("offload/base", ["sh", "-c", script], each=each, batch=3)
    assert all(r.ok for r in first.wait(timeout=120))
    again = c.map("offload/base", ["sh", "-c", script], each=each, batch=3)
    results = again.wait(timeout=120)
    assert all(r.ok for r in results)
    recs = [job.record() for job in again]
    assert [r.cache_hit for r in recs] == [j.id for j in first]  # each its own earlier twin
    assert [c.read(r.outputs["r.txt"]) for r in recs] == [f"{tag} {i}\n".encode() for i in range(3)]
