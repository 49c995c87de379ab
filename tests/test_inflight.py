"""Identical jobs in flight run once: a job whose memo key equals that of a job running now
waits for it and takes its outputs (a cache hit naming it); it runs itself when that job
fails; cache=False opts out. A cache hit shows the logs of the run that made its outputs."""

from __future__ import annotations

import uuid

import docker

from offload.broker.status import JobStatus, Reason
from offload.producer.job import Job
from tests.conftest import Platform, wait_for
from tests.faults.conftest import Runs


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def parked(*jobs: Job) -> Job:
    """The job that waits for an identical one (status waiting, wait ``memo:<id>``)."""

    def find() -> Job | None:
        for job in jobs:
            rec = job.record()
            if rec.status is JobStatus.WAITING and rec.wait.startswith("memo:"):
                return job
        return None

    found: Job = wait_for(find, 60, "one job to wait for its identical twin")
    return found


def test_two_identical_jobs_submitted_together_run_one_container(
    platform: Platform, docker_client: docker.DockerClient
) -> None:
    runs = Runs(docker_client)
    c = platform.client
    tag = uuid.uuid4().hex[:8]
    # long enough for the three CLI calls below to see the twin still waiting on a busy machine
    script = sh(f"echo made-{tag}; sleep 12; echo {tag} > /offload/out/o.txt; echo done-{tag} >&2")
    a = c.submit("offload/base", script, name="twin a")
    b = c.submit("offload/base", script, name="twin b")
    waiter = parked(a, b)
    holder = b if waiter is a else a
    assert waiter.record().wait == f"memo:{holder.id}"

    shown = platform.cli("status", waiter.id).stdout
    assert f"waiting for identical job: {holder.id}  twin " in shown
    assert (
        f"identical job waiting for its outputs: {waiter.id}"
        in platform.cli("status", holder.id).stdout
    )
    ls = platform.cli("ls", "--status", "waiting").stdout
    assert waiter.id in ls

    made, hit = holder.result(timeout=60), waiter.result(timeout=60)
    assert made.cache_hit is None
    assert hit.cache_hit == holder.id
    assert hit.outputs == made.outputs and c.read(hit.outputs["o.txt"]) == f"{tag}\n".encode()
    statuses = [e.status for e in waiter.timeline()]
    assert statuses[:4] == [
        JobStatus.QUEUED,
        JobStatus.STAGING,
        JobStatus.WAITING,
        JobStatus.QUEUED,
    ]
    assert statuses[-1] is JobStatus.SUCCEEDED
    assert runs.count([a.id, b.id]) == {holder.id: 1}
    assert not c.broker.redis.keys("offload:inflight:*")  # the holder let go of its claim

    # the cache hit's logs: a marker naming the run that made its outputs, then that run's
    lines = list(waiter.logs())
    assert lines[0].stream == "sys"
    assert lines[0].text == (
        f"[offload] cache hit: outputs made by job {holder.id}; its logs follow"
    )
    assert [(line.stream, line.text) for line in lines[1:]] == [
        ("out", f"made-{tag}"),
        ("err", f"done-{tag}"),
    ]
    assert list(waiter.logs(follow=True)) == lines
    cli = platform.cli("logs", waiter.id)
    assert cli.stdout == f"made-{tag}\n"
    assert f"cache hit: outputs made by job {holder.id}" in cli.stderr
    assert f"done-{tag}" in cli.stderr
    assert f"cache hit: outputs made by job {holder.id}" in platform.cli("status", waiter.id).stdout


def test_a_memo_hit_shows_the_logs_of_the_earlier_run(platform: Platform) -> None:
    c = platform.client
    tag = uuid.uuid4().hex[:8]
    script = sh(f"echo first-{tag} > /offload/out/o.txt; echo said-{tag}")
    first = c.submit("offload/base", script)
    assert first.result(timeout=60).cache_hit is None
    again = c.submit("offload/base", script)
    assert again.result(timeout=60).cache_hit == first.id
    texts = [line.text for line in again.logs()]
    assert texts == [
        f"[offload] cache hit: outputs made by job {first.id}; its logs follow",
        f"said-{tag}",
    ]
    assert [line.text for line in first.logs()] == [f"said-{tag}"]  # its own: no marker


def test_when_the_running_twin_fails_the_waiting_one_runs_itself(
    platform: Platform, docker_client: docker.DockerClient
) -> None:
    runs = Runs(docker_client)
    c = platform.client
    script = sh(f"echo {uuid.uuid4().hex}; sleep 3; exit 3")
    a = c.submit("offload/base", script, name="failing twin")
    b = c.submit("offload/base", script, name="failing twin")
    waiter = parked(a, b)
    holder = b if waiter is a else a
    first = holder.result(timeout=60, raise_on_failure=False)
    second = waiter.result(timeout=60, raise_on_failure=False)
    for res in (first, second):
        assert res.status is JobStatus.FAILED and res.reason == Reason.EXIT_CODE, res
        assert res.cache_hit is None
    assert runs.count([a.id, b.id]) == {a.id: 1, b.id: 1}
    assert (holder.record().finished_at or 0) <= (waiter.record().started_at or 0)


def test_cache_false_opts_out_of_waiting_for_an_identical_job(
    platform: Platform, docker_client: docker.DockerClient
) -> None:
    runs = Runs(docker_client)
    c = platform.client
    script = sh(f"sleep 2; echo {uuid.uuid4().hex} > /offload/out/o.txt")
    a = c.submit("offload/base", script, cache=False)
    b = c.submit("offload/base", script, cache=False)
    for job in (a, b):
        res = job.result(timeout=60)
        assert res.cache_hit is None
        assert JobStatus.WAITING not in [e.status for e in job.timeline()]
    assert runs.count([a.id, b.id]) == {a.id: 1, b.id: 1}
