"""Shared fixtures: a real redis-server per session, the real Docker engine, real workers.

A missing service fails the run: nothing here skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
import redis

from offload.cache.keys import init_key
from offload.config import Settings
from offload.producer.client import Client

REPO = Path(__file__).resolve().parent.parent
IMAGES = ("offload/base", "offload/python", "offload/fingerprint", "offload/dedupe")

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
# Every platform of the suite is made of settings of its own: the OFFLOAD_* variables of the
# shell that started it (a developer's own cluster, say) never reach a test's processes.
# OFFLOAD_TEST_* are the suite's own knobs.
for _name in [
    n for n in os.environ if n.startswith("OFFLOAD_") and not n.startswith("OFFLOAD_TEST_")
]:
    del os.environ[_name]

pytest_plugins = ["tests.s3server", "tests.httpserver"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready_messages(r: redis.Redis, queue: str) -> list[str]:
    """The raw messages ready in ``queue``, over all of kombu's priority lists, first served
    first."""
    from offload.broker.queues import queue_lists

    return [m for name in queue_lists(queue) for m in r.lrange(name, 0, -1)]


def unacked_jobs(r: redis.Redis) -> set[str]:
    """The jobs whose messages were delivered and not acknowledged yet (kombu's ``unacked``)."""
    from offload.broker.queues import UNACKED, message_job

    return {j for raw in r.hvals(UNACKED) if (j := message_job(raw)) is not None}


def wait_for(check, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; run `make setup`", pytrace=False)
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(data),
            "--databases",
            "1000",
        ],  # one database per test platform
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    r = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(r.ping())
        except redis.ConnectionError:
            return False

    wait_for(up, 10, "redis-server")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        pytest.fail(f"no Docker engine answers ({exc}); run `make setup`", pytrace=False)
    missing = []
    for image in IMAGES:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        pytest.fail(f"images {missing} are not built; run `make setup`", pytrace=False)
    return client


_db_counter = iter(range(1, 1000))


def new_db() -> int:
    """A Redis database of the session's server no other test of this process uses."""
    return next(_db_counter)


@dataclass
class Platform:
    """A worker node (subprocess) on its own Redis database, plus a client for it."""

    settings: Settings
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client(self) -> Client:
        return Client(self.settings)

    def start_worker(self, timeout: float = 60) -> None:
        log = (self.settings.home / "worker.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "offload", "worker", "--loglevel", "INFO"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        app = self.client.broker.app
        node = f"offload@{self.settings.node_name}"

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.worker_log()
            return any(node in reply for reply in app.control.ping(timeout=0.3))

        wait_for(ready, timeout, "the worker")

    def pool_children(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children()

    def kill_worker(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop_worker(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_worker()

    def worker_log(self) -> str:
        path = self.settings.home / "worker.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "offload", *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )


def offload_cli(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``offload ARGS`` in a subprocess with ``env``; its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "offload", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bare_settings(**fields: Any) -> Settings:
    """Settings from ``fields`` (and ``OFFLOAD_*`` variables), never from a ``.env`` file."""
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


def settings_from_env(env: dict[str, str]) -> Settings:
    """The settings a process started with ``env`` reads (its ``OFFLOAD_*`` variables)."""
    return bare_settings(
        **{
            k.removeprefix("OFFLOAD_").lower(): v
            for k, v in env.items()
            if k.startswith("OFFLOAD_")
        },
    )


def make_platform(redis_url: str, home: Path, **extra: str) -> Platform:
    db = next(_db_counter)
    env = {
        **os.environ,
        "OFFLOAD_REDIS_URL": f"{redis_url}/{db}",
        "OFFLOAD_HOME": str(home),
        "OFFLOAD_NODE_NAME": f"test-{uuid.uuid4().hex[:8]}",
        "OFFLOAD_MAX_TIMEOUT": "600",
        "OFFLOAD_PULL_TIMEOUT": "15",
        **extra,
    }
    settings = settings_from_env(env)
    home.mkdir(parents=True, exist_ok=True)
    if not settings.key_path.exists():
        init_key(settings.key_path)
    return Platform(settings=settings, env=env)


@pytest.fixture(scope="session")
def platform(
    redis_server: str, docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """The shared platform: one worker with two slots serving cpu-small."""
    p = make_platform(redis_server, tmp_path_factory.mktemp("home"), OFFLOAD_WORKER_SLOTS="2")
    p.start_worker()
    yield p
    p.stop_worker()


@pytest.fixture
def private_platform(
    redis_server: str, docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[Platform]:
    """A platform of the test's own (its own Redis database and home); worker not started."""
    p = make_platform(redis_server, tmp_path / "home")
    p.settings.home.mkdir(parents=True, exist_ok=True)
    yield p
    p.kill_worker()


def job_containers(client: docker.DockerClient, job_id: str) -> list[dict[str, object]]:
    """The engine's containers labelled with the job (one listing call: no racing inspects)."""
    return list(client.api.containers(all=True, filters={"label": f"offload.job_id={job_id}"}))
