"""Data across nodes and outages: S3 as the shared tier under real worker processes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from offload import JobStatus
from offload.cache.s3 import S3BlobStore, S3Config

from .conftest import Platform, make_platform, wait_for
from .s3server import DUMMY_ENV, MotoServer


def s3_env(cfg: S3Config) -> dict[str, str]:
    return {
        **DUMMY_ENV,
        "OFFLOAD_S3_BUCKET": cfg.bucket,
        "OFFLOAD_S3_ENDPOINT_URL": str(cfg.endpoint_url),
        "OFFLOAD_S3_PREFIX": cfg.prefix,
    }


@pytest.fixture
def s3_platform(redis_server: str, s3_bucket: S3Config, tmp_path: Path, docker_client: object):  # type: ignore[no-untyped-def]
    p = make_platform(
        redis_server, tmp_path / "home", OFFLOAD_WORKER_SLOTS="1", **s3_env(s3_bucket)
    )
    yield p
    p.kill_worker()


def test_s3_stopped_mid_job_then_back_the_output_reaches_s3(
    s3_platform: Platform, s3_server: MotoServer, s3_bucket: S3Config
) -> None:
    p = s3_platform
    p.start_worker()
    job = p.client.submit(
        "offload/base", ["sh", "-c", "sleep 3; echo survived > /offload/out/r.txt"], cache=False
    )
    wait_for(lambda: job.status() is JobStatus.RUNNING, 60, "the job to run")
    s3_server.stop()
    result = job.result(timeout=120)  # the job completes although S3 is away
    assert result.ok
    oid = result.outputs["r.txt"]
    store = p.client.store
    name = store.key.name_of(oid)
    s3_server.start()  # empty again (moto keeps nothing), the bucket re-created
    remote = S3BlobStore(s3_bucket)
    wait_for(lambda: remote.has(name), 60, "the held output to be uploaded", interval=0.5)
    assert p.client.read(oid) == b"survived\n"
    assert list(store.local.held()) == []  # nothing left pending, nothing sent twice


def test_second_node_runs_on_the_first_nodes_output_without_a_local_copy(
    redis_server: str, s3_bucket: S3Config, tmp_path: Path, docker_client: object
) -> None:
    home = tmp_path / "home"
    one = make_platform(
        redis_server, home, OFFLOAD_WORKER_CLASSES="cpu-small",
        OFFLOAD_CACHE_DIR=str(tmp_path / "cache-one"), **s3_env(s3_bucket),
    )  # fmt: skip
    two_env = {
        **{k: v for k, v in one.env.items() if k.startswith(("OFFLOAD_", "AWS_"))},
        "OFFLOAD_WORKER_CLASSES": "cpu-large",
        "OFFLOAD_CACHE_DIR": str(tmp_path / "cache-two"),
        "OFFLOAD_NODE_NAME": one.settings.node_name + "-two",
    }
    two = Platform(settings=one.settings, env={**one.env, **two_env})
    try:
        one.start_worker()
        two.start_worker()
        producer = one.client  # its own cache is OFFLOAD_CACHE_DIR of node one; fine
        first = producer.submit(
            "offload/base", ["sh", "-c", "echo 21 > /offload/out/n"], cpu=1, cache=False
        ).result(timeout=60)
        assert first.node == one.settings.node_name
        n = first.outputs["n"]
        name = producer.store.key.name_of(n)
        assert not (tmp_path / "cache-two").exists() or not any(
            (tmp_path / "cache-two").rglob(name)
        )
        second = producer.submit(
            "offload/base",
            ["sh", "-c", "echo $(( $(cat /offload/in/n) * 2 )) > /offload/out/m"],
            inputs={"n": n},
            cpu=2,
            cache=False,
        ).result(timeout=60)
        assert second.node == two_env["OFFLOAD_NODE_NAME"]
        assert producer.read(second.outputs["m"]) == b"42\n"
        assert any((tmp_path / "cache-two").rglob(name))  # fetched from S3, kept locally
    finally:
        one.kill_worker()
        two.kill_worker()


def test_s3_uri_inputs_are_fetched_once_by_a_node_and_addressed_by_id(
    s3_platform: Platform, s3_server: MotoServer
) -> None:
    p = s3_platform
    s3_server.client().create_bucket(Bucket="user-data")
    s3_server.client().put_object(Bucket="user-data", Key="in/words.txt", Body=b"fig\npear\n")
    p.start_worker()
    job = p.client.submit(
        "offload/base",
        ["sort", "/offload/in/words"],
        inputs={"words": "s3://user-data/in/words.txt"},
    )
    assert job.result(timeout=60).ok
    assert [line.text for line in job.logs()] == ["fig", "pear"]
    oid = job.record().fetched["words"]
    assert oid == "sha256:" + hashlib.sha256(b"fig\npear\n").hexdigest()
    fetched = p.client.broker.redis.keys("offload:fetched:*")
    assert len(fetched) == 1 and json.loads(p.client.broker.redis.get(fetched[0]))["oid"] == oid
    again = p.client.submit(
        "offload/base",
        ["wc", "-l", "/offload/in/words"],
        inputs={"words": "s3://user-data/in/words.txt"},
    )
    assert again.result(timeout=60).ok and again.record().fetched["words"] == oid
    bad = p.client.submit("offload/base", ["true"], inputs={"w": "s3://user-data/missing"})
    failed = bad.result(timeout=60, raise_on_failure=False)
    assert failed.reason == "input_missing" and "s3://user-data/missing" in (failed.message or "")
