"""A real S3-compatible server for tests: moto's server mode, as a separate process on loopback.

Load it as a pytest plugin (``pytest_plugins = ["tests.s3server"]`` in ``conftest.py``).

Fixtures:

``s3_server`` (session)
    A :class:`MotoServer` listening on a free ``127.0.0.1`` port. ``stop()`` terminates the
    process (S3 "goes away": connections are refused); ``start()`` starts it again on the
    SAME port. moto keeps everything in memory and has no persistence, so a restart loses
    every object: ``start()`` re-creates the buckets made through :meth:`MotoServer.create_bucket`
    (empty), which is what an outage test needs (uploads held during the outage go out to an
    existing bucket afterwards), but objects written before the stop are gone.

    While the fixture is active, dummy AWS credentials are set in ``os.environ`` (and
    ``AWS_CONFIG_FILE`` / ``AWS_SHARED_CREDENTIALS_FILE`` point at a missing file) so neither
    boto3 here nor a worker subprocess inheriting the environment ever reads the developer's
    real ``~/.aws`` or talks to AWS with real keys.

``s3_bucket`` (function)
    A fresh, empty bucket on that server, as an :class:`~offload.cache.s3.S3Config`.
    Emptied and removed after the test (the server is restarted first if a test left it
    stopped, so one outage test cannot break the tests after it).

moto missing (``pip install -e .[dev]``) fails the run; nothing here skips.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offload.cache.s3 import S3Config

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "offload-test",
    "AWS_SECRET_ACCESS_KEY": "offload-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
UNSET_ENV = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on ``127.0.0.1:<port>``, stoppable and restartable."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.buckets: set[str] = set()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> Any:
        """A plain boto3 S3 client for the server (test set-up and inspection)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            config=Config(
                connect_timeout=2,
                read_timeout=60,
                retries={"mode": "standard", "max_attempts": 2},
                s3={"addressing_style": "path"},
            ),
        )

    def start(self, timeout: float = 30) -> None:
        """Start the server (on the same port as before) and re-create the known buckets."""
        if self.running:
            return
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", self.port)) == 0:
                raise AssertionError(
                    f"port {self.port} is already taken by another process; cannot (re)start "
                    "the moto server there"
                )
        log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(DUMMY_ENV)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"moto server exited with {self.proc.returncode} on port {self.port}:\n"
                    f"{self.log_tail()}"
                )
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"moto server did not listen on port {self.port} within {timeout}s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)
        client = self.client()
        for bucket in sorted(self.buckets):
            client.create_bucket(Bucket=bucket)

    def stop(self) -> None:
        """Terminate the server; connections are refused until :meth:`start`. State is lost."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def create_bucket(self, name: str | None = None) -> str:
        """A new bucket, remembered so that a restart re-creates it (empty)."""
        name = name or f"offload-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.add(name)
        return name

    def remove_bucket(self, name: str) -> None:
        """Delete every object, pending multipart upload and the bucket itself."""
        self.buckets.discard(name)
        if not self.running:
            return
        client = self.client()
        with contextlib.suppress(client.exceptions.NoSuchBucket):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
            for up in uploads:
                client.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
            client.delete_bucket(Bucket=name)

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    missing = [m for m in ("moto", "flask", "werkzeug") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(
            f"{missing} not installed: the S3 tests need moto's server mode; "
            "run `pip install -e .[dev]` (moto[server])",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("s3")
    with pytest.MonkeyPatch.context() as mp:
        for name in UNSET_ENV:
            mp.delenv(name, raising=False)
        for name, value in DUMMY_ENV.items():
            mp.setenv(name, value)
        mp.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
        server = MotoServer(home / "moto.log")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> Iterator[S3Config]:
    s3_server.start()  # a no-op unless an earlier test left it stopped
    bucket = s3_server.create_bucket()
    yield S3Config(bucket=bucket, endpoint_url=s3_server.endpoint_url)
    s3_server.start()
    s3_server.remove_bucket(bucket)
