"""``s3://`` inputs: left to the node that runs the job (issue 20: the submitter moves none of
their bytes), fetched once and remembered for ``memo_ttl`` (issue 7, defect e: the memo
never expired), an unreachable S3 a failure naming it."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from offload.broker import keys
from offload.cache.fetch import FetchConfig, Fetcher, FetchFailed, UserS3
from offload.cache.s3 import S3Config
from offload.spec.uris import parse_uri

from .conftest import make_platform
from .s3server import DUMMY_ENV, MotoServer


def test_an_s3_input_is_fetched_by_the_node_and_remembered_for_the_memo_ttl(
    redis_server: str, s3_server: MotoServer, s3_bucket: S3Config, tmp_path: Path
) -> None:
    p = make_platform(
        redis_server,
        tmp_path / "home",
        OFFLOAD_MEMO_TTL="3600",
        **DUMMY_ENV,
        OFFLOAD_S3_BUCKET=s3_bucket.bucket,
        OFFLOAD_S3_ENDPOINT_URL=str(s3_bucket.endpoint_url),
    )
    user_bucket = s3_server.create_bucket(f"user-data-{uuid.uuid4().hex[:8]}")
    try:
        uri = f"s3://{user_bucket}/in/w.txt"
        client = p.client
        job = client.submit("offload/base", ["sort", "/offload/in/w"], inputs={"w": uri})
        assert job.record().spec.inputs["w"] == uri  # not imported: it does not even exist yet
        s3_server.client().put_object(Bucket=user_bucket, Key="in/w.txt", Body=b"fig\npear\n")
        fetcher = Fetcher(
            client.store, client.broker.redis, client.key,
            FetchConfig(ttl=3600, s3=UserS3(endpoint_url=s3_server.endpoint_url)),
        )  # fmt: skip
        oid = fetcher.fetch(parse_uri(uri))
        assert oid == "sha256:" + hashlib.sha256(b"fig\npear\n").hexdigest()
        [memo] = client.broker.redis.keys(keys.fetched("*"))
        assert json.loads(client.broker.redis.get(memo))["oid"] == oid
        assert 0 < client.broker.redis.ttl(memo) <= 3600
        assert client.store.has(oid)  # in the shared tier: any node skips the fetch
    finally:
        s3_server.remove_bucket(user_bucket)


def test_an_unreachable_s3_fails_the_fetch_naming_it(
    redis_server: str, s3_server: MotoServer, s3_bucket: S3Config, tmp_path: Path
) -> None:
    p = make_platform(redis_server, tmp_path / "home")
    fetcher = Fetcher(
        p.client.store, p.client.broker.redis, p.client.key,
        FetchConfig(ttl=60, attempts=1, s3=UserS3(endpoint_url=s3_server.endpoint_url,
                                                  max_attempts=1, timeout=2)),
    )  # fmt: skip
    s3_server.stop()
    try:
        with pytest.raises(FetchFailed, match=f"cannot reach S3 for s3://{s3_bucket.bucket}/x"):
            fetcher.fetch(parse_uri(f"s3://{s3_bucket.bucket}/x"))
    finally:
        s3_server.start()
