"""A worker SIGKILLed while its job's URL input is half fetched: restarted, the job runs
again once (no retry spent), fetches the input again from the start, and nothing is left:
no partial object in the cache, no temp file, no container, no work folder."""

from __future__ import annotations

import hashlib
import os

import docker

from offload.broker.status import JobStatus, Reason
from tests.conftest import Platform, wait_for
from tests.faults.conftest import Runs, leftovers, wait_terminal
from tests.httpserver import HTTPFiles


def test_worker_killed_mid_fetch_the_job_runs_again_once(
    fault_platform: Platform, docker_client: docker.DockerClient, runs: Runs, http_files: HTTPFiles
) -> None:
    p = fault_platform
    data = os.urandom(4 * 1024 * 1024)
    http_files.files["/big.bin"] = data
    http_files.slow["/big.bin"] = 0.1  # 64 chunks: ~6.4 s a fetch
    p.start_worker()
    job = p.client.submit(
        "offload/base", ["sh", "-c", "sha256sum /offload/in/big | cut -c1-64"],
        inputs={"big": http_files.url("/big.bin")}, retries=0,
    )  # fmt: skip
    wait_for(lambda: http_files.sent["/big.bin"] >= 512 * 1024, 60, "the fetch to be under way")
    p.kill_worker()
    assert http_files.sent["/big.bin"] < len(data)  # killed mid-body
    tmp = p.settings.store_dir / "tmp"
    p.start_worker()
    wait_terminal(p, [job.id], 120)
    rec = job.record()
    assert rec.status is JobStatus.SUCCEEDED, (rec.reason, rec.message)
    assert [line.text for line in job.logs()][-1] == hashlib.sha256(data).hexdigest()
    assert rec.attempt == 2 and runs.count([job.id])[job.id] == 1  # one container, once
    lost = [e.reason for e in job.timeline() if e.status is JobStatus.QUEUED and e.attempt]
    assert lost == [Reason.NODE_LOST]
    assert http_files.started["/big.bin"] == 2  # fetched again from the start
    assert not list(tmp.rglob("seal-*"))  # the half-sealed temp file was swept at restart
    oid = rec.fetched["big"]
    assert oid == "sha256:" + hashlib.sha256(data).hexdigest() and p.client.read(oid) == data
    wait_for(lambda: not leftovers(p, docker_client, [job.id]), 15, "nothing left behind")
