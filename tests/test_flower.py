"""Flower, as `offload flower` runs it: jobs show under their name, secret params never show.

Headless Chromium renders the pages, since Flower fills its tasks table by JavaScript.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Platform, free_port, wait_for

CHROMIUM = "/usr/bin/chromium"


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def api_tasks(base: str) -> dict[str, Any]:
    tasks: dict[str, Any] = json.loads(fetch(f"{base}/api/tasks"))
    return tasks


def render(url: str) -> str:
    """The DOM of ``url`` after Chromium has run its scripts (and their ajax calls)."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0 and "</html>" in done.stdout, done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def flower(private_platform: Platform) -> Iterator[str]:
    """`offload flower` on a free loopback port, for a platform whose worker is not started."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing; install Debian's `chromium`", pytrace=False)
    port = free_port()
    env = {
        **private_platform.env,
        "OFFLOAD_FLOWER_PORT": str(port),
        # only so this test can read Flower's JSON API too; `offload flower` leaves it closed
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    log_path = private_platform.settings.home / "flower.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "offload", "flower"],
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        try:
            return fetch(f"{base}/healthcheck") == "OK"
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_for(healthy, 30, "Flower")
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_flower_shows_a_job_by_name_and_never_its_secret(
    private_platform: Platform, flower: str
) -> None:
    client = private_platform.client
    tag = uuid.uuid4().hex[:12]
    name = f"flower-probe-{tag}"
    secret = f"s3cr3t-{tag}"

    # Flower subscribes to events a moment after it answers; until a job published now shows
    # (by its task-sent event alone), publish another.
    canaries: list[str] = []

    def listening() -> bool:
        canaries.append(client.submit("offload/base", ["true"], name=f"canary-{tag}").id)
        return bool(set(canaries) & set(api_tasks(flower)))

    wait_for(listening, 20, "Flower to see a queued job", interval=0.5)

    job = client.submit(
        "offload/base", ["true"], name=name, params={"size": 3}, secrets={"token": secret}
    )
    # Queued, with no worker yet: Flower knows the job only from its task-sent event.
    queued = wait_for(lambda: api_tasks(flower).get(job.id), 10, "Flower to list the job")
    assert queued["name"] == name
    assert queued["state"] == "PENDING"
    assert queued["args"] == "offload/base size=3 token=***"

    private_platform.start_worker()
    assert job.result(timeout=60).ok
    info_url = f"{flower}/api/task/info/{job.id}"
    wait_for(lambda: json.loads(fetch(info_url))["state"] == "SUCCESS", 10, "Flower's SUCCESS")

    tasks_page = render(f"{flower}/tasks")
    row = re.search(rf'<tr id="{job.id}"[^>]*>(.*?)</tr>', tasks_page, re.S)
    assert row is not None, f"no row for {job.id} in the rendered tasks table"
    assert f">{name}</a>" in row.group(1)
    assert ">SUCCESS<" in row.group(1)

    task_page = render(f"{flower}/task/{job.id}")
    assert f">{name}</a>" in task_page
    assert ">SUCCESS<" in task_page
    assert "offload/base size=3 token=***" in task_page

    info = json.loads(fetch(info_url))
    assert info["name"] == name and info["state"] == "SUCCESS"
    datatable = fetch(
        f"{flower}/tasks/datatable?draw=1&start=0&length=100&search%5Bvalue%5D="
        "&order%5B0%5D%5Bcolumn%5D=0&order%5B0%5D%5Bdir%5D=desc&columns%5B0%5D%5Bdata%5D=received"
    )
    assert job.id in datatable and name in datatable
    seen = {
        "tasks page": tasks_page,
        "task page": task_page,
        "/api/tasks": fetch(f"{flower}/api/tasks"),
        "/api/task/info": json.dumps(info),
        "/tasks/datatable": datatable,
        "Flower's log": (private_platform.settings.home / "flower.log").read_text(errors="replace"),
    }
    leaked = [where for where, text in seen.items() if secret in text]
    assert not leaked, f"the secret value shows in {leaked}"
