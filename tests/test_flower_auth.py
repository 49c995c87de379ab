"""Flower behind auth: `offload flower` refuses a non-loopback address without
authentication; with basic auth, `/`, `/api/tasks` and `/metrics` answer 401 without
credentials and 200 with them."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from .conftest import Platform, free_port, wait_for


def status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_non_loopback_address_without_auth_is_refused(private_platform: Platform) -> None:
    env = {**private_platform.env, "OFFLOAD_FLOWER_ADDRESS": "0.0.0.0"}
    env.pop("OFFLOAD_FLOWER_AUTH", None)
    done = subprocess.run(
        [sys.executable, "-m", "offload", "flower"], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "OFFLOAD_FLOWER_AUTH" in done.stderr and "0.0.0.0" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_malformed_auth_setting_is_refused_without_echoing_it(
    private_platform: Platform,
) -> None:
    env = {**private_platform.env, "OFFLOAD_FLOWER_AUTH": "no-colon-secret"}
    done = subprocess.run(
        [sys.executable, "-m", "offload", "flower"], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "OFFLOAD_FLOWER_AUTH" in done.stderr, done.stderr
    assert "no-colon-secret" not in done.stderr


@pytest.fixture
def flower_with_auth(private_platform: Platform) -> Iterator[str]:
    port = free_port()
    env = {
        **private_platform.env,
        "OFFLOAD_FLOWER_ADDRESS": "0.0.0.0",
        "OFFLOAD_FLOWER_PORT": str(port),
        "OFFLOAD_FLOWER_AUTH": "ops:s3cret-pass",
    }
    log = private_platform.settings.home / "flower.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "offload", "flower"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            return status(f"{base}/healthcheck") == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_for(healthy, 30, "Flower")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert "s3cret-pass" not in " ".join(proc.args)  # never on a command line


def test_basic_auth_covers_the_pages_the_api_and_metrics(flower_with_auth: str) -> None:
    for path in ("/", "/api/tasks", "/metrics"):
        assert status(flower_with_auth + path) == 401, path
        assert status(flower_with_auth + path, "ops:wrong") == 401, path
        assert status(flower_with_auth + path, "ops:s3cret-pass") == 200, path
