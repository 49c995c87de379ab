"""Someone who can write Redis but lacks the cluster key cannot run anything: a job record
written straight into Redis, a signed job whose image, command, input or parameter was
changed, and a signed spec replayed under another id are refused — no container starts
(counted from the engine's events), the record says ``forged`` — and the worker goes on
serving valid jobs."""

from __future__ import annotations

import json
import uuid

from offload.broker import keys
from offload.broker.publish import publish
from offload.broker.status import JobStatus, Reason
from offload.spec import JobSpec
from tests.conftest import Platform

from .conftest import Runs, wait_terminal

TOUCH = ("sh", "-c", "echo ran > /offload/out/ran")


def alter(p: Platform, job_id: str, **change: object) -> None:
    """Rewrite a queued job's spec in Redis, as an attacker with write access would."""
    r = p.client.broker.redis
    spec = json.loads(r.hget(keys.job(job_id), "spec"))
    spec.update(change)
    r.hset(keys.job(job_id), "spec", JobSpec.model_validate(spec).encode())


def test_forged_altered_and_replayed_jobs_never_run(fault_platform: Platform, runs: Runs) -> None:
    p = fault_platform
    client = p.client
    other = p.settings.home / "other.txt"
    other.write_text("another object of the cluster")
    other_id = client.put(other)
    src = p.settings.home / "in.txt"
    src.write_text("the real input")

    # signed jobs, queued while no worker runs, then altered in Redis
    altered = {
        "image": client.submit("offload/base", TOUCH, params={"n": 1}),
        "command": client.submit("offload/base", TOUCH, params={"n": 2}),
        "input": client.submit("offload/base", TOUCH, inputs={"x": src}),
        "param": client.submit("offload/base", TOUCH, params={"n": 3}),
    }
    alter(p, altered["image"].id, image="offload/python")
    alter(p, altered["command"].id, command=["sh", "-c", "echo pwned > /offload/out/ran"])
    alter(p, altered["input"].id, inputs={"x": other_id})
    alter(p, altered["param"].id, params={"n": 4})

    # a record and a message with no signature at all
    forged = uuid.uuid4().hex
    client.broker.records.create(forged, JobSpec(image="offload/base", command=TOUCH), "cpu-small")
    publish(client.broker.app, client.broker.records.get(forged))

    # a signed spec replayed under an id of the attacker's choosing
    source = client.submit("offload/base", TOUCH, params={"n": 5})
    replayed = uuid.uuid4().hex
    client.broker.records.create(replayed, client.broker.records.get(source.id).spec, "cpu-small")
    publish(client.broker.app, client.broker.records.get(replayed))

    refused = [j.id for j in altered.values()] + [forged, replayed]
    p.start_worker()
    wait_terminal(p, refused, 120)
    for job_id in refused:
        rec = client.broker.records.get(job_id)
        assert rec.status is JobStatus.FAILED, (job_id, rec.status, rec.message)
        assert rec.reason is Reason.FORGED, (job_id, rec.reason, rec.message)
        assert "refused, not run" in (rec.message or "")
    assert "not signed" in (client.broker.records.get(forged).message or "")

    # the worker still serves valid jobs: the replay's source, and one submitted now
    after = client.submit("offload/base", TOUCH, params={"n": 6})
    for job in (source, after):
        assert job.result(timeout=120).outputs.keys() == {"ran"}
    counted = runs.count([*refused, source.id, after.id])
    assert all(counted[j] == 0 for j in refused), counted
    assert counted[source.id] == counted[after.id] == 1, counted
