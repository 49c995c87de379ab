"""Retry policies (backoff, exit codes, OOM escalation into a bigger class) and priorities,
on a real worker: timings read from the job's timeline, order from when containers started."""

from __future__ import annotations

import pytest

from offload.broker.status import JobStatus, Reason
from offload.errors import JobFailed, SpecError
from offload.spec import GiB
from tests.conftest import Platform, ready_messages, wait_for

QUICK = {"OFFLOAD_SWEEP_INTERVAL": "0.5", "OFFLOAD_HEARTBEAT_INTERVAL": "0.5"}


@pytest.fixture
def worker(private_platform: Platform) -> Platform:
    p = private_platform
    p.env.update(QUICK, OFFLOAD_WORKER_SLOTS="1", OFFLOAD_WORKER_CLASSES="cpu-small,cpu-large")
    p.start_worker()
    return p


def test_backoff_spaces_the_retries_and_holds_no_slot_meanwhile(worker: Platform) -> None:
    c = worker.client
    job = c.submit(
        "offload/base",
        ["sh", "-c", "exit 1"],
        retries=2,
        retry={"backoff_initial": 6, "backoff_factor": 1, "jitter": 0},
        name="backoff",
    )
    wait_for(lambda: job.record().retry_at is not None, 30, "the first retry to be scheduled")
    rec = job.record()
    assert rec.status is JobStatus.QUEUED and not ready_messages(c.broker.redis, "cpu-small")
    assert rec.retry_at is not None
    # The failed attempt's message is acknowledged once its task returns (late ack), a moment
    # after the retry was scheduled: wait for that state rather than assert it at once.
    wait_for(lambda: not c.broker.redis.hlen("unacked"), 10, "the failed attempt's ack")
    # Nothing holds the node's one slot during the backoff: a short job starts before it ends.
    short = c.submit("offload/base", ["true"], cache=False, name="overtakes")
    assert short.result(timeout=60).ok
    short_started = next(e.at for e in short.timeline() if e.status is JobStatus.STAGING)
    assert short_started < rec.retry_at, (short_started, rec.retry_at)
    with pytest.raises(JobFailed):
        job.result(timeout=60)
    timeline = job.timeline()
    retried = [e for e in timeline if e.status is JobStatus.QUEUED and e.attempt]
    started = [e for e in timeline if e.status is JobStatus.STAGING]
    assert [e.reason for e in retried] == [Reason.EXIT_CODE, Reason.EXIT_CODE]
    assert "retry 1 of 2" in (retried[0].message or "")
    for n, (q, s) in enumerate(zip(retried, started[1:], strict=True)):
        waited = s.at - q.at
        assert 6 <= waited <= 6 + 2.5, (n, waited)
    assert job.record().attempt == 3


def test_exit_codes_never_and_always_retried(worker: Platform) -> None:
    c = worker.client
    never = c.submit(
        "offload/base",
        ["sh", "-c", "exit 3"],
        retries=3,
        retry={"never_exit_codes": [3], "backoff_initial": 0},
    )
    with pytest.raises(JobFailed):
        never.result(timeout=60)
    assert never.record().attempt == 1 and never.record().exit_code == 3

    always = c.submit(
        "offload/base",
        ["sh", "-c", "exit 4"],
        retries=1,
        retry={"on": ["timeout"], "always_exit_codes": [4], "backoff_initial": 0},
    )
    with pytest.raises(JobFailed):
        always.result(timeout=60)
    assert always.record().attempt == 2


def test_an_oom_killed_job_runs_again_with_more_memory_in_the_next_class(
    worker: Platform,
) -> None:
    c = worker.client
    job = c.submit(
        "offload/python",
        ["python3", "-c", "b = bytearray(1800 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"],
        memory="1536m",
        retries=1,
        retry={"backoff_initial": 0},
        name="grows",
    )
    assert job.record().resource_class == "cpu-small"
    result = job.result(timeout=120)
    assert result.ok and result.attempt == 2
    rec = job.record()
    assert rec.resource_class == "cpu-large" and rec.spec.resources.memory == 3 * GiB
    [retried] = [e for e in job.timeline() if e.status is JobStatus.QUEUED and e.attempt]
    assert retried.reason is Reason.OOM_KILLED
    assert "with 3GiB of memory in cpu-large" in (retried.message or "")


def test_a_high_priority_job_overtakes_queued_lower_ones(worker: Platform) -> None:
    c = worker.client
    blocker = c.submit("offload/base", ["sleep", "3"], name="blocker", cache=False)
    wait_for(lambda: blocker.status() is JobStatus.RUNNING, 60, "the only slot to be busy")
    low = [c.submit("offload/base", ["true"], name=f"low-{i}", cache=False) for i in range(2)]
    mid = c.submit("offload/base", ["true"], name="mid", priority=4, cache=False)
    high = c.submit("offload/base", ["true"], name="high", priority=9, cache=False)
    for job in (*low, mid, high):
        job.result(timeout=90)
    order = sorted((*low, mid, high), key=lambda j: j.record().started_at or 0)
    assert [j.record().name for j in order] == ["high", "mid", "low-0", "low-1"]


def test_bad_retry_and_priority_options_are_refused_naming_the_field(worker: Platform) -> None:
    c = worker.client
    with pytest.raises(SpecError, match=r"^retry\.on"):
        c.submit("offload/base", retry={"on": ["cancelled"]})
    with pytest.raises(SpecError, match=r"^retry\.never_exit_codes"):
        c.submit("offload/base", retry={"never_exit_codes": [300]})
    with pytest.raises(SpecError, match=r"^priority"):
        c.submit("offload/base", priority=10)


def test_retry_and_priority_options_on_the_command_line(worker: Platform) -> None:
    run = worker.cli(
        "submit",
        "offload/base",
        "--retries",
        "2",
        "--retry-never",
        "3",
        "--backoff",
        "5,3,60",
        "--priority",
        "7",
        "--",
        "sh",
        "-c",
        "exit 1",
    )
    assert run.returncode == 0, run.stderr
    job = worker.client.job(run.stdout.strip())
    spec = job.record().spec
    assert spec.priority == 7 and spec.retry.never_exit_codes == {3}
    assert (spec.retry.backoff_initial, spec.retry.backoff_factor, spec.retry.backoff_max) == (
        5,
        3,
        60,
    )
    wait_for(lambda: job.record().retry_at is not None, 30, "the retry to be scheduled")
    status = worker.cli("status", job.id)
    assert "next retry: at" in status.stdout and "retry 1 of 2" in status.stdout
    job.cancel()
    bad = worker.cli("submit", "offload/base", "--backoff", "soon")
    assert bad.returncode == 2 and "--backoff" in bad.stderr
    bad = worker.cli("submit", "offload/base", "--retry-on", "cancelled")
    assert bad.returncode == 2 and "retry.on" in bad.stderr
