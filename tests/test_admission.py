"""Admission by resources on a real worker and real containers: jobs that do not fit together
never run at once (measured from inside the jobs) and both succeed, four half-CPU jobs run at
once on a 2-CPU node, a big job among a stream of small ones is not starved, and a GPU job's
CPUs count as any job's do.

The node is sized by settings (2 CPUs, 8 GiB less a 512 MiB reserve), so the figures hold on
any machine with at least that much.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.broker.status import JobStatus, Reason
from offload.producer.client import Client
from offload.producer.job import Job
from offload.spec import GiB
from tests.conftest import Platform, make_platform, settings_from_env, wait_for
from tests.test_gpu_allocation import write_fake_nvidia_smi

# Each job writes its start and end time (inside the container) to /offload/out/t.
TIMED = "date +%s.%N > /offload/out/t; sleep {secs}; date +%s.%N >> /offload/out/t"
NODE = {
    "OFFLOAD_WORKER_CLASSES": "cpu-small,cpu-large",
    "OFFLOAD_NODE_CPUS": "2",
    "OFFLOAD_NODE_MEMORY": "8g",
    "OFFLOAD_NODE_MEMORY_RESERVE": "512m",
    "OFFLOAD_ADMISSION_WAIT": "1",
    "OFFLOAD_ADMISSION_STARVATION": "2",
}


@pytest.fixture
def node(redis_server: str, docker_client: object, tmp_path: Path) -> Iterator[Platform]:
    p = make_platform(redis_server, tmp_path / "home", **NODE)
    yield p
    p.kill_worker()


def timed(c: Client, secs: float, *, cpu: float, memory: str, name: str, **kw: object) -> Job:
    return c.submit(
        "offload/base",
        ["sh", "-c", TIMED.format(secs=secs)],
        cpu=cpu,
        memory=memory,
        name=name,
        cache=False,
        **kw,  # type: ignore[arg-type]
    )


def interval(p: Platform, job: Job) -> tuple[float, float]:
    result = job.result(timeout=120)
    start, end = p.client.read(result.outputs["t"]).decode().split()
    return float(start), float(end)


def no_room(job: Job) -> list[str]:
    """The messages of the job's hand-backs for want of room (its timeline's queued events)."""
    return [e.message or "" for e in job.timeline() if e.reason is Reason.NO_ROOM]


def handed_back_for_room(job: Job) -> bool:
    return bool(no_room(job))


def test_two_jobs_that_do_not_fit_together_never_run_at_once(node: Platform) -> None:
    node.start_worker()
    c = node.client
    jobs = [timed(c, 3, cpu=2, memory="5g", name=f"big {n}") for n in range(2)]
    # the one that waits says why, with figures (it found no room, then went back)
    wait_for(lambda: any(handed_back_for_room(j) for j in jobs), 60, "a job handed back")
    (waiter,) = [j for j in jobs if handed_back_for_room(j)]
    why = no_room(waiter)[0]
    assert "no room on machine" in why and "for 2 CPU / 5 GiB: 1 job(s) hold 2 CPU / 5 GiB" in why
    assert "of 2 CPU / 7.5 GiB, 0 CPU / 2.5 GiB free; queued again" in why, why
    (a, b) = sorted(interval(node, j) for j in jobs)
    assert a[1] <= b[0], f"two jobs of 5 GiB ran at once on 7.5 GiB: {a} {b}"


def test_four_half_cpu_jobs_run_at_once_on_a_two_cpu_node(node: Platform) -> None:
    node.start_worker()  # the default cap: 2 jobs per CPU, 4 pool processes
    c = node.client
    # 8 s each: the last to start must start before the first ends, on a loaded machine too
    jobs = [timed(c, 8, cpu=0.5, memory="256m", name=f"half {n}") for n in range(4)]
    spans = [interval(node, j) for j in jobs]
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"not all at once: {spans}"
    info = node.client.broker.nodes.get(node.settings.node_name)
    assert info is not None and info.slots == 4 and info.cpus == 2


def test_a_big_job_among_small_ones_is_not_starved(node: Platform) -> None:
    node.start_worker()
    c = node.client
    small = dict(cpu=0.25, memory="2g")  # three fill 6 of the 7.5 GiB
    first = [timed(c, 3, name=f"small {n}", **small) for n in range(3)]  # type: ignore[arg-type]
    wait_for(lambda: all(j.status() is JobStatus.RUNNING for j in first), 60, "3 small running")
    big = timed(c, 1, cpu=0.5, memory="5g", name="big")  # fits beside one small job only
    later = [timed(c, 3, name=f"later {n}", **small) for n in range(4)]  # type: ignore[arg-type]
    spans = {j.id: interval(node, j) for j in [*first, big, *later]}
    size = {j.id: (5 if j is big else 2) for j in [*first, big, *later]}
    for job_id, (start, _) in spans.items():  # never more memory at once than the room
        at_once = sum(size[k] for k, (s, e) in spans.items() if s <= start < e)
        assert at_once * GiB <= 7.5 * GiB, f"{at_once} GiB at once when {job_id} started"
    # the room was kept for it: it started before the small jobs submitted after it were done
    # (their ends: the last of them may start a moment before it, while it is back in the
    # queue after a hand-back — the room is kept only for a job that is asking for it)
    assert spans[big.id][0] < max(spans[j.id][1] for j in later), spans
    assert handed_back_for_room(big) or spans[big.id][0] < min(spans[j.id][0] for j in later)


def test_a_gpu_jobs_cpus_count_too(node: Platform, tmp_path: Path) -> None:
    bin_dir = write_fake_nvidia_smi(tmp_path / "bin")
    node.env["PATH"] = f"{bin_dir}:{node.env['PATH']}"
    node.env["OFFLOAD_WORKER_CLASSES"] = "cpu-small,cpu-large,gpu-large"
    node.settings = settings_from_env(node.env)
    node.start_worker()
    c = node.client
    cpu_job = timed(c, 3, cpu=2, memory="1g", name="all the CPUs")
    wait_for(lambda: cpu_job.status() is JobStatus.RUNNING, 60, "the CPU job running")
    gpu_job = c.submit("offload/base", ["true"], gpus=1, cpu=1, memory="1g", cache=False)
    wait_for(lambda: handed_back_for_room(gpu_job), 30, "the GPU job waiting for CPUs")
    why = no_room(gpu_job)[0]
    assert (
        "for 1 CPU / 1 GiB / 1 GPU: 1 job(s) hold 2 CPU / 1 GiB of 2 CPU / 7.5 GiB / 4 GPU" in why
    )
    _, end = interval(node, cpu_job)
    # this engine has no NVIDIA runtime: the GPU job fails to start, after the CPU job ended
    result = gpu_job.result(timeout=60, raise_on_failure=False)
    assert result.reason == "gpu_unavailable", result.message
    assert gpu_job.record().updated_at >= end
