"""A job waiting for a whole array, whose last item's worker dies between recording the item's
end and settling the array (``Pipeline.settle_array`` never called): the job is not left
waiting — the sweeper's check of old waiting jobs releases it, once, or fails it when an
item did not succeed."""

from __future__ import annotations

import pytest

from offload.broker.status import JobStatus, Reason
from offload.producer.client import Client
from tests.conftest import Platform


def ended_without_settling(c: Client, job_id: str, to: JobStatus) -> None:
    """What a worker records of an item before it dies: the end, not the dependents."""
    records = c.broker.records
    _, attempt = records.begin_attempt(job_id, "gone-node")
    assert records.transition(job_id, JobStatus.RUNNING, attempt=attempt)
    assert records.transition(job_id, JobStatus.UPLOADING, attempt=attempt)
    fields = {"outputs": {"x.txt": "sha256:" + "a" * 64}} if to is JobStatus.SUCCEEDED else {}
    reason = None if to is JobStatus.SUCCEEDED else Reason.EXIT_CODE
    assert records.transition(job_id, to, attempt=attempt, reason=reason, **fields)


@pytest.mark.parametrize("last", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_a_job_over_an_array_whose_last_item_was_not_settled_is_settled_by_the_sweeper(
    private_platform: Platform, last: JobStatus
) -> None:
    c = private_platform.client
    array = c.map("offload/base", ["true"], each=[{} for _ in range(3)], cpu=2)
    c.broker.feeder.feed(array.id, everything=True)
    child = c.submit("offload/base", ["true"], inputs={"all": array.output("x.txt")})
    assert child.status() is JobStatus.WAITING
    for job in array[:2]:
        ended_without_settling(c, job.id, JobStatus.SUCCEEDED)
    ended_without_settling(c, array[2].id, last)
    assert child.status() is JobStatus.WAITING  # nobody settled the array: the worker died
    pipeline = c.broker.pipeline
    assert pipeline.check_waiting(c.broker.server_time() + 1) == [child.id]
    rec = child.record()
    if last is JobStatus.SUCCEEDED:
        assert rec.status is JobStatus.QUEUED and rec.spec.inputs == {
            "all": f"output:{array.id}/x.txt"
        }  # queued once, its input still the whole array's (the worker reads the items)
    else:
        assert (rec.status, rec.reason) == (JobStatus.FAILED, Reason.UPSTREAM_FAILED)
    assert pipeline.check_waiting(c.broker.server_time() + 1) == []  # settled once
