"""`offload up` / `offload down`: the whole platform on one machine, on loopback."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import docker
import psutil

from .conftest import free_port, offload_cli


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return offload_cli(env, *args, timeout=timeout)


def test_up_runs_a_job_and_down_stops_everything(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "OFFLOAD_HOME": str(home),
        "OFFLOAD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "OFFLOAD_FLOWER_PORT": str(free_port()),
        "OFFLOAD_NODE_NAME": "embedded-test",
    }
    try:
        up = run(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        services = ("redis", "worker", "autoscaler", "flower")
        for service in services:
            assert service in up.stdout and "started" in up.stdout
        pids = {s: int((home / "run" / f"{s}.pid").read_text()) for s in services}
        assert all(psutil.pid_exists(p) for p in pids.values())
        url = f"http://127.0.0.1:{env['OFFLOAD_FLOWER_PORT']}/healthcheck"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200

        again = run(env, "up")  # idempotent: nothing new is started
        assert again.returncode == 0 and "started" not in again.stdout

        job = run(env, "submit", "offload/base", "--wait", "--", "echo", "embedded ok")
        assert job.returncode == 0, job.stderr
        assert job.stdout == "embedded ok\n"

        # the README's example: a cpu-large job on a machine whose embedded worker serves
        # cpu-small runs on a node the autoscaler starts (the idle worker holds no room)
        t0 = time.monotonic()
        readme = ("--cpu", "2", "--memory", "4g", "--param", "n:=3", "--wait")
        big = run(env, "submit", "offload/base", *readme, "--", "sh", "-c", "echo $OFFLOAD_PARAM_N")
        took = time.monotonic() - t0
        assert big.returncode == 0, big.stdout + big.stderr
        assert big.stdout == "3\n" and took < 60, (big.stdout, took)
    finally:
        down = run(env, "down")
    assert down.returncode == 0, down.stderr
    for service in ("flower", "autoscaler", "worker", "redis"):
        assert f"{service}" in down.stdout
    for pid in pids.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "nothing was running" in run(env, "down").stdout
