"""Dependencies by data through the Python API, on a real worker: chains, fan-in, ordering
without data, failures flowing downstream, missing outputs, cancels, and the release a crash
missed."""

from __future__ import annotations

import time
import uuid

import pytest

from offload.broker import keys
from offload.broker.pipeline import Pipeline
from offload.broker.records import JobRecords
from offload.broker.status import JobStatus, Reason
from offload.cache import jobseal
from offload.errors import SpecError
from offload.producer.job import Job
from offload.spec import OBJECT_ID_RE, JobSpec
from tests.conftest import Platform, wait_for


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_a_chain_runs_in_order_with_outputs_passed_along(platform: Platform) -> None:
    c = platform.client
    tag = uuid.uuid4().hex[:8]
    a = c.submit("offload/base", sh(f"echo {tag} > /offload/out/a.txt"), name="step a")
    b = c.submit(
        "offload/base",
        sh("tr a-z A-Z < /offload/in/text > /offload/out/b.txt"),
        inputs={"text": a.output("a.txt")},
        name="step b",
    )
    d = c.submit(
        "offload/base",
        sh("cat /offload/in/up /offload/in/up > /offload/out/c.txt"),
        inputs={"up": b.output("b.txt")},
        name="step c",
    )
    assert d.status() is JobStatus.WAITING  # submitted before anything ran
    result = d.result(timeout=90)
    assert c.read(result.outputs["c.txt"]) == f"{tag.upper()}\n{tag.upper()}\n".encode()
    rec = d.record()
    assert OBJECT_ID_RE.match(rec.spec.inputs["up"])  # resolved to a content id
    assert rec.spec.inputs["up"] == b.result(timeout=5).outputs["b.txt"]
    statuses = [e.status for e in d.timeline()]
    assert statuses[:2] == [JobStatus.WAITING, JobStatus.QUEUED]
    assert b.record().started_at and a.record().finished_at
    assert (a.record().finished_at or 0) <= (b.record().started_at or 0)


def test_fan_in_over_a_whole_map(platform: Platform) -> None:
    c = platform.client
    parts = c.map(
        "offload/base",
        sh('echo "part $OFFLOAD_TASK_INDEX" > /offload/out/part.txt'),
        each=[{} for _ in range(3)],
        name="part",
    )
    total = c.submit(
        "offload/base",
        sh("cat /offload/in/p0 /offload/in/p1 /offload/in/p2 > /offload/out/all.txt"),
        inputs={f"p{i}": job.output("part.txt") for i, job in enumerate(parts)},
        name="fan-in",
    )
    result = total.result(timeout=90)
    assert c.read(result.outputs["all.txt"]) == b"part 0\npart 1\npart 2\n"
    assert Pipeline(c.broker.records, c.broker.app).parents(total.id) == sorted(j.id for j in parts)


def test_after_orders_without_data(platform: Platform) -> None:
    c = platform.client
    first = c.submit("offload/base", sh("sleep 1"), name="first")
    second = c.submit("offload/base", ["true"], after=[first], name="second", cache=False)
    assert second.result(timeout=60).ok
    assert (first.record().finished_at or 0) <= (second.record().started_at or 0)
    assert second.record().spec.after == (first.id,)


def test_a_failing_parent_fails_every_waiting_descendant(platform: Platform) -> None:
    c = platform.client
    bad = c.submit("offload/base", sh("exit 3"), name="bad parent")
    child = c.submit("offload/base", ["true"], inputs={"x": bad.output("x")}, name="child")
    grandchild = c.submit("offload/base", ["true"], after=[child], name="grandchild")
    wait_for(lambda: grandchild.status().terminal, 60, "the grandchild to end")
    for job, parent in ((child, bad), (grandchild, child)):
        rec = job.record()
        assert rec.status is JobStatus.FAILED and rec.reason is Reason.UPSTREAM_FAILED
        assert parent.id in (rec.message or "")
    assert "exit_code" in (child.record().message or "")


def test_an_output_the_parent_never_wrote_fails_the_child_naming_it(platform: Platform) -> None:
    c = platform.client
    parent = c.submit("offload/base", sh("echo 1 > /offload/out/real.txt"), name="writer")
    child = c.submit("offload/base", ["true"], inputs={"x": parent.output("missing.txt")})
    wait_for(lambda: child.status().terminal, 60, "the child to end")
    rec = child.record()
    assert rec.status is JobStatus.FAILED and rec.reason is Reason.INPUT_MISSING
    assert "'missing.txt'" in (rec.message or "") and "real.txt" in (rec.message or "")


def test_references_are_checked_at_submit(platform: Platform) -> None:
    c = platform.client
    nobody = uuid.uuid4().hex
    with pytest.raises(SpecError, match=r"^inputs\.x: no job"):
        c.submit("offload/base", inputs={"x": f"output:{nobody}/a.txt"})
    with pytest.raises(SpecError, match=r"^after\[0\]: no job"):
        c.submit("offload/base", after=[nobody])
    with pytest.raises(SpecError, match=r"^inputs\.x"):
        c.submit("offload/base", inputs={"x": f"output:{nobody}/../etc"})
    with pytest.raises(SpecError, match=r"^output"):
        Job(c, nobody).output("")


def test_a_parent_already_done_releases_the_child_at_once(platform: Platform) -> None:
    c = platform.client
    parent = c.submit("offload/base", sh("echo hi > /offload/out/o"), name="early")
    parent.result(timeout=60)
    child = c.submit("offload/base", sh("cat /offload/in/i"), inputs={"i": parent.output("o")})
    assert child.status() is not JobStatus.WAITING
    assert child.result(timeout=60).ok


def test_cancelling_a_parent_fails_its_children_or_cancels_them_too(platform: Platform) -> None:
    c = platform.client
    slow = c.submit("offload/base", sh("sleep 30"), name="slow parent", cache=False)
    child = c.submit("offload/base", ["true"], after=[slow])
    slow.cancel()
    wait_for(lambda: child.status().terminal, 30, "the child to end")
    assert child.record().reason is Reason.UPSTREAM_FAILED

    root = c.submit("offload/base", sh("sleep 30"), name="root", cache=False)
    kids = [c.submit("offload/base", ["true"], after=[root]) for _ in range(2)]
    grandkid = c.submit("offload/base", ["true"], after=kids)
    root.cancel(with_descendants=True)
    for job in (*kids, grandkid):
        assert job.status() is JobStatus.CANCELLED
    wait_for(lambda: root.status() is JobStatus.CANCELLED, 30, "the root cancelled")


def test_cancel_with_descendants_wins_against_the_fastest_worker(platform: Platform) -> None:
    """A running root's worker may end it (and fail its waiting children) the instant the
    cancel is asked: the descendants are cancelled before the root, so none ends failed."""
    c = platform.client
    pipeline: Pipeline

    class FastWorker(JobRecords):
        def request_cancel(self, job_id: str) -> JobStatus:
            status = super().request_cancel(job_id)
            if status is JobStatus.RUNNING:  # its worker kills it and records the end at once
                assert self.transition(job_id, JobStatus.CANCELLED, attempt=1)
                pipeline.on_done(job_id)
                return JobStatus.CANCELLED
            return status

    records = FastWorker.from_settings(c.broker.redis, platform.settings)
    pipeline = Pipeline(records, c.broker.app)
    root, kid, grandkid = (uuid.uuid4().hex for _ in range(3))
    records.create(root, JobSpec(image="offload/base"), "cpu-small")
    records.begin_attempt(root, "ghost", 1)
    assert records.transition(root, JobStatus.RUNNING, attempt=1)
    pipeline.submit(kid, JobSpec(image="offload/base", after=(root,)), "cpu-small")
    pipeline.submit(grandkid, JobSpec(image="offload/base", after=(kid,)), "cpu-small")
    assert pipeline.cancel_with_descendants(root) == {
        root: JobStatus.CANCELLED,
        kid: JobStatus.CANCELLED,
        grandkid: JobStatus.CANCELLED,
    }
    assert records.get(kid).reason is Reason.CANCELLED


def test_a_release_a_crash_missed_is_made_by_the_sweeper(platform: Platform) -> None:
    """The parent's success is recorded but its worker dies before releasing the child."""
    c = platform.client
    records = JobRecords.from_settings(c.broker.redis, platform.settings)
    parent_id, child_id = uuid.uuid4().hex, uuid.uuid4().hex
    oid = c.store.put_bytes(b"made by the parent\n")
    records.create(parent_id, JobSpec(image="offload/base"), "cpu-small")
    records.begin_attempt(parent_id, "ghost", 1)
    spec = JobSpec(image="offload/base", command=("cat", "/offload/in/x"))
    child_spec = spec.model_copy(update={"inputs": {"x": f"output:{parent_id}/o"}})
    child_spec = jobseal.seal_job(c.key, child_id, child_spec)  # as Client.submit signs it
    Pipeline(records, c.broker.app).submit(child_id, child_spec, "cpu-small")
    assert records.status(child_id) is JobStatus.WAITING
    # the parent succeeds; the crash comes before Pipeline.on_done
    assert records.transition(parent_id, JobStatus.RUNNING, attempt=1)
    assert records.transition(parent_id, JobStatus.UPLOADING, attempt=1)
    signed = {jobseal.OUTPUTS_SIG: jobseal.sign_outputs(c.key, parent_id, {"o": oid})}
    assert records.transition(
        parent_id, JobStatus.SUCCEEDED, attempt=1, outputs={"o": oid}, **signed
    )
    time.sleep(0.05)
    assert records.status(child_id) is JobStatus.WAITING
    c.broker.redis.zadd(keys.WAITING, {child_id: 1.0})  # waiting long past the grace
    # the worker's own sweeper (every OFFLOAD_SWEEP_INTERVAL) settles it
    result = c.job(child_id).result(timeout=60)
    assert result.ok and c.job(child_id).record().spec.inputs["x"] == oid
