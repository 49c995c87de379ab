"""The GPU path, as far as a machine without GPUs can check it: the device request Docker
gets, the clear failure when no GPU runtime exists, node discovery, classes and routing.
Giving concurrent jobs GPUs of their own: test_gpu_allocation.py."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from offload import JobFailed, JobStatus
from offload.broker.app import redis_client
from offload.broker.records import JobRecords
from offload.cache.factory import open_store
from offload.cache.keys import load_key
from offload.spec import GiB, ResourceClass
from offload.worker.capacity import Capacity, Gpu, parse_nvidia_smi, served_classes
from offload.worker.docker_runtime import DockerRuntime, gpu_request
from offload.worker.executor import Node, execute
from offload.worker.gpus import GpuAllocator, lock_dir
from offload.worker.runtime import ContainerRequest, StartFailed

from .conftest import Platform, job_containers, ready_messages

NVIDIA_SMI = "0, GPU-1b2c, 81559, NVIDIA H100 80GB HBM3\n1, GPU-9f8e, 81559, NVIDIA H100, PCIe\n"


def in_process_node(p: Platform, client: docker.DockerClient, name: str, cap: Capacity) -> Node:
    """A node running jobs in this process, with a capacity of the test's choosing."""
    settings = p.settings
    work = settings.home / "work"
    work.mkdir(parents=True, exist_ok=True)
    return Node(
        name=name,
        capacity=cap,
        records=JobRecords(redis_client(settings), record_ttl=600, log_max_entries=1000),
        store=open_store(settings),
        runtime=DockerRuntime(client),
        work_dir=work,
        user=settings.container_user,
        pids_limit=settings.pids_limit,
        tmpfs_size=settings.tmpfs_size,
        requeue=lambda *a: None,
        gpus=GpuAllocator(cap.gpus, lock_dir(settings.home), wait=0),
        key=load_key(settings.key_path),
    )


def test_device_request_names_the_gpus() -> None:
    req = gpu_request(["GPU-1b2c", "GPU-9f8e"])
    assert req["DeviceIDs"] == ["GPU-1b2c", "GPU-9f8e"]
    assert req["Count"] == 0  # never a count: the engine would give every job GPU 0
    assert req["Capabilities"] == [["gpu"]]
    assert req["Driver"] == "nvidia"
    with pytest.raises(ValueError):
        gpu_request([])


def test_gpu_discovery_parses_nvidia_smi() -> None:
    gpus = parse_nvidia_smi(NVIDIA_SMI)
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert gpus[1].name == "NVIDIA H100, PCIe"  # a name may hold commas
    assert gpus[1].uuid == "GPU-9f8e"
    assert gpus[0].memory == 81559 * 1024 * 1024


def test_gpu_nodes_serve_the_gpu_class(private_platform: Platform) -> None:
    settings = private_platform.settings
    plain = Capacity(cpus=16, memory=64 << 30)
    with_gpus = Capacity(cpus=16, memory=64 << 30, gpus=parse_nvidia_smi(NVIDIA_SMI))
    assert [c.name for c in served_classes(settings, plain)] == ["cpu-small", "cpu-large"]
    assert [c.name for c in served_classes(settings, with_gpus)] == [
        "cpu-small",
        "cpu-large",
        "gpu-large",
    ]


def test_engine_without_gpu_runtime_refuses_and_nothing_is_left(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    runtime = DockerRuntime(docker_client)
    req = ContainerRequest(
        job_id="gpu-probe",
        attempt=1,
        image="offload/base",
        command=("true",),
        env={},
        mounts=(),
        cpu=1,
        memory=256 << 20,
        gpus=("GPU-1b2c",),
    )
    container = runtime.create(req)
    try:
        host = docker_client.api.inspect_container(container)["HostConfig"]
        assert host["DeviceRequests"][0]["DeviceIDs"] == ["GPU-1b2c"]
        assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
        with pytest.raises(StartFailed) as info:
            runtime.start(container, lambda stream, data: None)
        assert info.value.gpu
        assert "no GPU runtime on this node" in str(info.value)
    finally:
        runtime.remove(container)
    assert job_containers(docker_client, "gpu-probe") == []


def test_gpu_job_is_routed_and_fails_clearly_on_a_node_without_gpu_runtime(
    private_platform: Platform, docker_client: docker.DockerClient
) -> None:
    p = private_platform
    job = p.client.submit("offload/base", ["nvidia-smi"], gpus=1, cpu=1, memory="1g")
    assert job.record().resource_class == "gpu-large"
    assert len(ready_messages(p.client.broker.redis, "gpu-large")) == 1
    # A node that believes it has a GPU (the one fault we cannot cause here) runs the job
    # with the real engine, which has no NVIDIA runtime.
    gpu = Gpu(0, "test", "GPU-0", 1 << 30)
    node = in_process_node(p, docker_client, "fake-gpu-node", Capacity(4, 8 << 30, (gpu,)))
    assert execute(node, job.id) is JobStatus.FAILED
    with pytest.raises(JobFailed) as info:
        job.result(timeout=5)
    assert info.value.result.reason == "gpu_unavailable"
    assert "no GPU runtime" in (info.value.result.message or "")
    assert job.record().gpus == ("GPU-0",)  # the GPU it was given, for `offload status`
    assert node.gpus is not None and node.gpus.holders() == {}  # and given back
    assert job_containers(docker_client, job.id) == []


def test_a_gpu_job_finding_every_gpu_taken_goes_back_to_the_queue_without_a_container(
    private_platform: Platform, docker_client: docker.DockerClient
) -> None:
    p = private_platform
    job = p.client.submit("offload/base", ["true"], gpus=1, cpu=1, memory="1g", retries=0)
    gpu = Gpu(0, "test", "GPU-0", 1 << 30)
    node = in_process_node(p, docker_client, "busy-gpu-node", Capacity(4, 8 << 30, (gpu,)))
    assert node.gpus is not None
    with node.gpus.acquire(1):  # another attempt on this machine holds the only GPU
        assert execute(node, job.id) is JobStatus.QUEUED
    rec = job.record()
    assert rec.status is JobStatus.QUEUED and rec.reason == "gpu_unavailable"
    assert rec.message == (
        "node busy-gpu-node: no 1 free GPU(s) among this node's 1 after waiting 0s: "
        "other jobs hold them; queued again"
    )
    assert rec.gpus == ()
    # handing back spends no retry (retries=0): the next attempt, with the GPU free, gets it
    # and reaches the engine, which has no NVIDIA runtime here
    assert execute(node, job.id) is JobStatus.FAILED
    rec = job.record()
    assert rec.attempt == 2 and rec.gpus == ("GPU-0",)
    assert job_containers(docker_client, job.id) == []
    assert job_containers(docker_client, job.id) == []


def test_a_gpu_job_on_a_node_without_gpus_is_unschedulable(
    private_platform: Platform, docker_client: docker.DockerClient
) -> None:
    p = private_platform
    job = p.client.submit("offload/base", ["true"], gpus=2)
    node = in_process_node(p, docker_client, "cpu-node", Capacity(cpus=4, memory=8 << 30))
    assert execute(node, job.id) is JobStatus.FAILED
    rec = job.record()
    assert rec.reason == "unschedulable"
    assert rec.message == "node cpu-node: job asks for 2 GPU(s), this node has 0"


def test_a_gpu_class_is_served_only_by_nodes_big_enough_for_its_jobs() -> None:
    """Regression (defect h): a node "served" a GPU class whatever its CPU and memory."""
    gpu_small = ResourceClass(
        name="gpu-small", max_cpu=8, max_memory=32 * GiB, min_gpus=1, max_gpus=1
    )
    two = parse_nvidia_smi(NVIDIA_SMI)
    assert Capacity(cpus=16, memory=64 << 30, gpus=two).serves(gpu_small)
    assert not Capacity(cpus=4, memory=64 << 30, gpus=two).serves(gpu_small)
    assert not Capacity(cpus=16, memory=16 << 30, gpus=two).serves(gpu_small)
    assert not Capacity(cpus=16, memory=64 << 30).serves(gpu_small)
    gpu_pair = gpu_small.model_copy(update={"name": "gpu-pair", "max_gpus": 2})
    assert Capacity(cpus=16, memory=64 << 30, gpus=two).serves(gpu_pair)
    assert not Capacity(cpus=16, memory=64 << 30, gpus=two[:1]).serves(gpu_pair)


def test_a_node_serves_only_the_gpu_classes_it_fits(private_platform: Platform) -> None:
    gpu_small = ResourceClass(
        name="gpu-small", max_cpu=4, max_memory=16 * GiB, min_gpus=1, max_gpus=1
    )
    gpu_big = ResourceClass(
        name="gpu-big", max_cpu=64, max_memory=512 * GiB, min_gpus=1, max_gpus=8
    )
    cpu = ResourceClass(name="cpu", max_cpu=4, max_memory=16 * GiB)
    settings = private_platform.settings.model_copy(update={"classes": (cpu, gpu_small, gpu_big)})
    node = Capacity(cpus=16, memory=64 << 30, gpus=parse_nvidia_smi(NVIDIA_SMI))
    assert [c.name for c in served_classes(settings, node)] == ["cpu", "gpu-small"]
