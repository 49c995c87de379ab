"""A job's whole path through the `offload` command, as a user types it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .conftest import Platform


def test_put_submit_wait_status_logs_get(platform: Platform, tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("pear\napple\nfig\napple\n")

    put = platform.cli("put", str(words))
    assert put.returncode == 0, put.stderr
    words_id = put.stdout.split()[0]
    assert words_id == "sha256:" + hashlib.sha256(words.read_bytes()).hexdigest()

    script = (
        "sort -u /offload/in/words > /offload/out/unique.txt; "
        'echo "sorted for $OFFLOAD_PARAM_WHO"; echo "limit=$OFFLOAD_PARAM_LIMIT" >&2'
    )
    run = platform.cli(
        "submit", "offload/base",
        "--input", f"words={words_id}",
        "--param", "who=ada",
        "--param", "limit:=3",
        "--name", "sort words",
        "--cpu", "0.5", "--memory", "128m",
        "--wait",
        "--", "sh", "-c", script,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == "sorted for ada\n"
    job_id = run.stderr.splitlines()[0]
    assert "limit=3" in run.stderr
    assert "succeeded" in run.stderr

    status = platform.cli("status", "--json", job_id)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["status"] == "succeeded"
    assert info["name"] == "sort words"
    assert info["class"] == "cpu-small"
    assert [e["status"] for e in info["timeline"]] == [
        "queued", "staging", "running", "uploading", "succeeded",
    ]  # fmt: skip
    out_id = info["outputs"]["unique.txt"]

    human = platform.cli("status", job_id)
    assert "succeeded" in human.stdout and "unique.txt" in human.stdout

    listing = platform.cli("ls", "-n", "200")
    assert job_id in listing.stdout

    logs = platform.cli("logs", job_id)
    assert (logs.stdout, logs.stderr) == ("sorted for ada\n", "limit=3\n")

    dest = tmp_path / "unique.txt"
    got = platform.cli("get", out_id, "-o", str(dest))
    assert got.returncode == 0, got.stderr
    assert dest.read_text() == "apple\nfig\npear\n"


def test_local_file_input_is_uploaded_at_submit(platform: Platform, tmp_path: Path) -> None:
    data = tmp_path / "n.txt"
    data.write_text("3\n")
    run = platform.cli(
        "submit", "offload/base", "--input", f"n={data}", "--wait",
        "--", "sh", "-c", 'echo $(( $(cat /offload/in/n) * 14 ))',
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == "42\n"


def test_wait_exits_with_the_jobs_outcome(platform: Platform) -> None:
    failing = platform.cli("submit", "offload/base", "--wait", "--", "sh", "-c", "exit 9")
    assert failing.returncode == 9
    assert "exit_code" in failing.stderr

    timed_out = platform.cli(
        "submit", "offload/base", "--timeout", "1", "--wait", "--", "sleep", "30"
    )
    assert timed_out.returncode == 124
    assert "timed_out" in timed_out.stderr

    unschedulable = platform.cli("submit", "offload/base", "--cpu", "100", "--wait")
    assert unschedulable.returncode == 3
    assert "no resource class can take" in unschedulable.stderr
    assert "cpu-small" in unschedulable.stderr


def test_bad_input_is_refused_with_the_field_named(platform: Platform) -> None:
    before = platform.client.broker.redis.zcard("offload:jobs")
    cases = [
        (["--memory", "lots"], "resources.memory"),
        (["--cpu", "-1"], "resources.cpu"),
        (["--input", "x=sha256:abc"], "inputs.x"),
        (["--input", "x=/definitely/not/here"], "inputs.x"),
        (["--param", "a-b=1"], "params"),
        (["--param", "n:={bad json"], "--param n"),
        (["--env", "OFFLOAD_X=1"], "env"),
        (["--timeout", "99999"], "timeout"),
    ]
    for args, field in cases:
        run = platform.cli("submit", "offload/base", *args)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert field in run.stderr, (args, run.stderr)
        assert run.stdout == ""
    bad_image = platform.cli("submit", "Not A/Valid:image:ref")
    assert bad_image.returncode == 2 and "image" in bad_image.stderr
    assert platform.client.broker.redis.zcard("offload:jobs") == before  # nothing was queued


def test_unknown_job_ids_exit_non_zero(platform: Platform) -> None:
    for cmd in (["status", "nope"], ["logs", "nope"], ["cancel", "nope"]):
        run = platform.cli(*cmd)
        assert run.returncode == 4, cmd
        assert "no job with id 'nope'" in run.stderr
