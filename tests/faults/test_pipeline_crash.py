"""A worker SIGKILLed right after a parent job succeeds: its children still run, once.

The kill lands somewhere around the parent's release of its children (before it, and the
sweeper releases them; after it, and they are simply queued); either way no child waits for
ever and nothing runs twice. tests/test_pipeline.py covers the exact window deterministically.
"""

from __future__ import annotations

import time

import docker

from offload.broker.status import JobStatus
from tests.conftest import Platform, wait_for
from tests.faults.conftest import Runs, leftovers, wait_terminal


def test_children_run_once_when_the_parents_worker_dies_as_it_succeeds(
    fault_platform: Platform, docker_client: docker.DockerClient, runs: Runs
) -> None:
    p = fault_platform
    p.start_worker()
    c = p.client
    parent = c.submit("offload/base", ["sh", "-c", "echo 42 > /offload/out/n"], name="parent")
    kids = [
        c.submit(
            "offload/base",
            ["sh", "-c", f"cat /offload/in/n > /offload/out/k; echo {i} >> /offload/out/k"],
            inputs={"n": parent.output("n")},
            name=f"kid-{i}",
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while parent.status() is not JobStatus.SUCCEEDED:  # poll tightly: the kill must be quick
        assert time.monotonic() < deadline, "the parent never succeeded"
        time.sleep(0.01)
    p.kill_worker()
    p.start_worker()

    ids = [k.id for k in kids]
    wait_terminal(p, ids, 90)
    for i, kid in enumerate(kids):
        result = kid.result(timeout=5)
        assert c.read(result.outputs["k"]) == f"42\n{i}\n".encode()
    counts = runs.count([parent.id, *ids])
    assert {j: counts[j] for j in [parent.id, *ids]} == dict.fromkeys([parent.id, *ids], 1)
    wait_for(lambda: not leftovers(p, docker_client, [parent.id, *ids]), 20, "nothing left")
