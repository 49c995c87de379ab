"""Concurrency limits on a real worker: a limit of 1 never lets two labelled jobs run at once
(measured from inside the jobs), waiting jobs say why, a killed worker's permit comes back
through the sweeper, and bad `offload limit set` input is refused naming the field."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from offload.broker import keys
from offload.broker.limits import Limits
from offload.broker.pipeline import Pipeline
from offload.broker.status import JobStatus, Reason
from offload.broker.sweeper import Sweeper
from offload.producer.client import Client
from offload.producer.job import Job
from offload.spec import JobSpec
from tests.conftest import Platform, job_containers, make_platform, wait_for

# Each job writes its start and end time (inside the container) to /offload/out/t.
TIMED = 'date +%s.%N > /offload/out/t; sleep {secs}; date +%s.%N >> /offload/out/t; echo "{n}"'


def timed(c: Client, label: str, n: int, secs: float = 1) -> Job:
    return c.submit(
        "offload/base",
        ["sh", "-c", TIMED.format(secs=secs, n=n)],
        labels={"db": label},
        name=f"limited {n}",
        cache=False,
    )


def interval(platform: Platform, job: Job) -> tuple[float, float]:
    result = job.result(timeout=120)
    start, end = platform.client.read(result.outputs["t"]).decode().split()
    return float(start), float(end)


def test_a_limit_of_one_never_runs_two_at_once(platform: Platform) -> None:
    c = platform.client
    label = f"orders-{uuid.uuid4().hex[:6]}"
    name = f"db={label}"
    assert c.set_limit(name, 1).max == 1
    jobs = [timed(c, label, n) for n in range(3)]  # the worker has 2 slots
    seen: set[str] = set()

    def some_waiting_says_why() -> bool:
        for j in jobs:
            rec = j.record()
            if rec.status is JobStatus.WAITING:
                seen.add(c.control.why(rec) or "")
        return f"waiting for limit {name} (1/1 running)" in seen

    wait_for(some_waiting_says_why, 60, "a job waiting for the limit, saying so")
    spans = sorted(interval(platform, j) for j in jobs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, f"two jobs ran at once: {spans}"
    assert any(JobStatus.WAITING in [e.status for e in j.timeline()] for j in jobs)
    (usage,) = [u for u in c.limits() if u.name == name]
    assert (usage.max, usage.running, usage.waiting) == (1, 0, 0)
    assert c.remove_limit(name)


def test_limit_ls_shows_usage_and_bad_input_exits_2(platform: Platform) -> None:
    label = f"x{uuid.uuid4().hex[:6]}"
    ok = platform.cli("limit", "set", f"db={label}", "2")
    assert ok.returncode == 0, ok.stderr
    job = timed(platform.client, label, 0, secs=3)
    wait_for(lambda: job.status() is JobStatus.RUNNING, 60, "the job running")
    ls = platform.cli("limit", "ls")
    assert f"db={label}\t2\t1\t0" in ls.stdout.splitlines(), ls.stdout
    status = platform.cli("status", job.id)
    assert status.returncode == 0
    for args, field, shown in [
        (("db", "2"), "limit", "'db'"),
        (("=orders", "2"), "limit", "'=orders'"),
        (("db=orders", "-1"), "max", "-1"),
        (("db=orders", "two"), "max", "'two'"),
    ]:
        bad = platform.cli("limit", "set", *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert f"{field}:" in bad.stderr and shown in bad.stderr, bad.stderr
    assert job.result(timeout=60).ok
    assert platform.cli("limit", "rm", f"db={label}").returncode == 0
    assert f"db={label}" not in platform.cli("limit", "ls").stdout


@pytest.fixture
def crashy(
    redis_server: str, docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[Platform]:
    p = make_platform(
        redis_server,
        tmp_path / "home",
        OFFLOAD_WORKER_SLOTS="2",
        OFFLOAD_LEASE_TTL="2",
        OFFLOAD_SWEEP_INTERVAL="0.2",
        OFFLOAD_LOST_MESSAGE_GRACE="1",
    )
    yield p
    p.kill_worker()


def test_a_killed_workers_permit_comes_back_and_the_waiting_job_runs(
    crashy: Platform, docker_client: docker.DockerClient
) -> None:
    p = crashy
    c = p.client
    c.set_limit("db=orders", 1)
    p.start_worker()
    holder = timed(c, "orders", 0, secs=60)
    wait_for(lambda: holder.status() is JobStatus.RUNNING, 60, "the holder running")
    waiter = timed(c, "orders", 1)
    wait_for(lambda: waiter.record().wait == "limit:db=orders", 60, "the second job waiting")
    p.kill_worker()  # SIGKILL: the holder's attempt never returns its permit
    try:
        assert c.broker.redis.hget(keys.limit_holders("db=orders"), holder.id) == "1"
        sweeper = Sweeper(c.broker)

        def swept() -> bool:
            sweeper.sweep()  # paces itself; the first pass only extends leases
            return waiter.status() is JobStatus.QUEUED

        wait_for(swept, 30, "the sweeper returning the permit and queuing the waiter")
        assert holder.status() is JobStatus.QUEUED  # its lease expired: requeued
        assert not c.broker.redis.hexists(keys.limit_holders("db=orders"), holder.id)
        assert holder.cancel() is JobStatus.CANCELLED  # so that the waiter is next for sure
        p.start_worker()
        start, end = interval(p, waiter)
        assert end > start
        assert [(u.running, u.waiting) for u in c.limits()] == [(0, 0)]
    finally:
        for cont in job_containers(docker_client, holder.id):
            docker_client.api.remove_container(cont["Id"], force=True)


def test_a_permit_is_taken_once_whoever_races(platform: Platform) -> None:
    """The gate itself: of many attempts racing for 2 permits, exactly 2 get one."""
    c = platform.client
    name = f"db=race-{uuid.uuid4().hex[:6]}"
    c.set_limit(name, 2)
    limits = Limits(c.broker.records, Pipeline(c.broker.records, c.broker.app).park)
    label, value = name.split("=")
    ids = [uuid.uuid4().hex for _ in range(6)]
    spec = JobSpec(image="offload/base", command=("true",), labels={label: value})
    for job_id in ids:
        c.broker.records.create(job_id, spec, "cpu-small")
        c.broker.records.begin_attempt(job_id, "nowhere")
    verdicts = [limits.enter(job_id, 1, {label: value}) for job_id in ids]
    assert verdicts.count("go") == 2 and verdicts.count("parked") == 4
    assert limits.enter(ids[0], 7, {label: value}) == "fenced"  # not the current attempt
    assert c.limits() and limits.usage(name).running == 2
    for job_id in ids:
        c.broker.records.transition(
            job_id, JobStatus.CANCELLED, reason=Reason.CANCELLED, message="over"
        )
    c.remove_limit(name)
