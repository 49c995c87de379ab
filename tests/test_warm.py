"""Batched items in a warm container (issue 16, part 3), through the real attempt path.

The node runs in this process (the real Docker engine, Redis and store) with a
:class:`WarmRuntime` as its runtime: each item is an ordinary job attempt
(:func:`offload.worker.executor.execute`), run as an exec in one long-lived container.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from offload.broker.core import Broker
from offload.broker.status import JobStatus, Reason
from offload.cache.factory import open_store
from offload.cache.keys import load_key
from offload.spec import GiB
from offload.spec.arrays import chunk_id
from offload.worker import warm as warm_module
from offload.worker.capacity import Capacity
from offload.worker.docker_runtime import DockerRuntime
from offload.worker.executor import Node, execute
from offload.worker.reaper import LocalReaper
from offload.worker.warm import LABEL_WARM, Batch, WarmRuntime, agent_program

from .conftest import Platform, job_containers, wait_for

CAPACITY = Capacity(cpus=2.0, memory=8 * GiB, gpus=())


@dataclasses.dataclass
class Setup:
    p: Platform
    broker: Broker
    node: Node  # its runtime is the warm one
    warm: WarmRuntime


def make_node(p: Platform, broker: Broker, runtime: DockerRuntime) -> Node:
    settings = p.settings
    work = settings.work_dir
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
        limits=broker.limits,
        inflight=broker.inflight,
        key=load_key(settings.key_path),
        cluster=broker.nodes.cluster_id(),  # a label: the reaper finds the containers by it
    )


@pytest.fixture
def setup(private_platform: Platform, docker_client: docker.DockerClient) -> Iterator[Setup]:
    p = private_platform
    broker = Broker(p.settings)
    plain = make_node(p, broker, DockerRuntime(docker_client))
    warm = WarmRuntime(
        DockerRuntime(docker_client),
        plain.work_dir,
        Batch(chunk_id(uuid.uuid4().hex[:24], 0, 9), 1),
    )
    with warm:
        yield Setup(p, broker, dataclasses.replace(plain, runtime=warm), warm)
    assert job_containers(docker_client, warm.batch.job_id) == []  # closed: nothing left
    assert not warm.root.exists()


def run_items(s: Setup, command: list[str], each: list[dict[str, object]], **common: object):  # type: ignore[no-untyped-def]
    jobs = s.p.client.map("offload/base", command, each=each, cache=False, **common)
    s.broker.feeder.feed(jobs.id, everything=True)  # every item a job record now
    for job in jobs:
        execute(s.node, job.id)
    return jobs, [s.broker.records.get(job.id) for job in jobs]


def warm_containers(client: docker.DockerClient, batch: Batch) -> list[dict[str, object]]:
    return [c for c in job_containers(client, batch.job_id) if LABEL_WARM in (c["Labels"] or {})]  # type: ignore[operator]


def test_items_with_inputs_and_outputs_each_see_only_their_own_offload(
    setup: Setup, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    s = setup
    srcs = []
    for i in range(4):
        path = tmp_path / f"src{i}.txt"
        path.write_text(f"photo {i}\n")
        srcs.append(path)
    script = (
        "o=$(ls /offload/out); ls /offload/in > /offload/out/seen.txt; echo out:$o >> /offload/out/seen.txt;"
        " cat /offload/params.json > /offload/out/params.json;"
        " tr a-z A-Z < /offload/in/src > /offload/out/up.txt;"
        ' echo "env $OFFLOAD_PARAM_N $OFFLOAD_TASK_INDEX $(id -u) $(pwd)";'
        " touch /offload/in/src 2>/dev/null && echo WROTE-IN >&2; true"
    )
    each: list[dict[str, object]] = [
        {"inputs": {"src": str(src)}, "params": {"n": i * 10}} for i, src in enumerate(srcs)
    ]
    jobs, recs = run_items(s, ["sh", "-c", script], each)

    for i, (job, rec) in enumerate(zip(jobs, recs, strict=True)):
        assert rec.status is JobStatus.SUCCEEDED, (rec.reason, rec.message)
        outs = rec.outputs
        assert sorted(outs) == ["params.json", "seen.txt", "up.txt"]
        assert s.p.client.read(outs["up.txt"]) == f"PHOTO {i}\n".encode()
        assert s.p.client.read(outs["seen.txt"]) == b"src\nout:\n"  # its input alone, empty out/
        assert json.loads(s.p.client.read(outs["params.json"])) == {"n": i * 10}
        lines = [line.text for line in job.logs() if line.stream != "sys"]
        uid = s.p.settings.container_user.split(":")[0]
        assert lines == [f"env {i * 10} {i} {uid} /"], lines  # no WROTE-IN: inputs read-only
    assert s.warm.started == 1  # one container for all four items
    assert len(warm_containers(docker_client, s.warm.batch)) == 1
    # every item's files went back to its workspace, which its attempt removed
    assert sorted(os.listdir(s.node.work_dir)) == [s.warm.root.name]


def test_one_container_start_for_k_items(setup: Setup, docker_client: docker.DockerClient) -> None:
    s = setup
    since = time.time()
    _, recs = run_items(s, ["sh", "-c", "echo $OFFLOAD_TASK_INDEX"], [{} for _ in range(6)])
    assert [r.status for r in recs] == [JobStatus.SUCCEEDED] * 6
    events = docker_client.api.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        filters={"event": "start", "label": f"offload.job_id={s.warm.batch.job_id}"},
        decode=True,
    )
    assert len(list(events)) == 1
    assert s.warm.started == 1


def test_a_failing_item_fails_only_itself(setup: Setup) -> None:
    s = setup
    cmd = ["sh", "-c", 'echo out-$OFFLOAD_TASK_INDEX > /offload/out/o; exit "$OFFLOAD_PARAM_CODE"']
    _, recs = run_items(s, cmd, [{"params": {"code": c}} for c in (0, 3, 0)])
    assert [r.status for r in recs] == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUCCEEDED]
    assert (recs[1].reason, recs[1].exit_code) == (Reason.EXIT_CODE, 3)
    assert sorted(recs[2].outputs) == ["o"]
    assert s.p.client.read(recs[2].outputs["o"]) == b"out-2\n"  # not item 1's leftover
    assert s.warm.started == 1  # a plain failure keeps the container


def test_an_item_that_times_out_is_reported_and_the_next_runs(setup: Setup) -> None:
    s = setup
    cmd = ["sh", "-c", 'sleep "$OFFLOAD_PARAM_S"; echo done > /offload/out/o']
    jobs = s.p.client.map(
        "offload/base",
        cmd,
        each=[{"params": {"s": 0}}, {"params": {"s": 30}, "timeout": 2}, {"params": {"s": 0}}],
        cache=False,
    )
    s.broker.feeder.feed(jobs.id, everything=True)  # every item a job record now
    t0 = time.monotonic()
    statuses = [execute(s.node, job.id) for job in jobs]
    assert time.monotonic() - t0 < 20
    recs = [s.broker.records.get(job.id) for job in jobs]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.TIMED_OUT, JobStatus.SUCCEEDED]
    assert recs[1].reason is Reason.TIMEOUT
    assert sorted(recs[2].outputs) == ["o"]
    assert s.warm.started == 2  # the killed container was replaced for the next item


@pytest.mark.parametrize("told_by", ["cgroup", "events"])
def test_an_item_killed_for_memory_is_oom_and_the_next_runs(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, told_by: str
) -> None:
    s = setup
    if told_by == "events":  # a worker that does not see the engine's cgroups
        monkeypatch.setattr(warm_module, "_oom_file", lambda cid: None)
    else:
        run_items(s, ["true"], [{}], memory="64MiB")
        assert s.warm.warm is not None
        if s.warm.warm.oom_file is None:
            pytest.skip("this host does not show the engine's cgroups")
    cmd = ["sh", "-c", 'head -c "$OFFLOAD_PARAM_MB"m /dev/zero | tail > /dev/null; echo ok']
    _, recs = run_items(
        s,
        cmd,
        [{"params": {"mb": 1}}, {"params": {"mb": 400}}, {"params": {"mb": 1}}],
        memory="64MiB",
    )
    assert [r.status for r in recs] == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUCCEEDED]
    assert recs[1].reason is Reason.OOM_KILLED, recs[1].message
    assert recs[0].reason is None and recs[2].reason is None
    assert s.warm.started == 2  # replaced after the OOM: a clean cgroup and /tmp


def test_env_params_and_task_index_per_item(setup: Setup) -> None:
    s = setup
    cmd = ["sh", "-c", 'echo "$OFFLOAD_PARAM_WORD $OFFLOAD_TASK_INDEX/$OFFLOAD_TASK_COUNT $MINE"']
    each: list[dict[str, object]] = [
        {"params": {"word": w}, "env": {"MINE": f"m{i}"}} for i, w in enumerate(["a", "b", "c"])
    ]
    jobs, recs = run_items(s, cmd, each)
    assert [r.status for r in recs] == [JobStatus.SUCCEEDED] * 3
    assert [[x.text for x in j.logs() if x.stream != "sys"] for j in jobs] == [
        ["a 0/3 m0"],
        ["b 1/3 m1"],
        ["c 2/3 m2"],
    ]


def test_no_process_of_an_item_outlives_it(setup: Setup) -> None:
    s = setup
    cmd = [
        "sh",
        "-c",
        '[ "$OFFLOAD_TASK_INDEX" = 0 ] && (sleep 60 >/dev/null 2>&1 &);'
        " cat /proc/[0-9]*/comm | grep -c sleep; true",
    ]
    jobs, recs = run_items(s, cmd, [{}, {}])
    assert [r.status for r in recs] == [JobStatus.SUCCEEDED] * 2
    assert s.warm.started == 1  # the agent killed it: the container stays
    # the second item runs where the first one's process is not
    assert [x.text.strip() for x in jobs[1].logs() if x.stream != "sys"] == ["0"]


def test_the_reaper_removes_a_dead_batchs_container_and_folder(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    s = setup
    run_items(s, ["true"], [{}])
    assert s.warm.root.exists() and len(warm_containers(docker_client, s.warm.batch)) == 1
    reaper = LocalReaper(
        s.node.name,
        s.node.cluster,
        s.broker.records,
        DockerRuntime(docker_client),
        s.node.work_dir.parent,
    )
    chunk, run = s.warm.batch.job_id, s.warm.batch.attempt
    assert s.broker.chunks.hold(chunk, s.node.name, run)
    reaper.reap()  # its run holds the chunk's lease: alive, between two items too
    assert s.warm.root.exists() and len(warm_containers(docker_client, s.warm.batch)) == 1
    s.broker.chunks.release(chunk, s.node.name, run)
    reaper.reap()  # the lease is gone (its worker died, or the chunk ended): dead
    assert warm_containers(docker_client, s.warm.batch) == []
    assert not s.warm.root.exists()


def test_the_warm_container_ends_when_its_worker_dies(docker_client: docker.DockerClient) -> None:
    batch = f"chunk-{uuid.uuid4().hex}"
    code = (
        "import sys, time, docker, pathlib\n"
        "from offload.worker.docker_runtime import DockerRuntime\n"
        "from offload.worker.runtime import ContainerRequest, Mount\n"
        "from offload.worker.warm import Batch, WarmRuntime\n"
        "d = pathlib.Path(sys.argv[1]); (d / 'ws/in').mkdir(parents=True); (d / 'ws/out').mkdir()\n"
        "(d / 'ws/params.json').write_text('{}')\n"
        "w = WarmRuntime(DockerRuntime(docker.from_env()), d, Batch(sys.argv[2], 1))\n"
        "m = (Mount(d / 'ws/in', '/offload/in'), Mount(d / 'ws/out', '/offload/out', False),"
        " Mount(d / 'ws/params.json', '/offload/params.json'))\n"
        "w.create(ContainerRequest('j', 1, 'offload/base', ('true',), {}, m, 1.0, 64 << 20))\n"
        "print('up', flush=True); time.sleep(600)\n"
    )
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"warm-{batch}"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(work), batch], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        (c,) = job_containers(docker_client, batch)
        assert c["State"] == "running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        def ended() -> bool:
            return all(c["State"] == "exited" for c in job_containers(docker_client, batch))

        wait_for(ended, 15, "the warm container to end with its worker")
    finally:
        proc.kill()
        for c in job_containers(docker_client, batch):
            docker_client.api.remove_container(c["Id"], force=True)
        subprocess.run(["rm", "-rf", str(work)], check=False)


def test_the_agent_is_a_small_static_x86_64_elf() -> None:
    elf = agent_program("x86_64")
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 0x3E
    assert len(elf) < 4096


def test_the_embedded_agent_is_built_from_the_source_in_the_tree() -> None:
    """warm_agent.py is generated from warm_agent.c (infra/build-warm-agent.sh): a change to
    the source without a rebuild would ship the old agent."""
    import offload.worker.warm_agent as generated

    here = Path(generated.__file__).with_name("warm_agent.c")
    prefix = hashlib.sha256(here.read_bytes()).hexdigest()[:16]
    assert f"Source sha256 prefix: {prefix}." in (generated.__doc__ or ""), (
        "warm_agent.c changed: run infra/build-warm-agent.sh and commit warm_agent.py"
    )


def test_items_read_no_stdin_and_their_output_passes_whole(setup: Setup) -> None:
    s = setup
    cmd = [
        "sh",
        "-c",
        'cat; printf "a\\036b\\036%s:0\\036" "$OFFLOAD_TASK_INDEX"; printf "no-eol" >&2',
    ]
    jobs, recs = run_items(s, cmd, [{}, {}])
    assert [r.status for r in recs] == [JobStatus.SUCCEEDED] * 2  # cat read /dev/null
    for i, job in enumerate(jobs):
        lines = [(x.stream, x.text) for x in job.logs() if x.stream != "sys"]
        assert sorted(lines) == [("err", "no-eol"), ("out", f"a\x1eb\x1e{i}:0\x1e")]


def test_a_missing_program_fails_its_item_with_127(setup: Setup) -> None:
    s = setup
    _, recs = run_items(s, ["no-such-program"], [{}])
    assert (recs[0].status, recs[0].exit_code) == (JobStatus.FAILED, 127)
    _, recs = run_items(s, ["true"], [{}])
    assert recs[0].status is JobStatus.SUCCEEDED


def test_a_container_killed_under_an_item_hands_it_back_and_the_next_runs(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    s = setup
    cmd = ["sh", "-c", '[ "$OFFLOAD_TASK_INDEX" = 0 ] && sleep 30; echo ran']
    jobs = s.p.client.map("offload/base", cmd, each=[{}, {}], cache=False)

    def kill_it() -> None:
        (c,) = wait_for(lambda: warm_containers(docker_client, s.warm.batch), 10, "the container")
        time.sleep(1)
        docker_client.api.kill(c["Id"])  # not the worker: someone, or the engine, ended it

    killer = threading.Thread(target=kill_it)
    killer.start()
    first = execute(s.node, jobs[0].id)
    killer.join()
    rec = s.broker.records.get(jobs[0].id)
    # the platform's loss, not the item's: back to the queue, no retry spent
    assert (first, rec.reason) == (JobStatus.QUEUED, Reason.ENGINE_LOST), rec.message
    assert execute(s.node, jobs[1].id) is JobStatus.SUCCEEDED
    assert s.warm.started == 2
