"""Nothing in plaintext outlives its job on a node's disk (issue 8, item 4).

Before: work folders were 0755 and a killed worker's stayed under ``OFFLOAD_HOME/work/``
(inputs, outputs, ``params.json``); Redis's AOF files were 0644 and hold every spec.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

from offload import JobStatus
from offload.broker.connection import redis_client
from offload.embedded import running_pid, start_redis
from offload.worker import staging
from tests.conftest import bare_settings

from ..conftest import Platform, free_port, wait_for


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_running_jobs_work_folder_is_owner_only_and_gone_after(
    platform: Platform, tmp_path: Path
) -> None:
    src = tmp_path / "secret.txt"
    src.write_text("plaintext input")
    job = platform.client.submit(
        "offload/base",
        ["sh", "-c", "cat /offload/in/data > /offload/out/copy; sleep 60"],
        inputs={"data": src},
        params={"token": "p"},
        cache=False,
    )
    folder = platform.settings.work_dir / f"{job.id}-1"
    wait_for(lambda: job.status() is JobStatus.RUNNING, 60, "the job to run")
    assert mode(platform.settings.work_dir) == 0o700
    assert mode(folder) == 0o700
    assert (folder / "in" / "data").read_text() == "plaintext input"  # the job's mounts work
    wait_for(lambda: (folder / "out" / "copy").exists(), 30, "the job to write its output")
    job.cancel()
    assert job.result(timeout=60, raise_on_failure=False).status is JobStatus.CANCELLED
    assert not folder.exists()


def plant_leftover(work_dir: Path) -> Path:
    """What a worker killed mid-job leaves: an attempt folder as staging.prepare makes it."""
    folder = work_dir / "0123456789abcdef0123456789abcdef-1"
    (folder / "in").mkdir(parents=True)
    (folder / "out" / "sub").mkdir(parents=True)
    (folder / "in" / "data").write_text("plaintext input")
    (folder / "out" / "sub" / "result").write_text("plaintext output")
    (folder / "params.json").write_text('{"token": "secret"}')
    os.chmod(folder / "in" / "data", 0o444)
    os.chmod(folder / "in", 0o555)  # as staging leaves it: removable only after a chmod
    (work_dir / ".tmp-partial").write_text("half a file")
    return folder


def test_a_worker_starting_removes_a_leftover_work_folder(private_platform: Platform) -> None:
    work_dir = private_platform.settings.work_dir
    folder = plant_leftover(work_dir)
    private_platform.start_worker()
    assert not folder.exists()
    assert list(work_dir.iterdir()) == [] and mode(work_dir) == 0o700
    assert "removed 2 work folder(s) left by an earlier run" in private_platform.worker_log()


def test_clear_leaves_other_nodes_alone(tmp_path: Path) -> None:
    mine, other = tmp_path / "work" / "node-a", tmp_path / "work" / "node-b"
    plant_leftover(mine)
    kept = plant_leftover(other)
    assert sorted(staging.clear(mine)) == [".tmp-partial", kept.name]
    assert list(mine.iterdir()) == [] and kept.exists()


def test_embedded_redis_keeps_its_files_owner_only_with_a_memory_limit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = home / "redis"
    (data / "appendonlydir").mkdir(parents=True)
    old = data / "appendonlydir" / "old.aof"  # an earlier version's file, world-readable
    old.write_text("")
    os.chmod(data, 0o755)
    os.chmod(old, 0o644)
    settings = bare_settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        home=home,
        redis_max_memory=64 * 1024 * 1024,
    )
    assert start_redis(settings).state == "started"
    pid = running_pid(settings, "redis")
    assert pid is not None
    try:
        r = redis_client(settings)  # as offload-admin: `up`'s Redis has its default user off
        r.hset("offload:job:x", "spec", '{"params": {"token": "secret"}}')
        assert r.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert r.config_get("appendfsync") == {"appendfsync": "always"}
        r.bgrewriteaof()
        wait_for(lambda: r.info("persistence")["aof_rewrite_in_progress"] == 0, 30, "AOF rewrite")
        files = [p for p in data.rglob("*") if p.is_file()]
        assert any(p.suffix == ".aof" and p != old for p in files), files
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
        assert {mode(p) for p in [data, *data.rglob("*")] if p.is_dir()} == {0o700}
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: running_pid(settings, "redis") is None, 30, "redis-server to stop")
