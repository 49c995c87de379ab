"""Each GPU job gets GPUs of its own: discovery through a fake ``nvidia-smi`` listing 4 GPUs,
lock files shared by worker processes, and the device requests the real engine receives.

The engine records a container's device requests at create even without an NVIDIA runtime
(only start fails), so the tests create containers and never start them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from offload import JobFailed
from offload.worker.capacity import Gpu, detect
from offload.worker.docker_runtime import LABEL_GPUS, LABEL_MANAGED, DockerRuntime
from offload.worker.gpus import GpuAllocator, GpusBusy

from .conftest import REPO, Platform, job_containers, wait_for

UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-4000-8000-00000000000{i}" for i in range(4)]

FAKE_NVIDIA_SMI = """#!/bin/sh
# A fake nvidia-smi: 4 H100s, in the formats the worker (and gpu_check) ask for.
case "$*" in
  *--query-gpu=index,uuid,memory.total,name*--format=csv,noheader,nounits*)
{query}
    ;;
  -L)
{listing}
    ;;
  *) echo "fake nvidia-smi: unexpected arguments: $*" >&2; exit 2 ;;
esac
"""

HOLDER = r"""
import sys
from pathlib import Path
from offload.worker.capacity import detect
from offload.worker.docker_runtime import DockerRuntime, connect
from offload.worker.gpus import GpuAllocator
from offload.worker.runtime import ContainerRequest

lock_dir, job_id = Path(sys.argv[1]), sys.argv[2]
lease = GpuAllocator(detect().gpus, lock_dir).acquire(1, holder=job_id, wait=30)
runtime = DockerRuntime(connect())
container = runtime.create(ContainerRequest(
    job_id=job_id, attempt=1, image="offload/base", command=("true",), env={}, mounts=(),
    cpu=0.1, memory=64 << 20, gpus=lease.uuids,
))
print(lease.uuids[0], container, flush=True)
sys.stdin.read()  # hold the GPU until stdin closes or the process is killed
"""


def write_fake_nvidia_smi(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    query = "\n".join(
        f"    echo '{i}, {u}, 81559, NVIDIA H100 80GB HBM3'" for i, u in enumerate(UUIDS)
    )
    listing = "\n".join(
        f"    echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: {u})'" for i, u in enumerate(UUIDS)
    )
    exe = bin_dir / "nvidia-smi"
    exe.write_text(FAKE_NVIDIA_SMI.format(query=query, listing=listing))
    exe.chmod(0o755)
    return bin_dir


@pytest.fixture
def fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fake ``nvidia-smi`` listing 4 GPUs first on PATH (here and in subprocesses)."""
    bin_dir = write_fake_nvidia_smi(tmp_path / "bin")
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    monkeypatch.setenv("PATH", path)
    return path


@dataclass
class Holder:
    """A separate process (like a pool process) holding one GPU and a created container."""

    proc: subprocess.Popen[str]
    job_id: str
    uuid: str = ""
    container: str = ""


@pytest.fixture
def holders(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        if h.proc.poll() is None:
            h.proc.kill()
        h.proc.wait(10)
        for c in job_containers(docker_client, h.job_id):
            docker_client.api.remove_container(c["Id"], force=True)


def spawn_holders(n: int, lock_dir: Path, made: list[Holder]) -> list[Holder]:
    """Start ``n`` holders at once and wait until each holds its GPU."""
    new = []
    for _ in range(n):
        job_id = f"gpu-holder-{uuid.uuid4().hex[:8]}"
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock_dir), job_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        new.append(Holder(proc, job_id))
    made.extend(new)
    for h in new:
        assert h.proc.stdout is not None
        line = h.proc.stdout.readline().split()  # bounded by the test timeout
        assert line, f"holder {h.job_id} exited with {h.proc.wait(10)}"
        h.uuid, h.container = line
    return new


def device_request(client: docker.DockerClient, container: str) -> dict[str, object]:
    requests = client.api.inspect_container(container)["HostConfig"]["DeviceRequests"]
    assert len(requests) == 1
    return dict(requests[0])


def test_discovery_through_nvidia_smi_finds_the_four_gpus(fake_gpus: str) -> None:
    gpus = detect().gpus
    assert [g.uuid for g in gpus] == UUIDS
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert {g.name for g in gpus} == {"NVIDIA H100 80GB HBM3"}


def test_concurrent_gpu_jobs_get_distinct_gpus_and_a_fifth_waits(
    fake_gpus: str, tmp_path: Path, docker_client: docker.DockerClient, holders: list[Holder]
) -> None:
    lock_dir = tmp_path / "locks"
    first_two = spawn_holders(2, lock_dir, holders)
    for h in first_two:  # what the engine will give each container: its own GPU, by UUID
        req = device_request(docker_client, h.container)
        assert req["Driver"] == "nvidia"
        assert req["DeviceIDs"] == [h.uuid]
        assert req["Count"] == 0
        assert req["Capabilities"] == [["gpu"]]
        labels = docker_client.api.inspect_container(h.container)["Config"]["Labels"]
        assert labels[LABEL_GPUS] == h.uuid
    assert first_two[0].uuid != first_two[1].uuid

    spawn_holders(2, lock_dir, holders)
    assert sorted(h.uuid for h in holders) == sorted(UUIDS)

    alloc = GpuAllocator(detect().gpus, lock_dir, poll=0.05)
    t0 = time.monotonic()
    with pytest.raises(GpusBusy, match="no 1 free GPU"):
        alloc.acquire(1, wait=0.5)
    assert time.monotonic() - t0 >= 0.5
    assert set(alloc.holders()) == set(UUIDS)


def test_a_killed_holder_frees_its_gpu_to_a_waiting_job(
    fake_gpus: str, tmp_path: Path, docker_client: docker.DockerClient, holders: list[Holder]
) -> None:
    lock_dir = tmp_path / "locks"
    spawn_holders(4, lock_dir, holders)
    alloc = GpuAllocator(detect().gpus, lock_dir, poll=0.05)
    got: list[tuple[str, ...]] = []
    waiting = threading.Thread(target=lambda: got.append(alloc.acquire(1, wait=30).uuids))
    waiting.start()
    victim = holders[2]
    waiting.join(0.3)
    assert waiting.is_alive() and not got  # nothing is free yet: it waits
    os.kill(victim.proc.pid, signal.SIGKILL)  # an attempt's process crashes
    waiting.join(30)
    assert got == [(victim.uuid,)]
    assert victim.proc.wait(10) == -signal.SIGKILL


def test_a_job_needing_more_gpus_than_are_free_takes_none(tmp_path: Path) -> None:
    gpus = [Gpu(i, "fake", u, 1 << 30) for i, u in enumerate(UUIDS)]
    alloc = GpuAllocator(gpus, tmp_path / "locks")
    three = alloc.acquire(3, wait=0)
    with pytest.raises(GpusBusy):
        alloc.acquire(2, wait=0)
    assert set(alloc.holders()) == set(three.uuids)  # the one free GPU stayed free
    one = alloc.acquire(1, wait=0)
    assert set(one.uuids) | set(three.uuids) == set(UUIDS)
    three.release()
    three.release()  # idempotent
    assert alloc.acquire(3, wait=0).uuids == tuple(u for u in UUIDS if u not in one.uuids)


def test_a_gpu_a_dead_attempts_container_still_runs_on_is_skipped(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """Its lock went with its process, but the container runs until the sweeper removes it."""
    gpus = [Gpu(i, "fake", u, 1 << 30) for i, u in enumerate(UUIDS[:2])]
    alloc = GpuAllocator(gpus, tmp_path / "locks")
    runtime = DockerRuntime(docker_client)
    job_id = f"gpu-orphan-{uuid.uuid4().hex[:8]}"
    orphan = docker_client.api.create_container(
        "offload/base",
        command=["sleep", "60"],
        labels={LABEL_MANAGED: "1", "offload.job_id": job_id, LABEL_GPUS: UUIDS[0]},
        host_config=docker_client.api.create_host_config(network_mode="none", init=True),
    )["Id"]
    try:
        docker_client.api.start(orphan)
        assert UUIDS[0] in runtime.gpus_in_use()
        lease = alloc.acquire(1, in_use=runtime.gpus_in_use, wait=0)
        assert lease.uuids == (UUIDS[1],)
        with pytest.raises(GpusBusy):
            alloc.acquire(1, in_use=runtime.gpus_in_use, wait=0.2)
        assert alloc.holders() == {UUIDS[1]: f"pid={os.getpid()}"}
        lease.release()
    finally:
        docker_client.api.remove_container(orphan, force=True)
    assert UUIDS[0] not in runtime.gpus_in_use()
    assert alloc.acquire(2, in_use=runtime.gpus_in_use, wait=0).uuids == tuple(UUIDS[:2])


def test_a_worker_with_gpus_records_the_gpu_it_gave_and_frees_it(
    fake_gpus: str, private_platform: Platform, docker_client: docker.DockerClient
) -> None:
    """The whole path through a real worker (its pool processes see the fake nvidia-smi)."""
    p = private_platform
    p.env["PATH"] = fake_gpus
    p.start_worker()
    job = p.client.submit("offload/base", ["nvidia-smi", "-L"], gpus=1, cpu=1, memory="1g")
    with pytest.raises(JobFailed) as info:
        job.result(timeout=60)  # this engine has no NVIDIA runtime: start fails, clearly
    result = info.value.result
    assert result.reason == "gpu_unavailable", result.message
    rec = job.record()
    assert len(rec.gpus) == 1 and rec.gpus[0] in UUIDS
    alloc = GpuAllocator(detect().gpus, p.settings.home / "run" / "gpus")
    wait_for(lambda: alloc.holders() == {}, 10, "the worker to free the GPU")
    assert job_containers(docker_client, job.id) == []
