"""A poison job — one whose every attempt takes its worker process down — ends `failed`
(`node_lost`) after OFFLOAD_MAX_NODE_LOSSES attempts, and the other jobs keep flowing."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import docker

from offload.broker.status import ACTIVE, JobStatus, Reason
from tests.conftest import Platform, wait_for
from tests.faults.conftest import Runs, leftovers, wait_terminal


def test_a_job_that_kills_its_worker_process_every_time(
    fault_platform: Platform, docker_client: docker.DockerClient, runs: Runs
) -> None:
    p = fault_platform
    p.start_worker()
    client = p.client
    poison = client.submit("offload/base", ["sh", "-c", "sleep 60"], name="poison", retries=5)
    others = [
        client.submit("offload/base", ["sh", "-c", f"sleep 1; echo {i}"], name=f"ok-{i}").id
        for i in range(4)
    ]
    killed: list[int] = []
    stop = threading.Event()

    def kill_its_process() -> None:
        """What the poison does: whichever pool process runs it dies (SIGKILL)."""
        while not stop.wait(0.2):
            rec = poison.record()
            if rec.status.terminal:
                return
            if rec.status in ACTIVE and rec.pid and rec.pid not in killed:
                killed.append(rec.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_its_process)
    killer.start()
    try:
        wait_terminal(p, [poison.id, *others], 120)
    finally:
        stop.set()
        killer.join(10)

    rec = poison.record()
    assert rec.status is JobStatus.FAILED and rec.reason is Reason.NODE_LOST
    assert "3 attempts died with their worker" in (rec.message or ""), rec.message
    assert rec.attempt == 3 and len(killed) == 3  # retries=5 untouched: losses are not retries
    assert {client.job(j).status() for j in others} == {JobStatus.SUCCEEDED}
    counts = runs.count([poison.id, *others])
    assert counts[poison.id] <= 3
    assert {j: counts[j] for j in others} == dict.fromkeys(others, 1)
    ids = [poison.id, *others]
    wait_for(lambda: not leftovers(p, docker_client, ids), 20, "nothing left behind")
