"""``s3://`` inputs: imported once into the content store, remembered for ``memo_ttl``
(issue 7, defect e: the import memo never expired), an unreachable S3 an outage."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from offload.broker import keys
from offload.cache.imports import import_s3
from offload.cache.s3 import S3Config
from offload.errors import StoreUnavailable

from .conftest import make_platform
from .s3server import DUMMY_ENV, MotoServer


def test_an_import_is_remembered_for_the_memo_ttl(
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
        s3_server.client().put_object(Bucket=user_bucket, Key="in/w.txt", Body=b"fig\npear\n")
        uri = f"s3://{user_bucket}/in/w.txt"
        client = p.client
        job = client.submit("offload/base", ["sort", "/offload/in/w"], inputs={"w": uri})
        oid = job.record().spec.inputs["w"]
        assert oid == "sha256:" + hashlib.sha256(b"fig\npear\n").hexdigest()
        [memo] = client.broker.redis.keys(keys.s3_import("*"))
        assert client.broker.redis.get(memo) == oid
        assert 0 < client.broker.redis.ttl(memo) <= 3600
        again = import_s3(
            uri, client.store, client.broker.redis, field="inputs.w", ttl=60,
            endpoint_url=s3_server.endpoint_url,
        )  # fmt: skip
        assert again == oid  # remembered: not downloaded again
    finally:
        s3_server.remove_bucket(user_bucket)


def test_an_unreachable_s3_is_an_outage(
    redis_server: str, s3_server: MotoServer, s3_bucket: S3Config, tmp_path: Path
) -> None:
    p = make_platform(redis_server, tmp_path / "home")
    s3_server.stop()
    try:
        with pytest.raises(StoreUnavailable, match="cannot reach S3"):
            import_s3(
                f"s3://{s3_bucket.bucket}/x", p.client.store, p.client.broker.redis, field="inputs.x",
                ttl=60, endpoint_url=s3_server.endpoint_url,
            )  # fmt: skip
    finally:
        s3_server.start()
