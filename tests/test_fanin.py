"""Fan-in over a whole array as one input (``array.output(name)``): the job waits for every
item, sees their outputs as one folder, and fails when an item does not succeed."""

from __future__ import annotations

import json

from offload.broker import keys
from offload.broker.status import JobStatus, Reason

from .conftest import Platform, offload_cli, wait_for

WRITE = 'echo "fp $OFFLOAD_TASK_INDEX" > /offload/out/fingerprint.json'
READ = "ls /offload/in/fps | sort -n | paste -sd, -; cat /offload/in/fps/3.json"


def test_a_job_over_a_whole_array_sees_every_items_output_as_one_folder(
    platform: Platform,
) -> None:
    c = platform.client
    array = c.map("offload/base", ["sh", "-c", WRITE], each=[{} for _ in range(5)], cache=False)
    dedupe = c.submit("offload/base", ["sh", "-c", READ], cache=False,
                      inputs={"fps": array.output("fingerprint.json")})  # fmt: skip
    assert dedupe.record().spec.inputs == {"fps": f"output:{array.id}/fingerprint.json"}
    assert dedupe.result(timeout=120).ok
    assert [line.text for line in dedupe.logs()] == [
        "0.json,1.json,2.json,3.json,4.json",
        "fp 3",
    ]
    ended = max(job.record().finished_at or 0 for job in array)
    assert (dedupe.record().started_at or 0) >= ended  # it waited for the last item


def test_a_job_over_an_array_fails_when_an_item_does_not_succeed(platform: Platform) -> None:
    c = platform.client
    script = f'[ "$OFFLOAD_TASK_INDEX" = 1 ] && exit 3; {WRITE}'
    array = c.map("offload/base", ["sh", "-c", script], each=[{} for _ in range(3)], cache=False)
    dedupe = c.submit("offload/base", ["sh", "-c", READ], cache=False,
                      inputs={"fps": array.output("fingerprint.json")})  # fmt: skip
    res = dedupe.result(timeout=120, raise_on_failure=False)
    rec = dedupe.record()
    assert (res.status, rec.reason) == (JobStatus.FAILED, Reason.UPSTREAM_FAILED)
    assert f"({array.id}): 1 of 3 items did not succeed" in (rec.message or "")
    assert rec.started_at is None  # no attempt: it never ran


def test_a_job_over_an_archived_array_reads_the_items_from_the_archive(
    private_platform: Platform,
) -> None:
    p = private_platform
    p.env.update(OFFLOAD_ARCHIVE_AFTER="1", OFFLOAD_SWEEP_INTERVAL="0.5")
    p.start_worker()
    c = p.client
    array = c.map("offload/base", ["sh", "-c", WRITE], each=[{} for _ in range(4)], cache=False)
    wait_for(lambda: array.status().done, 120, "the array to end")
    r = c.broker.redis
    wait_for(lambda: not any(r.exists(keys.job(j)) for j in array.ids), 60, "items archived")
    dedupe = c.submit("offload/base", ["sh", "-c", "cat /offload/in/fps/*.json"], cache=False,
                      inputs={"fps": array.output("fingerprint.json")})  # fmt: skip
    assert dedupe.result(timeout=120).ok
    assert [line.text for line in dedupe.logs()] == [f"fp {i}" for i in range(4)]


def test_cancelling_the_array_fails_the_job_waiting_for_it(private_platform: Platform) -> None:
    c = private_platform.client  # no worker: the items stay queued, most in the table
    array = c.map("offload/base", ["true"], each=[{} for _ in range(5)], cpu=2)
    dedupe = c.submit("offload/base", ["true"], inputs={"fps": array.output("out.json")})
    assert dedupe.status() is JobStatus.WAITING
    assert c.broker.pipeline.parents(dedupe.id) == [array.id]
    shown = offload_cli(private_platform.env, "status", dedupe.id)
    assert shown.returncode == 0, shown.stderr
    said = " ".join(shown.stdout.split())  # as wrapped to the terminal's width
    assert (
        f"waiting for parent: {array.id} array offload/base: 0 of 5 items ended (running)" in said
    )
    array.cancel()
    rec = dedupe.record()
    assert (rec.status, rec.reason) == (JobStatus.FAILED, Reason.UPSTREAM_FAILED)
    assert "5 of 5 items did not succeed" in (rec.message or "")


def test_the_cli_takes_a_whole_arrays_output_as_one_input(platform: Platform) -> None:
    c = platform.client
    array = c.map("offload/base", ["sh", "-c", WRITE], each=[{} for _ in range(3)], cache=False)
    out = offload_cli(platform.env, "submit", "--input", f"fps={array.id}:fingerprint.json",
                      "--no-cache", "--wait", "offload/base", "--", "sh", "-c",
                      "ls /offload/in/fps | sort -n | paste -sd, -")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["0.json,1.json,2.json"]  # --wait: the job's logs


def test_an_items_output_altered_in_redis_is_refused(platform: Platform) -> None:
    c = platform.client
    array = c.map("offload/base", ["sh", "-c", WRITE], each=[{} for _ in range(2)], cache=False)
    assert all(res.ok for res in array.wait(timeout=120))
    r = c.broker.redis  # item 1's outputs pointed at another object, its signature kept
    r.hset(keys.job(array[1].id), "outputs", json.dumps({"fingerprint.json": "sha256:" + "b" * 64}))
    dedupe = c.submit("offload/base", ["true"], cache=False,
                      inputs={"fps": array.output("fingerprint.json")})  # fmt: skip
    res = dedupe.result(timeout=120, raise_on_failure=False)
    rec = dedupe.record()
    assert (res.status, rec.reason) == (JobStatus.FAILED, Reason.FORGED), rec.message
    assert "item 1's outputs are not what its worker signed" in (rec.message or "")
