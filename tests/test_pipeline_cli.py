"""Pipelines through the `offload` command: chains and fan-in with --input NAME=JOB_ID:OUTPUT
and --after, the graph in `offload status`, `ls --status waiting`, `cancel --with-descendants`,
and clear errors for bad references."""

from __future__ import annotations

import json
import uuid

from offload.broker.status import JobStatus, Reason
from tests.conftest import Platform, wait_for


def submit(p: Platform, *args: str) -> str:
    """``submit(p, IMAGE, COMMAND…, --OPTION, VALUE…)`` runs ``offload submit OPTIONS -- IMAGE
    COMMAND…`` (options from the first word starting ``--``) and returns the job's id."""
    i = next((k for k, a in enumerate(args) if a.startswith("--")), len(args))
    done = p.cli("submit", *args[i:], "--", *args[:i])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def status_json(p: Platform, job_id: str) -> dict:  # type: ignore[type-arg]
    done = p.cli("status", job_id, "--json")
    assert done.returncode == 0, done.stderr
    data: dict = json.loads(done.stdout)  # type: ignore[type-arg]
    return data


def test_a_chain_and_a_fan_in_from_the_command_line(platform: Platform) -> None:
    tag = uuid.uuid4().hex[:8]
    a = submit(
        platform, "offload/base", "sh", "-c", f"echo {tag} > /offload/out/a.txt", "--name", "cli a"
    )
    b = submit(
        platform,
        "offload/base",
        "sh",
        "-c",
        "tr a-z A-Z < /offload/in/text > /offload/out/b.txt",
        "--input",
        f"text={a}:a.txt",
        "--name",
        "cli b",
    )
    both = submit(
        platform,
        "offload/base",
        "sh",
        "-c",
        "cat /offload/in/x /offload/in/y > /offload/out/both.txt",
        "--input",
        f"x={a}:a.txt",
        "--input",
        f"y={b}:b.txt",
        "--name",
        "cli fan-in",
    )
    last = submit(platform, "offload/base", "true", "--after", both, "--after", a, "--no-cache")
    result = platform.client.job(last).result(timeout=90)
    assert result.ok
    c = platform.client
    out = c.job(both).result(timeout=5).outputs["both.txt"]
    assert c.read(out) == f"{tag}\n{tag.upper()}\n".encode()

    shown = status_json(platform, both)
    assert [j["id"] for j in shown["parents"]] == sorted([a, b])
    assert {j["status"] for j in shown["parents"]} == {"succeeded"}
    assert [j["id"] for j in shown["children"]] == [last]
    assert shown["waiting_for"] == []
    assert sorted(j["id"] for j in status_json(platform, a)["children"]) == sorted([b, both, last])
    assert [j["id"] for j in status_json(platform, last)["parents"]] == sorted([a, both])

    text = platform.cli("status", b).stdout
    assert f"parent: {a}  cli a  (succeeded)" in text
    assert f"child: {both}  cli fan-in  (succeeded)" in text


def test_waiting_jobs_show_what_they_wait_for_and_cancel_with_descendants(
    platform: Platform,
) -> None:
    root = submit(platform, "offload/base", "sleep", "120", "--name", "slow root", "--no-cache")
    child = submit(
        platform, "offload/base", "cat", "/offload/in/x", "--input", f"x={root}:never.txt",
        "--name", "child",
    )  # fmt: skip
    grandchild = submit(platform, "offload/base", "true", "--after", child, "--name", "grandchild")
    bystander = submit(platform, "offload/base", "true", "--after", root, "--name", "bystander")

    text = platform.cli("status", child).stdout
    assert "status: waiting" in text
    assert f"waiting for parent: {root}  slow root" in text
    assert f"child: {grandchild}  grandchild  (waiting)" in text
    shown = status_json(platform, grandchild)
    assert [j["id"] for j in shown["waiting_for"]] == [child]
    assert shown["waiting_for"][0]["as"] == "parent"

    listed = platform.cli("ls", "--status", "waiting", "-n", "100")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    ids = {row[0] for row in rows}
    assert {child, grandchild, bystander} <= ids and root not in ids
    assert {row[3] for row in rows} == {"waiting"}
    bad = platform.cli("ls", "--status", "sleeping")
    assert bad.returncode != 0 and "--status" in bad.stderr

    wait_for(lambda: platform.client.job(root).status() is JobStatus.RUNNING, 60, "root to run")
    cancelled = platform.cli("cancel", "--with-descendants", child)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.splitlines() == [f"{child} cancelled", f"{grandchild} cancelled"]
    assert platform.client.job(root).status() is JobStatus.RUNNING  # upstream: untouched

    done = platform.cli("cancel", "--with-descendants", root)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{root} cancel requested (was running)"
    assert {f"{bystander} cancelled", f"{child} cancelled"} <= set(lines)
    rec = platform.client.job(root).result(timeout=60, raise_on_failure=False)
    assert rec.status is JobStatus.CANCELLED
    for job_id in (child, grandchild, bystander):
        got = platform.client.job(job_id).record()
        assert got.status is JobStatus.CANCELLED and got.reason is Reason.CANCELLED


def test_bad_references_are_refused_naming_the_option(platform: Platform) -> None:
    nobody = uuid.uuid4().hex
    cases = {
        (f"x={nobody}:a.txt",): f"inputs.x: no job {nobody}",
        (f"x={nobody}:../etc/passwd",): "--input x",
        (f"x={nobody}:",): "--input x",
    }
    for args, expected in cases.items():
        done = platform.cli("submit", "offload/base", "--input", *args)
        assert done.returncode != 0
        assert expected in done.stderr, done.stderr
    done = platform.cli("submit", "offload/base", "--after", "not-a-job")
    assert done.returncode != 0 and "--after: expected a job id" in done.stderr, done.stderr
    done = platform.cli("submit", "offload/base", "--after", nobody)
    assert done.returncode != 0 and f"after[0]: no job {nobody}" in done.stderr, done.stderr
    assert "JOB_ID:OUTPUT" in platform.cli("submit", "--help").stdout
