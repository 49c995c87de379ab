"""One way out of an attempt: whatever ends it — a step crashing, the broker going away, the
process being stopped — its container, workspace, GPUs and limit permits are given back.

The node runs in this process (the real Docker engine, Redis and store); the fault is a
runtime whose ``start`` or ``wait`` raises, the one thing injected.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import docker
import pytest
import redis

from offload.broker.core import Broker
from offload.broker.status import JobStatus, Reason
from offload.cache.factory import open_store
from offload.cache.keys import load_key
from offload.errors import BrokerError
from offload.spec import GiB
from offload.worker.capacity import Capacity, Gpu
from offload.worker.docker_runtime import DockerRuntime
from offload.worker.executor import Node, execute
from offload.worker.gpus import GpuAllocator, lock_dir
from offload.worker.runtime import ContainerRequest, Exit, LogSink

from ..conftest import Platform, job_containers

GPU = Gpu(index=0, uuid="GPU-test-exit", memory=80 * GiB, name="stand-in")
CAPACITY = Capacity(cpus=2.0, memory=8 * GiB, gpus=(GPU,))


class Faulty(DockerRuntime):
    """The real runtime, with one step made to raise once the container exists."""

    def __init__(self, client: docker.DockerClient, fail_in: str, error: BaseException) -> None:
        super().__init__(client)
        self.fail_in, self.error = fail_in, error
        self.created: list[str] = []

    def create(self, req: ContainerRequest) -> str:
        # the stand-in GPU exists only in the allocator: the engine gets no device request
        cid = super().create(dataclasses.replace(req, gpus=()))
        self.created.append(cid)
        return cid

    def start(self, container: str, sink: LogSink) -> None:
        if self.fail_in == "start":
            raise self.error
        super().start(container, sink)

    def wait(self, container: str, timeout: float) -> Exit | None:
        if self.fail_in == "wait":
            raise self.error
        return super().wait(container, timeout)

    def gpus_in_use(self) -> set[str]:  # the stand-in GPU is nobody's
        return set()


def node(p: Platform, broker: Broker, runtime: DockerRuntime) -> Node:
    settings = p.settings
    work = settings.home / "work"
    work.mkdir(parents=True, exist_ok=True)
    return Node(
        name=settings.node_name,
        capacity=CAPACITY,
        records=broker.records,
        store=open_store(settings),
        runtime=runtime,
        work_dir=work,
        user=settings.container_user,
        pids_limit=settings.pids_limit,
        tmpfs_size=settings.tmpfs_size,
        requeue=lambda *a: None,
        gpus=GpuAllocator(CAPACITY.gpus, lock_dir(settings.home), wait=0),
        limits=broker.limits,
        inflight=broker.inflight,
        key=load_key(settings.key_path),
    )


def nothing_left(p: Platform, broker: Broker, n: Node, job_id: str, runtime: Faulty) -> None:
    client = docker.from_env()
    assert runtime.created, "the fault must come after the container was created"
    assert job_containers(client, job_id) == []
    assert not any(Path(n.work_dir).glob(f"{job_id}*")), list(Path(n.work_dir).iterdir())
    assert n.gpus is not None and n.gpus.holders() == {}
    usage = broker.limits.usage("db=exit")
    assert (usage.running, usage.waiting) == (0, 0)


def submitted(p: Platform, broker: Broker) -> str:
    broker.limits.set_limit("db=exit", 1)
    job = p.client.submit(
        "offload/base", ["sleep", "30"], gpus=1, labels={"db": "exit"}, cache=False
    )
    return job.id


@pytest.mark.parametrize("step", ["start", "wait"])
def test_a_step_that_crashes_releases_everything_and_fails_the_job(
    private_platform: Platform, docker_client: docker.DockerClient, step: str
) -> None:
    p = private_platform
    broker = Broker(p.settings)
    runtime = Faulty(docker_client, step, RuntimeError(f"{step} broke"))
    n = node(p, broker, runtime)
    job_id = submitted(p, broker)

    assert execute(n, job_id) is JobStatus.FAILED

    rec = broker.records.get(job_id)
    assert (rec.status, rec.reason) == (JobStatus.FAILED, Reason.WORKER_ERROR)
    assert f"RuntimeError: {step} broke" in (rec.message or "")
    nothing_left(p, broker, n, job_id, runtime)


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (BrokerError("broker (Redis) error: connection lost"), BrokerError),
        # a Redis call no part translated (here a failover's former master): an outage too,
        # never the job's failure (worker_error)
        (redis.ReadOnlyError("You can't write against a read only replica."), BrokerError),
        (KeyboardInterrupt(), KeyboardInterrupt),  # the process is being stopped
    ],
)
def test_an_attempt_cut_short_releases_everything_and_records_nothing(
    private_platform: Platform,
    docker_client: docker.DockerClient,
    error: BaseException,
    raised: type[BaseException],
) -> None:
    p = private_platform
    broker = Broker(p.settings)
    runtime = Faulty(docker_client, "wait", error)
    n = node(p, broker, runtime)
    job_id = submitted(p, broker)

    with pytest.raises(raised):
        execute(n, job_id)

    # nothing recorded: the lease runs out and the sweeper queues the job again
    assert broker.records.status(job_id) is JobStatus.RUNNING
    nothing_left(p, broker, n, job_id, runtime)
