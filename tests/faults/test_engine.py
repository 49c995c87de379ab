"""The Docker engine under a node restarted or hung mid-job: no job lost, every timeout kept.

An engine restart stops every container of its machine, so these tests run their own engine:
a second ``dockerd`` (data-root, exec-root with its own managed containerd, pidfile and socket
in a folder of the module's) in a network namespace of its own (``unshare --net``: beside the
main engine, a second ``dockerd --bridge none`` in the same namespace deletes the main one's
``docker0``), with ``offload/base`` loaded into it. The worker reaches it with ``DOCKER_HOST``.
The main engine is never signalled.

Each run asserts terminal states, reasons, how many times each job's container started (the
engine's own event log, read before and after a restart: a restarted engine forgets its
events) and that nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import docker
import psutil
import pytest

from offload.broker.nodes import ENGINE_DOWN
from offload.broker.status import JobStatus, Reason
from tests.conftest import Platform, make_platform, wait_for
from tests.faults.conftest import FAST_RECOVERY, Runs, leftovers, wait_terminal

pytestmark = pytest.mark.xdist_group("engine")


class Engine:
    """A dockerd of the tests' own, in its own network namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "d.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.live_restore = False

    def start(self, *, live_restore: bool = False) -> None:
        self.live_restore = live_restore
        cmd = (
            f"ip link set lo up; exec dockerd --data-root {self.root}/data"
            f" --exec-root {self.root}/exec --pidfile {self.root}/d.pid -H {self.host}"
            " --bridge none --iptables=false --ip-masq=false --ip6tables=false"
            + (" --live-restore" if live_restore else "")
        )
        log = (self.root / "dockerd.log").open("ab")
        self.proc = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", cmd], stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(self.answers, 30, "the test's dockerd")

    def answers(self) -> bool:
        try:
            return bool(self.client(timeout=2).ping())
        except Exception:
            return False

    def client(self, timeout: int = 30) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.running()
        os.kill(self.proc.pid, sig)  # unshare and sh exec'd: this is dockerd itself

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (SIGKILL after ``timeout``), and wait for it to exit."""
        if not self.running():
            return
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def ensure_plain(self) -> None:
        """Running, answering, without live-restore: as a test expects to find it."""
        if self.running():
            os.kill(self.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
            if not self.live_restore and self.answers():
                return
            self.stop()
        self.start()

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                os.kill(self.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
                api = self.client(timeout=10).api
                for c in api.containers(all=True):
                    api.remove_container(c["Id"], force=True)
        self.stop()
        # a dockerd SIGKILLed leaves its containerd (and shims): only those under our root
        mine = str(self.root)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(mine in part for part in proc.info["cmdline"] or ()):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if mine in line]
        for target in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(docker_client: docker.DockerClient) -> Iterator[Engine]:
    e = Engine(Path(tempfile.mkdtemp(prefix="offload-engine-")))
    try:
        e.start()
        save = subprocess.Popen(["docker", "save", "offload/base"], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "load"],
            stdin=save.stdout,
            env={**os.environ, "DOCKER_HOST": e.host},
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert save.wait(60) == 0
        yield e
    finally:
        e.teardown()


@pytest.fixture
def engine_platform(
    engine: Engine, redis_server: str, tmp_path: Path
) -> Iterator[tuple[Platform, docker.DockerClient]]:
    """A worker of two slots on the test's engine, with short leases, sweeps and timeouts."""
    engine.ensure_plain()
    p = make_platform(
        redis_server,
        tmp_path / "home",
        DOCKER_HOST=engine.host,
        OFFLOAD_WORKER_SLOTS="2",
        OFFLOAD_ENGINE_TIMEOUT="3",
        **FAST_RECOVERY,
    )
    try:
        yield p, engine.client()
    finally:
        p.kill_worker()
        engine.ensure_plain()


def node_state(p: Platform) -> str:
    info = p.client.broker.nodes.get(p.settings.node_name)
    return info.state if info is not None else ""


def running_jobs(client: docker.DockerClient, jobs: list[str]) -> list[str]:
    up = client.api.containers(filters={"label": "offload.managed=1", "status": "running"})
    ids = {c["Labels"].get("offload.job_id") for c in up}
    return [j for j in jobs if j in ids]


def reasons(p: Platform, job: str) -> list[Reason | None]:
    """Why each attempt of the job went back to the queue."""
    return [
        e.reason for e in p.client.job(job).timeline() if e.status is JobStatus.QUEUED and e.attempt
    ]


def test_a_job_that_exits_143_by_itself_fails_exit_code(
    engine_platform: tuple[Platform, docker.DockerClient],
) -> None:
    p, client = engine_platform
    p.start_worker()
    job = p.client.submit("offload/base", ["sh", "-c", "kill -TERM $$"], retries=0)
    wait_terminal(p, [job.id], 60)
    rec = job.record()
    assert (rec.status, rec.reason, rec.exit_code) == (JobStatus.FAILED, Reason.EXIT_CODE, 143)
    assert rec.attempt == 1
    assert "exited with code 143" in (rec.message or "")
    wait_for(lambda: not leftovers(p, client, [job.id]), 20, "nothing left behind")


def test_a_container_stopped_at_its_engine_is_the_platforms_loss(
    engine_platform: tuple[Platform, docker.DockerClient],
) -> None:
    """Stopped from outside (``docker stop``: a ``kill`` event nobody in the worker sent), its
    exit 143 is not the program's: queued again, it runs once more and succeeds."""
    p, client = engine_platform
    p.start_worker()
    runs = Runs(client)
    job = p.client.submit("offload/base", ["sh", "-c", "sleep 3; echo ok"], retries=0)
    wait_for(lambda: running_jobs(client, [job.id]), 60, "the job's container to run")
    (container,) = client.api.containers(filters={"label": f"offload.job_id={job.id}"})
    client.api.stop(container["Id"], timeout=1)
    wait_terminal(p, [job.id], 60)
    rec = job.record()
    assert rec.status is JobStatus.SUCCEEDED, rec.message
    assert reasons(p, job.id) == [Reason.ENGINE_LOST]
    lost = [e for e in job.timeline() if e.reason is Reason.ENGINE_LOST]
    assert "stopped by its engine (signal 15" in (lost[0].message or ""), lost[0].message
    assert runs.count([job.id])[job.id] == 2
    wait_for(lambda: not leftovers(p, client, [job.id]), 20, "nothing left behind")


def test_engine_restarted_with_jobs_running_and_queued(
    engine: Engine, engine_platform: tuple[Platform, docker.DockerClient]
) -> None:
    p, client = engine_platform
    p.start_worker()
    runs = Runs(client)
    script = "sleep 5; echo done > /offload/out/result.txt; echo {}"
    jobs = [
        p.client.submit("offload/base", ["sh", "-c", script.format(i)], retries=0).id
        for i in range(4)
    ]
    interrupted = wait_for(
        lambda: len(running_jobs(client, jobs)) == 2 and running_jobs(client, jobs),
        60,
        "2 containers running",
    )
    runs.count(jobs)  # read now: the engine forgets its events when it restarts (Runs keeps them)
    engine.stop()
    wait_for(lambda: node_state(p) == ENGINE_DOWN, 15, "the node to say engine down")
    engine.start()
    t0 = time.monotonic()
    wait_terminal(p, jobs, 90)
    records = {j: p.client.job(j).record() for j in jobs}
    ends = {j: (r.status, r.reason, r.message) for j, r in records.items()}
    assert {j: r.status for j, r in records.items()} == dict.fromkeys(jobs, JobStatus.SUCCEEDED), (
        ends
    )
    for j in jobs:
        assert p.client.read(records[j].outputs["result.txt"]) == b"done\n"
    counts = runs.count(jobs)  # the old engine's events, kept, and the restarted engine's own
    assert counts == Counter({j: 2 if j in interrupted else 1 for j in jobs})
    for j in interrupted:  # the platform's loss, said as such: no retry spent (retries=0)
        assert reasons(p, j) == [Reason.ENGINE_LOST], reasons(p, j)
        lost = [e for e in p.client.job(j).timeline() if e.reason is Reason.ENGINE_LOST]
        assert "exited with code 143, its engine" in (lost[0].message or ""), lost[0].message
    for j in set(jobs) - set(interrupted):
        assert Reason.EXIT_CODE not in reasons(p, j)
    assert time.monotonic() - t0 < 60
    wait_for(lambda: node_state(p) == "up", 15, "the node up again")
    wait_for(lambda: not leftovers(p, client, jobs), 20, "nothing left behind")


def test_engine_hung_a_timed_job_ends_within_its_timeout_plus_grace(
    engine: Engine, engine_platform: tuple[Platform, docker.DockerClient]
) -> None:
    p, client = engine_platform
    p.start_worker()
    timeout = 6.0
    job = p.client.submit("offload/base", ["sleep", "120"], timeout=timeout, retries=0)
    wait_for(lambda: running_jobs(client, [job.id]), 60, "the job's container to run")
    started = float(job.record().started_at or 0)
    assert started
    engine.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: node_state(p) == ENGINE_DOWN, 15, "the node to say engine down")
        shown = p.cli("nodes")
        assert ENGINE_DOWN in shown.stdout, shown.stdout + shown.stderr
        later = p.client.submit("offload/base", ["sh", "-c", "echo later"], retries=0)
        wait_terminal(p, [job.id], timeout + 20)
        ended = time.time()
        rec = job.record()
        assert (rec.status, rec.reason) == (JobStatus.TIMED_OUT, Reason.TIMEOUT), rec.message
        assert ended - started <= timeout + 15, ended - started
        assert later.status() is JobStatus.QUEUED  # a node with no engine took no work
    finally:
        engine.signal(signal.SIGCONT)
    wait_terminal(p, [later.id], 60)
    assert later.status() is JobStatus.SUCCEEDED
    assert later.record().attempt == 1  # no attempt burnt while the engine hung
    assert node_state(p) == "up"
    wait_for(lambda: not leftovers(p, client, [job.id, later.id]), 20, "nothing left behind")


def test_engine_restarted_with_live_restore_the_job_finishes_in_its_first_container(
    engine: Engine, engine_platform: tuple[Platform, docker.DockerClient]
) -> None:
    p, client = engine_platform
    engine.stop()
    engine.start(live_restore=True)
    p.start_worker()
    runs = Runs(client)
    script = "sleep 6; echo survived > /offload/out/result.txt"
    job = p.client.submit("offload/base", ["sh", "-c", script], retries=0)
    wait_for(lambda: running_jobs(client, [job.id]), 60, "the job's container to run")
    runs.count([job.id])  # read now: the engine forgets its events when it restarts
    engine.stop()
    engine.start(live_restore=True)
    wait_terminal(p, [job.id], 60)
    rec = job.record()
    assert rec.status is JobStatus.SUCCEEDED, rec.message
    assert p.client.read(rec.outputs["result.txt"]) == b"survived\n"
    assert rec.attempt == 1
    assert runs.count([job.id])[job.id] == 1
    assert reasons(p, job.id) == []
    wait_for(lambda: not leftovers(p, client, [job.id]), 20, "nothing left behind")
