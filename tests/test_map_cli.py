"""``offload map --each ITEMS.jsonl``: one job per line, through the CLI and a real worker."""

from __future__ import annotations

import json
from pathlib import Path

from offload.broker.status import JobStatus

from .conftest import Platform


def jsonl(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_map_runs_one_job_per_line_and_waits_for_all(platform: Platform, tmp_path: Path) -> None:
    part = tmp_path / "part.txt"
    part.write_text("shared input\n")
    items = jsonl(
        tmp_path / "items.jsonl",
        {"params": {"photo": "a.jpg"}, "name": "first"},
        "",  # a blank line is skipped
        {"params": {"photo": "b.jpg"}},
        {"params": {"photo": "c.jpg"}, "labels": {"batch": "x"}},
    )
    script = 'echo "$OFFLOAD_TASK_INDEX/$OFFLOAD_TASK_COUNT $OFFLOAD_PARAM_PHOTO $(cat /offload/in/part)"'
    out = platform.cli(
        "map", "offload/base", "--each", str(items), "--input", f"part={part}",
        "--param", "tag=t", "--no-cache", "--wait", "--", "sh", "-c", script,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    array = platform.client.array(out.stdout.strip())
    assert len(array) == 3
    assert "3 items: 3 succeeded, 0 not" in out.stderr
    jobs = list(array)
    assert [[line.text for line in j.logs()] for j in jobs] == [
        ["0/3 a.jpg shared input"],
        ["1/3 b.jpg shared input"],
        ["2/3 c.jpg shared input"],
    ]
    assert jobs[0].record().name == "first"
    assert platform.client.statuses(jobs) == [JobStatus.SUCCEEDED] * 3


def test_map_wait_exits_non_zero_when_an_item_fails(platform: Platform, tmp_path: Path) -> None:
    items = jsonl(tmp_path / "items.jsonl", {"params": {"code": 0}}, {"params": {"code": 3}})
    out = platform.cli(
        "map", "offload/base", "--each", str(items), "--retries", "0", "--no-cache", "--wait",
        "--", "sh", "-c", "exit $OFFLOAD_PARAM_CODE",
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    array = platform.client.array(out.stdout.strip())
    assert array.statuses() == [JobStatus.SUCCEEDED, JobStatus.FAILED]
    assert "2 items: 1 succeeded, 1 not" in out.stderr


def test_a_bad_line_is_named_and_nothing_is_queued(platform: Platform, tmp_path: Path) -> None:
    before = platform.client.broker.redis.zcard("offload:jobs")
    cases = {
        "not JSON": (['{"params": {}}', "", "{params: 1}"], "items.jsonl:3: not JSON"),
        "not an object": (["[1, 2]"], "items.jsonl:1: expected a JSON object"),
        "a bad field": (
            [{"params": {"a": 1}}, "", {"params": [1]}],
            "items.jsonl:3 (each[1]).params: expected a mapping",
        ),
        "an unknown field": ([{"bogus": 1}], "items.jsonl:1 (each[0]): unknown keys ['bogus']"),
        "a missing input file": (
            [{"inputs": {"photo": str(tmp_path / "gone.jpg")}}],
            "items.jsonl:1 (each[0]).inputs.photo: no such file",
        ),
        "no items": ([""], "--each: "),
    }
    for what, (lines, said) in cases.items():
        items = jsonl(tmp_path / "items.jsonl", *lines)
        out = platform.cli("map", "offload/base", "--each", str(items), "--", "true")
        assert out.returncode == 2, (what, out.stdout, out.stderr)
        assert said in " ".join(out.stderr.split()), (what, out.stderr)
        assert out.stdout == "", what
    missing = platform.cli("map", "offload/base", "--each", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert platform.client.broker.redis.zcard("offload:jobs") == before  # nothing queued


def test_map_reads_items_from_stdin(platform: Platform) -> None:
    lines = "".join(json.dumps({"params": {"n": n}}) + "\n" for n in range(2))
    out = platform.cli(
        "map", "offload/base", "--each", "-", "--no-cache", "--wait",
        "--", "sh", "-c", "echo $OFFLOAD_PARAM_N", input=lines,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    array = platform.client.array(out.stdout.strip())
    assert [[line.text for line in j.logs()] for j in array] == [["0"], ["1"]]
