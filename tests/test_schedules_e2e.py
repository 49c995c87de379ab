"""Schedules end to end: the CLI, a real `offload scheduler` process and a real worker."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.broker.model import JobRecord
from offload.producer.timing import iso

from .conftest import Platform, make_platform, wait_for


def start_scheduler(p: Platform, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "offload", "scheduler", "--interval", "0.2", "--lock-ttl", "2"],
        env=p.env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        proc.wait(20)


def runs(p: Platform, name: str) -> list[JobRecord]:
    recs = [r for r in p.client.jobs(500) if r.spec.labels.get("schedule") == name]
    return sorted(recs, key=lambda r: r.spec.env["OFFLOAD_SCHEDULED_AT"])


def test_every_2s_fires_skips_overlap_and_survives_a_scheduler_restart(
    platform: Platform, tmp_path: Path
) -> None:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    add = platform.cli("schedule", "add", name, "--every", "2s", "offload/base", "--",
                       "sh", "-c", "echo at=$OFFLOAD_SCHEDULED_AT; sleep 3")  # fmt: skip
    assert add.returncode == 0, add.stderr
    assert "every 2s, next run" in add.stdout
    log = tmp_path / "scheduler.log"
    first = start_scheduler(platform, log)
    second: subprocess.Popen[bytes] | None = None
    skips: set[str] = set()

    def seen(n: int) -> bool:
        ls = json.loads(platform.cli("schedule", "ls", "--json").stdout)
        [mine] = [s for s in ls if s["name"] == name]
        if (mine["last_outcome"] or "").startswith("skipped"):
            skips.add(mine["last_at"])
        finished = [r for r in runs(platform, name) if r.status.terminal]
        return len(finished) >= n

    try:
        wait_for(lambda: seen(2), 90, "two scheduled runs", interval=0.3)
        kill(first)  # the active scheduler dies (its lock expires in 2 s)
        second = start_scheduler(platform, log)
        wait_for(lambda: seen(4), 90, "two more runs after the restart", interval=0.3)
    finally:
        kill(first)
        if second is not None:
            kill(second, signal.SIGTERM)
        platform.cli("schedule", "rm", name)
    recs = runs(platform, name)
    times = [r.spec.env["OFFLOAD_SCHEDULED_AT"] for r in recs]
    assert len(times) == len(set(times)), f"a time ran twice: {times}\n{log.read_text()}"
    for rec in recs:
        assert rec.spec.name == name
        if rec.status.terminal:
            assert rec.status == "succeeded", (rec.reason, rec.message)
            out = "".join(line.text for line in platform.client.job(rec.id).logs())
            assert out == f"at={rec.spec.env['OFFLOAD_SCHEDULED_AT']}"
    spans = sorted((r.started_at or 0, r.finished_at or float("inf")) for r in recs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "overlap skip let two runs run at once"
    assert skips, "a 3 s job every 2 s must skip some fire times"


@pytest.fixture
def idle(redis_server: str, tmp_path: Path) -> Iterator[Platform]:
    """A platform of its own with no worker and no scheduler."""
    p = make_platform(redis_server, tmp_path / "home")
    yield p
    p.client.broker.redis.flushdb()


def test_cli_manages_schedules_and_names_bad_input(idle: Platform) -> None:
    bad = idle.cli("schedule", "add", "x", "--cron", "61 * * * *", "offload/base")
    assert bad.returncode == 2 and "cron" in bad.stderr and "61 * * * *" in bad.stderr
    both = idle.cli("schedule", "add", "x", "--cron", "@daily", "--every", "1h", "offload/base")
    assert both.returncode == 2 and "exactly one" in both.stderr
    bad_opt = idle.cli("schedule", "add", "x", "--every", "5m", "--memory", "lots", "offload/base")
    assert bad_opt.returncode == 2 and "memory" in bad_opt.stderr
    assert idle.cli("schedule", "ls", "--json").stdout.strip() == "[]"

    ok = idle.cli("schedule", "add", "nightly", "--cron", "0 3 * * *", "--env", "A=1",
                  "--priority", "4", "offload/base", "--", "echo", "hi")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    ls = idle.cli("schedule", "ls")
    assert ls.returncode == 0 and "nightly\tcron 0 3 * * *\tskip\t" in ls.stdout
    assert "T03:00:00Z" in ls.stdout and "no scheduler is running" in ls.stderr
    assert "paused" in idle.cli("schedule", "pause", "nightly").stdout
    [row] = json.loads(idle.cli("schedule", "ls", "--json").stdout)
    assert row["paused"] is True and row["command"] == ["echo", "hi"]

    now = idle.cli("schedule", "run", "nightly")
    assert now.returncode == 0, now.stderr
    rec = idle.client.broker.records.get(now.stdout.strip())
    assert rec.spec.name == "nightly" and rec.spec.priority == 4 and rec.spec.env["A"] == "1"
    [row] = json.loads(idle.cli("schedule", "ls", "--json").stdout)
    assert row["last_job"] == rec.id and row["last_status"] == "queued"
    assert rec.spec.env["OFFLOAD_SCHEDULED_AT"] == iso(row["last_run_at"])

    assert "resumed, next run" in idle.cli("schedule", "resume", "nightly").stdout
    assert idle.cli("schedule", "rm", "nightly").returncode == 0
    gone = idle.cli("schedule", "rm", "nightly")
    assert gone.returncode == 2 and "no schedule named 'nightly'" in gone.stderr


def test_cli_schedule_add_each_makes_an_array_a_run(
    private_platform: Platform, tmp_path: Path
) -> None:
    p = private_platform
    items = tmp_path / "items.jsonl"
    items.write_text('{"params": {"n": 1}}\n{"params": {"n": 2}}\n\n{"memory": "lots"}\n')
    bad = p.cli("schedule", "add", "thumbs", "offload/base", "--every", "1h",
                "--each", str(items), "--", "true")  # fmt: skip
    assert bad.returncode == 2 and f"{items}:4 (each[2]).resources.memory" in bad.stderr
    items.write_text('{"params": {"n": 1}}\n{"params": {"n": 2}}\n')
    add = p.cli("schedule", "add", "thumbs", "offload/base", "--every", "1h",
                "--each", str(items), "--batch", "2", "--", "true")  # fmt: skip
    assert add.returncode == 0 and "thumbs: an array of 2 items every 1h" in add.stdout, add
    ran = p.cli("schedule", "run", "thumbs")
    assert ran.returncode == 0, ran.stderr
    array = p.client.array(ran.stdout.strip())
    assert len(array) == 2 and array.info.batch == 2
    array.cancel()
