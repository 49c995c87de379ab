"""`offload up` runs its Redis with the default user off and one least-privilege user per
role; each service it starts connects as its role's user, the CLI on the machine as the
admin (its password kept 0600 under the home)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import uuid
from pathlib import Path

import docker
import psutil
import pytest
import redis

from offload.autoscaler.nodeenv import node_env
from offload.broker.acl import aclfile
from offload.broker.connection import broker_url
from offload.broker.credentials import ensure, users_path
from tests.conftest import bare_settings

from .conftest import free_port, offload_cli, wait_for

SERVICES = {"worker": "worker", "autoscaler": "autoscaler", "scheduler": "producer",
            "flower": "monitor"}  # fmt: skip


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return offload_cli(env, *args, timeout=timeout)


def users_of(admin: redis.Redis, pid: int) -> set[str]:
    """The Redis users of the connections of process ``pid`` and its children."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    ports = {c.laddr.port for p in procs for c in p.net_connections("tcp") if c.laddr}
    clients = admin.client_list()
    return {c["user"] for c in clients if int(c["addr"].rsplit(":", 1)[1]) in ports}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_redis_refuses_strangers_and_runs_each_service_as_its_role(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_REDIS_")},
        "OFFLOAD_HOME": str(home),
        "OFFLOAD_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "OFFLOAD_FLOWER_PORT": str(free_port()),
        "OFFLOAD_NODE_NAME": f"acl-{uuid.uuid4().hex[:8]}",
    }
    try:
        up = run(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        secrets_file = home / "secrets" / "redis-users.json"
        assert mode(secrets_file) == 0o600 and mode(secrets_file.parent) == 0o700
        acl_file = home / "redis" / "users.acl"
        assert mode(acl_file) == 0o600 and mode(acl_file.parent) == 0o700
        passwords = json.loads(secrets_file.read_text())["passwords"]
        assert not any(pw in acl_file.read_text() for pw in passwords.values())  # hashes only

        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()  # the default user is off
        admin = redis.Redis(
            port=port, username="offload-admin", password=passwords["admin"], decode_responses=True
        )
        assert "off" in admin.acl_getuser("default")["flags"]

        pids = {s: int((home / "run" / f"{s}.pid").read_text()) for s in (*SERVICES, "redis")}
        for service, role in SERVICES.items():
            wait_for(lambda s=service: users_of(admin, pids[s]), 20, f"{service}'s connections")
            assert users_of(admin, pids[service]) == {f"offload-{role}"}, service
        for pid in pids.values():  # passwords go in the environment, never on a command line
            cmdline = " ".join(psutil.Process(pid).cmdline())
            assert not any(pw in cmdline for pw in passwords.values())
        scaler_env = psutil.Process(pids["autoscaler"]).environ()
        assert scaler_env["OFFLOAD_NODE_REDIS_USER"] == "offload-worker"  # its local nodes'
        assert scaler_env["OFFLOAD_NODE_REDIS_PASSWORD"] == passwords["worker"]

        worker = redis.Redis(port=port, username="offload-worker", password=passwords["worker"])
        for command in (worker.flushall, worker.config_get):
            with pytest.raises(redis.exceptions.NoPermissionError):
                command()

        job = run(env, "submit", "offload/base", "--wait", "--", "echo", "acl ok")
        assert job.returncode == 0 and job.stdout == "acl ok\n", job.stderr

        wrong = {**env, "OFFLOAD_REDIS_USER": "offload-worker", "OFFLOAD_REDIS_PASSWORD": "no"}
        refused = run(wrong, "up")
        assert refused.returncode != 0
        assert "OFFLOAD_REDIS_USER / OFFLOAD_REDIS_PASSWORD" in refused.stderr, refused.stderr

        jobs = {k for k in admin.scan_iter("offload:job:*") if k.count(":") == 2}
        os.kill(pids["redis"], signal.SIGKILL)  # back from its AOF: the users come back too
        wait_for(lambda: not psutil.pid_exists(pids["redis"]) or psutil.Process(
            pids["redis"]).status() == psutil.STATUS_ZOMBIE, 10, "redis-server to die")  # fmt: skip
        again = run(env, "up")
        assert again.returncode == 0, again.stdout + again.stderr
        assert json.loads(secrets_file.read_text())["passwords"] == passwords
        pids["redis"] = int((home / "run" / "redis.pid").read_text())
        admin = redis.Redis(
            port=port, username="offload-admin", password=passwords["admin"], decode_responses=True
        )
        # the AOF replayed, its MULTI/EXEC blocks included (appendfsync always: nothing lost)
        assert "NOPERM" not in (home / "logs" / "redis.log").read_text()
        assert jobs and set(admin.scan_iter("offload:job:*")) >= jobs
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        job = run(env, "submit", "offload/base", "--wait", "--", "echo", "still ok")
        assert job.returncode == 0 and job.stdout == "still ok\n", job.stderr
    finally:
        down = run(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in pids.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_cli_is_the_admin_of_ups_redis_and_explicit_credentials_win(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    settings = bare_settings(home=tmp_path, redis_url=url)
    assert broker_url(settings) == settings.redis_url  # no `up` here yet: no credentials
    passwords = ensure(settings, ["worker"], port)
    assert ensure(settings, ["worker", "monitor"], port).items() >= passwords.items()  # kept
    assert mode(users_path(settings)) == 0o600
    admin = passwords["admin"]
    assert broker_url(settings) == f"redis://offload-admin:{admin}@127.0.0.1:{port}/0"
    explicit = settings.model_copy(update={"redis_user": "me"})
    assert broker_url(explicit).startswith("redis://me:@")
    in_url = settings.model_copy(update={"redis_url": f"redis://u:p@127.0.0.1:{port}/0"})
    assert broker_url(in_url) == in_url.redis_url
    other = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port + 1}/0"})
    assert broker_url(other) == other.redis_url  # not the Redis `up` serves
    roles = ["producer", "worker", "autoscaler", "monitor"]
    assert "user default off resetpass" in aclfile(settings, ensure(settings, roles, port))


def test_local_nodes_get_the_node_credentials_not_the_autoscalers(tmp_path: Path) -> None:
    settings = bare_settings(
        home=tmp_path,
        redis_user="offload-autoscaler",
        redis_password="scaler-secret",
        node_redis_user="offload-worker",
        node_redis_password="worker-secret",
    )
    env = node_env(settings, "n1", "cpu-small", "local", home=tmp_path, cache_dir=tmp_path,
                   key_file=tmp_path / "key")  # fmt: skip
    assert env["OFFLOAD_REDIS_USER"] == "offload-worker"
    assert env["OFFLOAD_REDIS_PASSWORD"] == "worker-secret"
    assert not any("scaler-secret" in v or "NODE_REDIS" in k for k, v in env.items())
