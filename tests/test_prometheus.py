"""A real Prometheus scrapes the embedded platform (`offload up`) and counts its jobs right.

Debian's ``prometheus`` (``infra/setup.sh``) on a free loopback port, scraping every second
the targets ``offload up``'s processes write to ``<home>/run/metrics/*.json`` (file_sd). After
four jobs — one succeeded, one failed ``exit_code``, one ``oom_killed``, one retried once —
its HTTP API (``/api/v1/query``) must give the right counts and a queue-wait histogram. The
example rules pass ``promtool check rules``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .conftest import REPO, free_port, offload_cli, wait_for

RULES = REPO / "infra" / "prometheus" / "offload.rules.yml"


def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed; run `make setup` (apt: prometheus)", pytrace=False)
    return exe


class Prometheus:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def query(self, expr: str) -> list[dict[str, object]]:
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` now; None while it has no sample."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])  # type: ignore[index]


@contextlib.contextmanager
def start_prometheus(tmp: Path, targets: Path) -> Iterator[Prometheus]:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "offload",
                        "scrape_interval": "1s",
                        "file_sd_configs": [
                            {"files": [str(targets / "*.json")], "refresh_interval": "1s"}
                        ],
                    }
                ],
            }
        )
    )
    log = tmp / "prometheus.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", log)

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_for(ready, 60, "Prometheus to be ready", interval=0.2)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def embedded(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[dict[str, str]]:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "OFFLOAD_HOME": str(home),
        "OFFLOAD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "OFFLOAD_FLOWER_PORT": str(free_port()),
        "OFFLOAD_NODE_NAME": "prom-test",
        "OFFLOAD_METRICS_PORT": "0",  # free ports: platforms side by side never clash
    }
    try:
        up = offload_cli(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        yield env
    finally:
        down = offload_cli(env, "down", "--force")
        assert down.returncode == 0, down.stdout + down.stderr


def test_prometheus_counts_the_embedded_platforms_jobs(
    embedded: dict[str, str], tmp_path: Path
) -> None:
    env = embedded
    targets = Path(env["OFFLOAD_HOME"]) / "run" / "metrics"
    assert sorted(p.name for p in targets.glob("*.json")) == ["autoscaler.json", "prom-test.json"]
    submit = ("submit", "offload/base", "--no-cache", "--wait")
    ok = offload_cli(env, *submit, "--", "true")
    assert ok.returncode == 0, ok.stderr
    code = offload_cli(env, *submit, "--", "sh", "-c", "exit 3")
    assert code.returncode == 3, code.stderr
    oom = offload_cli(env, *submit, "--memory", "32m", "--", "tail", "/dev/zero")
    assert oom.returncode == 137, oom.stderr
    retried = offload_cli(
        env, *submit, "--retries", "1", "--backoff", "0.2", "--", "sh", "-c", "exit 4"
    )
    assert retried.returncode == 4, retried.stderr
    flower = f"http://127.0.0.1:{env['OFFLOAD_FLOWER_PORT']}/metrics"
    with urllib.request.urlopen(flower, timeout=10) as r:  # Flower's own, still there
        assert r.status == 200 and b"flower_events_total" in r.read()

    with start_prometheus(tmp_path / "prom", targets) as prom:
        wait_for(
            lambda: prom.value('count(up{job="offload"} == 1)') == 2,
            60,
            "Prometheus to scrape the worker and the autoscaler",
            interval=0.5,
        )
        want = {
            "sum(offload_jobs_submitted_total)": 4,
            'sum(offload_jobs_finished_total{status="succeeded"})': 1,
            'sum(offload_jobs_finished_total{status="failed", reason="exit_code"})': 2,
            'sum(offload_jobs_finished_total{status="failed", reason="oom_killed"})': 1,
            'sum(offload_attempts_retried_total{reason="exit_code"})': 1,
            "sum(offload_attempts_started_total)": 5,
            'sum(offload_attempts_ended_total{status="queued"})': 1,
            "sum(offload_job_queue_wait_seconds_count)": 5,
            "sum(offload_job_run_seconds_count)": 5,
            'offload_node_slots{node="prom-test"}': None,  # present; its value is the node's
        }

        def counted() -> dict[str, float | None]:
            got = {q: prom.value(q) for q in want}
            return (
                got
                if all(got[q] is not None and (n is None or got[q] == n) for q, n in want.items())
                else {}
            )

        try:
            wait_for(counted, 60, "Prometheus to have every count", interval=0.5)
        except AssertionError:
            raise AssertionError({q: prom.value(q) for q in want}) from None
        p95 = prom.value(
            "histogram_quantile(0.95, sum by (le) (offload_job_queue_wait_seconds_bucket))"
        )
        assert p95 is not None and 0 <= p95 < 3600, p95
        buckets = prom.query("offload_job_queue_wait_seconds_bucket")
        assert buckets and max(float(b["value"][1]) for b in buckets) == 5  # type: ignore[index]
        assert prom.value("offload_redis_used_memory_bytes")
        assert prom.value("offload_redis_high_water_bytes") == int(1024**3 * 0.8)


def test_promtool_accepts_the_example_rules() -> None:
    done = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout
