"""A worker node dies between taking a job's message and the job's first step.

kombu moved the message to its unacknowledged entries when the worker took it; the job's
record still says ``queued`` (no attempt began, so no lease will expire) and the message is
not in any queue. A Redis failover leaves the same state behind when the worker's connection
breaks there. The sweeper publishes the job again once that delivery is older than
``OFFLOAD_LOST_MESSAGE_GRACE`` and drops the stale entry: the job runs once, on the next
worker, and nothing is left behind. Before, it stayed ``queued`` for the visibility timeout
(a day).

The fault is injected with a ``sitecustomize`` module on the worker's PYTHONPATH: the first
call of ``JobRecords.begin_attempt`` in that worker SIGKILLs its whole process group (main
process and pool) — a death at that exact step cannot be timed from outside.
"""

from __future__ import annotations

import os
from pathlib import Path

import docker

from offload.broker.status import JobStatus
from tests.conftest import Platform, wait_for
from tests.faults.conftest import Runs, leftovers

INJECT = """
import os, signal
from pathlib import Path
from offload.broker import records

MARK = Path({mark!r})
_begin = records.JobRecords.begin_attempt

def begin_attempt(self, *args, **kwargs):
    if MARK.exists():
        MARK.unlink()
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the whole node, before the first step
    return _begin(self, *args, **kwargs)

records.JobRecords.begin_attempt = begin_attempt
"""


def test_a_node_that_dies_after_taking_a_message_does_not_strand_the_job(
    fault_platform: Platform, docker_client: docker.DockerClient, runs: Runs, tmp_path: Path
) -> None:
    p = fault_platform
    inject = tmp_path / "inject"
    inject.mkdir()
    mark = tmp_path / "die-once"
    mark.touch()
    (inject / "sitecustomize.py").write_text(INJECT.format(mark=str(mark)))
    p.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(inject), p.env.get("PYTHONPATH")]))
    p.start_worker()
    job = p.client.submit("offload/base", ["sh", "-c", "echo ran > /offload/out/r"])
    assert p.proc is not None
    p.proc.wait(30)  # the node died taking it
    assert not mark.exists()
    assert job.status() is JobStatus.QUEUED  # no attempt began: no lease to expire
    assert p.client.broker.redis.hlen("unacked") == 1  # the message: delivered, never acknowledged

    p.start_worker()  # the next node (the same machine here): no fault any more
    result = job.result(timeout=60)
    assert result.status is JobStatus.SUCCEEDED and result.attempt == 1
    assert p.client.read(result.outputs["r"]) == b"ran\n"
    assert runs.count([job.id])[job.id] == 1
    wait_for(lambda: p.client.broker.redis.hlen("unacked") == 0, 20, "the stale delivery dropped")
    assert leftovers(p, docker_client, [job.id]) == []
