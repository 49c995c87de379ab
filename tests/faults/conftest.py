"""Fault-test helpers: a Redis of the test's own that can be killed and restarted, counting how
often each job's container ran from the engine's own event log (not offload's records), and
listing what a run left behind (containers, work folders, Redis keys)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import redis

from offload.broker import keys
from tests.conftest import Platform, free_port, make_platform, wait_for


@dataclass
class RedisProcess:
    """A redis-server with an append-only file fsynced on every write (what `offload up`
    runs), on a port and folder of its own, so a test can kill -9 it and start it again."""

    port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed; run `make setup`"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--databases",
                "1000",  # one per test platform, as tests/conftest.py's server has
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(self._up(client), 15, "redis-server")

    @staticmethod
    def _up(client: redis.Redis):  # type: ignore[no-untyped-def]
        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        return up

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# What the fault tests run with: a worker serving cpu-small, short leases and frequent sweeps,
# so a death is noticed in seconds.
FAST_RECOVERY = {
    "OFFLOAD_WORKER_CLASSES": "cpu-small",
    "OFFLOAD_HEARTBEAT_INTERVAL": "1",
    "OFFLOAD_LEASE_TTL": "4",
    "OFFLOAD_SWEEP_INTERVAL": "1",
    "OFFLOAD_LOST_MESSAGE_GRACE": "3",
    "OFFLOAD_LOST_AFTER": "6",
}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisProcess(free_port(), folder)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fault_platform(
    own_redis: RedisProcess, docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[Platform]:
    """A worker platform on the test's own Redis, with short leases and sweeps."""
    p = make_platform(
        own_redis.url,
        tmp_path / "home",
        OFFLOAD_WORKER_SLOTS="2",
        **FAST_RECOVERY,
    )
    yield p
    p.kill_worker()


class Runs:
    """The engine's container events for offload's containers, from the moment this is made:
    how many containers it started for each job (:meth:`count`), when each ran
    (:meth:`intervals`).

    Followed live by a thread of its own, because the engine replays only its last 256 events
    (``docker events --since``): with the suite's workers starting containers side by side, a
    replay at the end of a test has lost its first seconds. Each read also replays what the
    engine still holds, for an event the live stream has not handed over yet."""

    FILTERS = {"type": "container", "label": "offload.managed=1"}

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.since = int(time.time()) - 1
        self.seen: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.stream = client.api.events(since=self.since, filters=self.FILTERS, decode=True)
        threading.Thread(target=self._follow, name="docker-events", daemon=True).start()

    def _follow(self) -> None:
        try:
            for event in self.stream:
                self._add(event)
        except Exception:  # closed, or the engine went away (a test stopping it)
            return

    def _add(self, event: dict[str, Any]) -> None:
        key = (str(event.get("id", "")), str(event.get("Action", "")), int(event["timeNano"]))
        with self.lock:
            self.seen.setdefault(key, event)

    def events(self) -> list[dict[str, Any]]:
        replay = self.client.api.events(
            since=self.since, until=int(time.time()) + 1, filters=self.FILTERS, decode=True
        )
        for event in replay:
            self._add(event)
        with self.lock:
            return sorted(self.seen.values(), key=lambda e: int(e["timeNano"]))

    @staticmethod
    def job_of(event: dict[str, Any]) -> str | None:
        return (event.get("Actor") or {}).get("Attributes", {}).get("offload.job_id")

    def count(self, job_ids: Iterable[str]) -> Counter[str]:
        wanted = set(job_ids)
        runs: Counter[str] = Counter()
        for e in self.events():
            job = self.job_of(e)
            if e.get("Action") == "start" and job in wanted:
                runs[job] += 1
        return runs

    def intervals(self, job_ids: Iterable[str]) -> list[tuple[float, float, str]]:
        """(start, die, job) of each container of the jobs that has ended, by start."""
        wanted = set(job_ids)
        starts: dict[str, tuple[float, str]] = {}
        out = []
        for e in self.events():
            job = self.job_of(e)
            if job not in wanted:
                continue
            at = int(e["timeNano"]) / 1e9
            if e.get("Action") == "start":
                starts[e["id"]] = (at, job)
            elif e.get("Action") == "die" and e["id"] in starts:
                begun, job = starts.pop(e["id"])
                out.append((begun, at, job))
        return sorted(out)

    def close(self) -> None:
        self.stream.close()


@pytest.fixture
def runs(docker_client: docker.DockerClient) -> Iterator[Runs]:
    watch = Runs(docker_client)
    yield watch
    watch.close()


def leftovers(p: Platform, client: docker.DockerClient, job_ids: Iterable[str]) -> list[str]:
    """What the jobs left behind: containers, work folders, ownership keys in Redis."""
    found = []
    for job_id in job_ids:
        for c in client.api.containers(all=True, filters={"label": f"offload.job_id={job_id}"}):
            found.append(f"container {c['Id'][:12]} of {job_id}")
    work = p.settings.home / "work"
    found += [f"folder {f}" for f in work.glob("*/*")]
    r = p.client.broker.redis
    for key in (keys.LEASES, keys.QUEUED):
        if r.zcard(key):
            found.append(f"{key}: {r.zrange(key, 0, -1)}")
    for name in r.smembers(keys.NODES):
        if r.scard(keys.node_running(name)):
            found.append(f"running set of {name}: {r.smembers(keys.node_running(name))}")
    held = p.client.broker.room.holders(p.settings.machine)
    if held:
        found.append(f"room of {p.settings.machine} held: {held}")
    return found


def wait_terminal(p: Platform, job_ids: Iterable[str], timeout: float) -> None:
    ids = list(job_ids)

    def done() -> bool:
        return all(p.client.job(j).status().terminal for j in ids)

    wait_for(done, timeout, f"{len(ids)} jobs to reach a terminal state", interval=0.5)
