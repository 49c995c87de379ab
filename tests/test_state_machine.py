"""The job state machine: one table, checked on every write, fenced by attempt, and the node's
running set written in the same atomic call as the transitions (real Redis)."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterator

import pytest
import redis

from offload.broker import keys, scripts
from offload.broker.nodes import NodeRegistry
from offload.broker.records import JobRecords
from offload.broker.status import (
    PENDING,
    TERMINAL,
    TRANSITIONS,
    JobStatus,
    Reason,
    allowed,
    sources,
)
from offload.spec import JobSpec
from tests.conftest import new_db

SPEC = JobSpec(image="offload/base", command=("true",))


@pytest.fixture
def r(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_server}/{new_db()}", decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def records(r: redis.Redis) -> JobRecords:
    return JobRecords(r, record_ttl=3600, log_max_entries=1000)


def new_job(records: JobRecords, status: JobStatus = JobStatus.QUEUED) -> str:
    job_id = uuid.uuid4().hex
    records.create(job_id, SPEC, "cpu-small", status)
    return job_id


def running(r: redis.Redis, node: str) -> set[str]:
    return set(r.smembers(keys.node_running(node)))


# -- the table -------------------------------------------------------------------------------


def test_every_state_has_a_row_and_terminal_states_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    for s in TERMINAL:
        assert TRANSITIONS[s] == frozenset()
    for s in set(JobStatus) - TERMINAL:
        assert TRANSITIONS[s], f"{s} can never end"


def test_the_documented_paths_are_allowed_and_shortcuts_are_not() -> None:
    path = ["waiting", "queued", "staging", "running", "uploading", "succeeded"]
    for a, b in itertools.pairwise(path):
        assert allowed(JobStatus(a), JobStatus(b)), (a, b)
    assert not allowed(JobStatus.QUEUED, JobStatus.SUCCEEDED)
    assert not allowed(JobStatus.WAITING, JobStatus.RUNNING)
    assert not allowed(JobStatus.QUEUED, JobStatus.RUNNING)
    assert sources(JobStatus.STAGING) == {JobStatus.QUEUED}  # begin_attempt only
    assert JobStatus.WAITING in PENDING and JobStatus.QUEUED in PENDING


def test_the_lua_scripts_spell_no_state_of_their_own() -> None:
    for name in ("TRANSITION", "BEGIN_ATTEMPT", "CANCEL"):
        body = getattr(scripts, name)
        quoted = set(re.findall(r"'([a-z_]+)'", body))
        assert not quoted & {s.value for s in JobStatus}, name


# -- records, against Redis --------------------------------------------------------------------


def test_a_move_the_table_refuses_is_not_made(records: JobRecords) -> None:
    job_id = new_job(records)
    assert not records.transition(job_id, JobStatus.SUCCEEDED)
    assert records.status(job_id) is JobStatus.QUEUED
    assert [e.status for e in records.timeline(job_id)] == [JobStatus.QUEUED]
    with pytest.raises(ValueError, match="begin_attempt"):
        records.transition(job_id, JobStatus.STAGING)


def test_reasons_are_reason_values_never_strings(records: JobRecords) -> None:
    job_id = new_job(records)
    with pytest.raises(TypeError, match="Reason"):
        records.transition(job_id, JobStatus.FAILED, reason="exit_code")
    assert records.transition(job_id, JobStatus.FAILED, reason=Reason.UNSCHEDULABLE)
    rec = records.get(job_id)
    assert rec.reason is Reason.UNSCHEDULABLE
    assert records.timeline(job_id)[-1].reason is Reason.UNSCHEDULABLE


def test_a_waiting_job_is_not_started_and_can_be_cancelled_or_released(
    records: JobRecords,
) -> None:
    waiting = new_job(records, JobStatus.WAITING)
    prev, attempt = records.begin_attempt(waiting, "n1", 11)
    assert (prev, attempt) == (JobStatus.WAITING, 0)
    assert records.status(waiting) is JobStatus.WAITING
    assert records.request_cancel(waiting) is JobStatus.CANCELLED
    other = new_job(records, JobStatus.WAITING)
    assert records.transition(other, JobStatus.QUEUED)
    with pytest.raises(ValueError):
        records.create(uuid.uuid4().hex, SPEC, "cpu-small", JobStatus.RUNNING)


def test_the_running_set_follows_the_record_atomically(records: JobRecords, r: redis.Redis) -> None:
    registry = NodeRegistry(r, lost_after=15)
    job_id = new_job(records)
    assert records.begin_attempt(job_id, "n1", 4242) == (JobStatus.QUEUED, 1)
    assert running(r, "n1") == {job_id}
    owner = registry.owner("n1", job_id)
    assert owner is not None and (owner.pid, owner.attempt) == (4242, 1)
    assert records.get(job_id).pid == 4242

    assert r.zscore(keys.LEASES, job_id) is not None and r.zscore(keys.QUEUED, job_id) is None

    # a duplicate delivery never starts a second attempt while one holds the job
    assert records.begin_attempt(job_id, "n2", 7) == (JobStatus.STAGING, 1)
    assert running(r, "n2") == set() and running(r, "n1") == {job_id}

    # back to the queue: off the node, lease gone, in the queued index — in the same call
    assert records.transition(job_id, JobStatus.QUEUED, attempt=1, reason=Reason.NODE_LOST)
    assert running(r, "n1") == set() and registry.owner("n1", job_id) is None
    assert r.zscore(keys.LEASES, job_id) is None and r.zscore(keys.QUEUED, job_id) is not None
    assert records.begin_attempt(job_id, "n2", 7) == (JobStatus.QUEUED, 2)
    assert records.transition(job_id, JobStatus.QUEUED, attempt=2, reason=Reason.NODE_LOST)

    # to a terminal state: likewise
    records.begin_attempt(job_id, "n3", 8)
    assert records.transition(job_id, JobStatus.RUNNING, attempt=3)
    assert running(r, "n3") == {job_id}
    assert records.transition(job_id, JobStatus.FAILED, attempt=3, reason=Reason.EXIT_CODE)
    assert running(r, "n3") == set() and registry.owner("n3", job_id) is None
    assert r.zscore(keys.LEASES, job_id) is None and r.zscore(keys.QUEUED, job_id) is None


def test_a_superseded_attempt_cannot_write(records: JobRecords, r: redis.Redis) -> None:
    job_id = new_job(records)
    records.begin_attempt(job_id, "n1", 1)
    assert records.transition(job_id, JobStatus.RUNNING, attempt=1)
    # n1's lease expired: the sweeper requeued the job, and n2 took it
    assert records.transition(job_id, JobStatus.QUEUED, attempt=1, reason=Reason.NODE_LOST)
    records.begin_attempt(job_id, "n2", 2)
    assert not records.renew(job_id, 1)
    assert not records.transition(job_id, JobStatus.UPLOADING, attempt=1)
    assert not records.transition(
        job_id, JobStatus.FAILED, attempt=1, reason=Reason.EXIT_CODE, exit_code=3
    )
    rec = records.get(job_id)
    assert (rec.status, rec.attempt, rec.node, rec.exit_code) == (JobStatus.STAGING, 2, "n2", None)
    assert running(r, "n2") == {job_id}  # the stale attempt's write did not touch n2's set
    assert records.renew(job_id, 2)
    assert records.transition(job_id, JobStatus.RUNNING, attempt=2)


def test_renewing_a_lease_moves_its_expiry_on_redis_time(
    records: JobRecords, r: redis.Redis
) -> None:
    job_id = new_job(records)
    records.begin_attempt(job_id, "n1", 1)
    sec, usec = r.time()
    now = sec + usec / 1e6
    first = r.zscore(keys.LEASES, job_id)
    assert first is not None and now < first <= now + records.lease_ttl + 0.5
    r.zadd(keys.LEASES, {job_id: now - 1})  # as if it had run out
    assert records.renew(job_id, 1)
    renewed = r.zscore(keys.LEASES, job_id)
    assert renewed is not None and renewed > now + records.lease_ttl - 1


def test_cancel_flags_an_active_job_and_ends_a_queued_one(
    records: JobRecords, r: redis.Redis
) -> None:
    queued = new_job(records)
    assert records.request_cancel(queued) is JobStatus.CANCELLED
    assert records.get(queued).reason is Reason.CANCELLED
    active = new_job(records)
    records.begin_attempt(active, "n1", 1)
    assert records.request_cancel(active) is JobStatus.STAGING
    assert records.cancel_requested(active)
    # a started job whose worker is dead (lease run out) is cancelled at once
    orphan = new_job(records)
    records.begin_attempt(orphan, "n9", 1)
    r.zadd(keys.LEASES, {orphan: 1.0})
    assert records.request_cancel(orphan) is JobStatus.CANCELLED
    assert r.zscore(keys.LEASES, orphan) is None and running(r, "n9") == set()
    done = new_job(records)
    records.begin_attempt(done, "n1", 1)
    records.transition(done, JobStatus.CANCELLED, attempt=1, reason=Reason.CANCELLED)
    assert records.request_cancel(done) is JobStatus.CANCELLED
