"""Least-privilege Redis users: the ACL lines `offload acl` prints, loaded into a Redis of
the test's own with the default user turned off, run the platform (producer, worker,
autoscaler); the worker's user cannot FLUSHALL, CONFIG, MODULE or touch other keys."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import redis

from offload.broker.scaling import read_status
from offload.config import Settings
from tests.conftest import bare_settings

from .conftest import Platform, free_port, make_platform, wait_for


@pytest.fixture
def admin_redis(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed"
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
         "--databases", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}"
    admin = redis.Redis.from_url(url, decode_responses=True)

    def up() -> bool:
        try:
            return bool(admin.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, 10, "redis-server")
        yield url, admin
    finally:
        proc.terminate()
        proc.wait(10)


def load_acl(p: Platform, admin: redis.Redis) -> dict[str, dict[str, str]]:
    """Run `offload acl --passwords`, load its lines as the admin, turn the default user off;
    each role's OFFLOAD_REDIS_USER / _PASSWORD."""
    done = p.cli("acl", "--passwords")
    assert done.returncode == 0, done.stderr
    creds: dict[str, dict[str, str]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("ACL SETUSER"):
            assert admin.execute_command(*shlex.split(line)) in ("OK", b"OK", True)
        elif m := re.match(r"# (\w+): OFFLOAD_REDIS_USER=(\S+) OFFLOAD_REDIS_PASSWORD=(\S+)", line):
            creds[m[1]] = {"OFFLOAD_REDIS_USER": m[2], "OFFLOAD_REDIS_PASSWORD": m[3]}
    assert set(creds) == {"producer", "worker", "autoscaler", "monitor"}, done.stdout
    admin.execute_command("ACL", "SETUSER", "default", "off")
    return creds


def as_role(p: Platform, env: dict[str, str]) -> Settings:
    values = {**p.env, **env}
    return bare_settings(
        **{
            k.removeprefix("OFFLOAD_").lower(): v
            for k, v in values.items()
            if k.startswith("OFFLOAD_")
        },
    )


def test_the_platform_runs_with_least_privilege_users(
    admin_redis: tuple[str, redis.Redis], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    url, admin = admin_redis
    p = make_platform(url, tmp_path / "home", OFFLOAD_AUTOSCALE_MAX="0")
    creds = load_acl(p, admin)
    with pytest.raises(redis.AuthenticationError):  # the default user is off
        redis.Redis.from_url(url).ping()

    worker_env = {**p.env, **creds["worker"]}
    worker = Platform(settings=as_role(p, creds["worker"]), env=worker_env)
    producer = as_role(p, creds["producer"])
    scaler_log = (tmp_path / "autoscaler.log").open("ab")
    scaler = subprocess.Popen(
        [sys.executable, "-m", "offload", "autoscaler", "--provider", "local",
         "--metrics-port", "0", "--interval", "0.5"],
        env={**p.env, **creds["autoscaler"]},
        stdout=scaler_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        try:
            worker.start_worker()
        except AssertionError:
            print("refused:", [(e["object"], e["username"]) for e in admin.acl_log()])
            raise
        client = Platform(settings=producer, env=p.env).client
        job = client.submit("offload/base", ["sh", "-c", "echo least-privilege"], memory="64m")
        result = job.result(timeout=120)
        assert result.status == "succeeded", worker.worker_log()
        assert any("least-privilege" in line.text for line in job.logs())
        status = Platform(settings=producer, env={**p.env, **creds["producer"]}).cli(
            "status", job.id
        )
        assert status.returncode == 0 and "succeeded" in status.stdout, status.stderr
        r = redis.Redis.from_url(
            p.settings.redis_url,
            username=creds["autoscaler"]["OFFLOAD_REDIS_USER"],
            password=creds["autoscaler"]["OFFLOAD_REDIS_PASSWORD"],
            decode_responses=True,
        )
        wait_for(lambda: read_status(r, "cpu-small") is not None, 30, "an autoscaler tick")
        assert scaler.poll() is None, (tmp_path / "autoscaler.log").read_text()[-3000:]
    finally:
        worker.kill_worker()
        os.killpg(scaler.pid, signal.SIGKILL)
        scaler.wait(10)
    logs = worker.worker_log() + (tmp_path / "autoscaler.log").read_text(errors="replace")
    assert "NOPERM" not in logs and not admin.acl_log(), (admin.acl_log(), logs[-4000:])

    w = redis.Redis.from_url(
        p.settings.redis_url,
        username=creds["worker"]["OFFLOAD_REDIS_USER"],
        password=creds["worker"]["OFFLOAD_REDIS_PASSWORD"],
    )
    for command in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("MODULE", "LIST"),
                    ("KEYS", "*"), ("SET", "elsewhere:key", "1"), ("GET", "elsewhere:key"),
                    ("ACL", "LIST")):  # fmt: skip
        with pytest.raises(redis.exceptions.NoPermissionError):
            w.execute_command(*command)
    monitor = redis.Redis.from_url(
        p.settings.redis_url,
        username=creds["monitor"]["OFFLOAD_REDIS_USER"],
        password=creds["monitor"]["OFFLOAD_REDIS_PASSWORD"],
    )
    assert monitor.hget(f"offload:job:{job.id}", "status") == b"succeeded"
    with pytest.raises(redis.exceptions.NoPermissionError):  # Flower reads, never writes
        monitor.hset(f"offload:job:{job.id}", "status", "failed")
