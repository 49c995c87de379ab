"""Metrics without Prometheus: the cluster-wide counters in Redis, Redis's memory against its
high-water mark, schedule fires, and bad metrics settings refused naming the setting.
(tests/test_prometheus.py scrapes a whole platform with a real Prometheus.)"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from offload import JobStatus
from offload.autoscaler.clustermetrics import ClusterCollector
from offload.broker.stats import read_stats, redis_memory
from offload.config import load_settings
from offload.errors import ConfigError
from offload.scheduler import Scheduler
from offload.spec import MiB

from .conftest import Platform, free_port, make_platform, offload_cli, wait_for


@pytest.fixture
def plain(redis_server: str, tmp_path: Path) -> Platform:
    """A platform's Redis database and home, no worker."""
    return make_platform(redis_server, tmp_path / "home")


def scrape(p: Platform) -> str:
    registry = CollectorRegistry()
    registry.register(ClusterCollector(p.client.broker, ["cpu-small"]))
    return generate_latest(registry).decode()


def test_submits_waits_and_ends_are_counted_in_redis(plain: Platform) -> None:
    c = plain.client
    parent = c.submit("offload/base", ["true"], cache=False)
    child = c.submit("offload/base", ["true"], after=[parent], cache=False)
    stats = read_stats(c.broker.redis, plain.settings, ["cpu-small"])
    assert stats.submitted == {"cpu-small": 2}
    assert (stats.waiting.parents, stats.waiting.limit, stats.waiting.held) == (1, 0, 0)
    assert stats.finished == []

    assert parent.cancel() is JobStatus.CANCELLED  # queued: cancelled at once; the child fails
    wait_for(lambda: child.status().terminal, 10, "the child to end")
    stats = read_stats(c.broker.redis, plain.settings, ["cpu-small"])
    ends = {(f.resource_class, f.status, f.reason): f.count for f in stats.finished}
    assert ends[("cpu-small", "cancelled", "cancelled")] == 1
    assert sum(ends.values()) == 2, ends  # the child ended too, counted once
    assert stats.waiting.parents == 0

    text = scrape(plain)
    assert 'offload_jobs_submitted_total{resource_class="cpu-small"} 2.0' in text
    assert (
        'offload_jobs_finished_total{reason="cancelled",resource_class="cpu-small",'
        'status="cancelled"} 1.0'
    ) in text
    assert "offload_redis_up 1.0" in text


def test_schedule_fires_and_misses_are_counted(plain: Platform) -> None:
    scheduler = Scheduler(plain.client)
    scheduler.schedules.add("tick", "offload/base", ["true"], every="10s", now=1000.0)
    assert [f.outcome for f in scheduler.tick(now=1010.0)] == ["submitted"]
    fired = scheduler.tick(now=1055.0)  # 1020, 1030 and 1040 were missed: 1050 stands for them
    assert [f.at for f in fired] == [1050.0]
    assert fired[0].outcome.startswith("skipped")  # overlap skip: the first run is still queued
    assert read_stats(plain.client.broker.redis, plain.settings, []).schedules == {
        "submitted": 1,
        "skipped": 1,
        "missed": 1,
    }
    text = scrape(plain)
    assert 'offload_schedule_fires_total{outcome="skipped"} 1.0' in text
    assert "offload_schedule_misses_total 1.0" in text


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A redis-server of its own with a maxmemory of 64 MiB."""
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe is not None
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
         "--maxmemory", str(64 * MiB)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    r = redis.Redis(port=port)

    def up() -> bool:
        try:
            return bool(r.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, 10, "redis-server")
        yield r
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_memory_against_its_high_water_mark(
    small_redis: redis.Redis, plain: Platform
) -> None:
    m = redis_memory(small_redis, 0.5)
    assert m is not None and m.max == 64 * MiB and m.high_water == 32 * MiB
    assert 0 < m.used < m.high_water
    # the session's Redis has no maxmemory: used bytes, no mark
    m = redis_memory(plain.client.broker.redis, plain.settings.redis_high_water)
    assert m is not None and m.used > 0 and (m.max, m.high_water) == (0, 0)
    text = scrape(plain)
    assert "offload_redis_used_memory_bytes" in text
    assert "offload_redis_high_water_bytes" not in text


def test_bad_metrics_settings_are_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="metrics_port"):
        load_settings(_env_file=None, metrics_port=70000)
    with pytest.raises(ConfigError, match="OFFLOAD_METRICS_ADDRESS"):
        load_settings(_env_file=None, metrics_address="not an address")
    with pytest.raises(ConfigError, match="OFFLOAD_METRICS_ADDRESS"):
        load_settings(_env_file=None, metrics_address="http://127.0.0.1")
    assert load_settings(_env_file=None, metrics_port="").metrics_port is None  # empty: off


def test_a_worker_whose_metrics_port_is_taken_refuses_to_start(
    private_platform: Platform,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**private_platform.env, "OFFLOAD_METRICS_PORT": str(port)}
        done = offload_cli(env, "worker")
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr and "OFFLOAD_METRICS_PORT" in done.stderr, (
        done.stderr[-2000:]
    )
