"""Flower, as `offload flower` runs it: jobs show under their name, secret params never show,
and a job that did not succeed shows as FAILURE with its reason.

Headless Chromium renders the pages, since Flower fills its tasks table by JavaScript.
"""

from __future__ import annotations

import html
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
from pathlib import Path
from typing import Any

import pytest

from offload.broker.status import JobStatus
from offload.producer.client import Client
from offload.spec.arrays import chunk_id

from .conftest import Platform, free_port, wait_for

CHROMIUM = "/usr/bin/chromium"


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def api_tasks(base: str) -> dict[str, Any]:
    tasks: dict[str, Any] = json.loads(fetch(f"{base}/api/tasks"))
    return tasks


def chromium(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url``, after its scripts (and their ajax calls) have run."""
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
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def render(url: str) -> str:
    """The DOM of ``url`` as Chromium renders it (Flower fills its tables by JavaScript)."""
    dom = chromium(url, "--dump-dom").stdout
    assert "</html>" in dom, dom[-3000:]
    return dom


def screenshot(url: str, path: Path) -> None:
    chromium(url, f"--screenshot={path}", "--window-size=1600,900", "--hide-scrollbars")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def wait_until_listening(client: Client, flower: str, tag: str) -> None:
    """Flower subscribes to events a moment after it answers; until a job published now shows
    (by its task-sent event alone), publish another."""
    canaries: list[str] = []

    def listening() -> bool:
        canaries.append(client.submit("offload/base", ["true"], name=f"canary-{tag}").id)
        return bool(set(canaries) & set(api_tasks(flower)))

    wait_for(listening, 20, "Flower to see a queued job", interval=0.5)


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

    wait_until_listening(client, flower, tag)

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


def test_flower_shows_failed_timed_out_and_cancelled_jobs_as_failure_with_reason(
    private_platform: Platform, flower: str
) -> None:
    client = private_platform.client
    tag = uuid.uuid4().hex[:12]
    wait_until_listening(client, flower, tag)

    # cancelled while queued: no worker yet; its message is delivered once one starts
    dropped = client.submit("offload/base", ["true"], name=f"dropped-{tag}")
    assert dropped.cancel() == JobStatus.CANCELLED
    private_platform.start_worker()
    failed = client.submit(
        "offload/base", ["sh", "-c", "echo boom >&2; exit 3"], name=f"failing-{tag}"
    )
    slow = client.submit("offload/base", ["sleep", "60"], timeout=1, name=f"slow-{tag}")
    fine = client.submit("offload/base", ["true"], name=f"fine-{tag}", cache=False)
    for job in (failed, slow, fine):
        job.result(timeout=60, raise_on_failure=False)
    stopped = client.submit("offload/base", ["sleep", "60"], name=f"stopped-{tag}")
    wait_for(lambda: stopped.status() == JobStatus.RUNNING, 60, "the job to run")
    stopped.cancel()
    assert stopped.result(timeout=60, raise_on_failure=False).status == JobStatus.CANCELLED

    expected = {
        failed.id: "TaskFailed: exit_code: exited with code 3",
        slow.id: "TaskFailed: timeout: ran longer than its timeout of 1s and was killed",
        stopped.id: "TaskFailed: cancelled: cancelled while running",
        dropped.id: "TaskFailed: cancelled: cancelled while queued",
    }

    def info(job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(fetch(f"{flower}/api/task/info/{job_id}"))
        return found

    def all_shown() -> bool:
        return all(info(i)["state"] == "FAILURE" for i in expected) and (
            info(fine.id)["state"] == "SUCCESS"
        )

    wait_for(all_shown, 20, "Flower to show the jobs' ends", interval=0.5)
    for job_id, exception in expected.items():
        shown = info(job_id)
        assert shown["exception"] == exception, shown
        assert shown["retries"] == 0, shown
    # each ran at most once: no retry, no redelivery, every message acknowledged
    assert [client.job(i).record().attempt for i in expected] == [1, 1, 1, 0]
    r = client.broker.redis
    # acknowledged late, after each task returned: a state reached a moment after the event
    wait_for(lambda: r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0, 15, "the acks")
    assert not [q for q in r.keys("cpu-*") if r.type(q) == "list" and r.llen(q)]

    log = (private_platform.settings.home / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log
    assert f"raised expected: {expected[failed.id]}" in log

    # The tasks page, filtered as its "Failed" button does, lists them and their reasons
    failures = f"{flower}/tasks?state=FAILURE"
    page = render(failures)
    for job_id, exception in expected.items():
        row = re.search(rf'<tr id="{job_id}"[^>]*>(.*?)</tr>', page, re.S)
        assert row is not None, f"no FAILURE row for {job_id} in the rendered tasks table"
        assert ">FAILURE<" in row.group(1)
        assert html.escape(exception, quote=False) in row.group(1)
    assert f'<tr id="{fine.id}"' not in page
    shot = Path(os.environ.get("OFFLOAD_TEST_FLOWER_SCREENSHOT") or tmp_png(private_platform))
    screenshot(failures, shot)


def tmp_png(platform: Platform) -> Path:
    return platform.settings.home / "flower-failed.png"


def test_flower_shows_one_task_per_chunk_of_a_batched_array(
    private_platform: Platform, flower: str, tmp_path: Path
) -> None:
    client = private_platform.client
    tag = uuid.uuid4().hex[:12]
    wait_until_listening(client, flower, tag)
    name = f"thumbs-{tag}"
    array = client.map(
        "offload/base",
        ["sh", "-c", '[ "$OFFLOAD_TASK_INDEX" != 4 ]'],
        each=[{}] * 5,
        batch=3,
        name=name,
        retries=0,
        cache=False,
    )
    first, second = chunk_id(array.id, 0, 3), chunk_id(array.id, 3, 5)
    private_platform.start_worker()
    array.wait(timeout=120)

    def states() -> dict[str, str]:
        tasks = api_tasks(flower)
        return {c: tasks[c]["state"] for c in (first, second) if c in tasks}

    wait_for(lambda: states() == {first: "SUCCESS", second: "FAILURE"}, 20, "both chunks")
    tasks = api_tasks(flower)
    assert tasks[first]["name"] == f"{name}[0..2]" and tasks[second]["name"] == f"{name}[3..4]"
    assert not any(t.startswith(array.id) and t not in (first, second) for t in tasks)
    page = render(f"{flower}/task/{second}")
    assert "items_failed" in page and "1 failed, 1 succeeded" in page
    screenshot(f"{flower}/tasks", tmp_path / "chunks.png")
    assert (tmp_path / "chunks.png").stat().st_size > 0
