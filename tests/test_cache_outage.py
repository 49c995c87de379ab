"""While S3 cannot be reached, an outage is reported as an outage — never as "not in the
store" — and no memo entry is lost (issue 7, defect d). The S3 server is a real moto process,
stopped for the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offload.broker import keys
from offload.cache.keys import ClusterKey
from offload.cache.localblobs import LocalBlobStore
from offload.cache.s3 import S3BlobStore, S3Config
from offload.cache.sealed import SealedStore
from offload.cache.store import Store
from offload.errors import SpecError, StoreUnavailable

from .conftest import Platform, make_platform, wait_for
from .s3server import DUMMY_ENV, MotoServer

KEY = ClusterKey.generate()


def s3_env(cfg: S3Config) -> dict[str, str]:
    return {
        **DUMMY_ENV,
        "OFFLOAD_S3_BUCKET": cfg.bucket,
        "OFFLOAD_S3_ENDPOINT_URL": str(cfg.endpoint_url),
        "OFFLOAD_S3_PREFIX": cfg.prefix,
    }


def only_in_s3(store: Store, data: bytes) -> str:
    """Store ``data``, then drop the local copy: only S3 holds it."""
    assert isinstance(store, SealedStore) and store.remote is not None
    oid = store.put_bytes(data)
    store.local.delete(store.key.name_of(oid))
    return oid


def test_the_tiered_store_says_unavailable_not_absent(
    s3_server: MotoServer, s3_bucket: S3Config, tmp_path: Path
) -> None:
    store = SealedStore(KEY, LocalBlobStore(tmp_path / "cache"), S3BlobStore(s3_bucket))
    remote_only = only_in_s3(store, b"in the bucket only")
    local = store.put_bytes(b"also in this node's cache")
    s3_server.stop()
    try:
        with pytest.raises(StoreUnavailable, match="cannot be reached") as err:
            store.has(remote_only)
        assert remote_only in str(err.value)
        with pytest.raises(StoreUnavailable):
            store.has("sha256:" + "0" * 64)  # absent or not: nobody can tell now
        assert store.has(local)  # the local tier answers without S3
        assert store.read_bytes(local) == b"also in this node's cache"
        with pytest.raises(StoreUnavailable):
            store.export(remote_only, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    finally:
        s3_server.start()


@pytest.fixture
def s3_platform(redis_server: str, s3_bucket: S3Config, tmp_path: Path) -> Platform:
    return make_platform(redis_server, tmp_path / "home", **s3_env(s3_bucket))


def test_submit_reports_an_outage_not_a_refused_spec(
    s3_platform: Platform, s3_server: MotoServer
) -> None:
    p = s3_platform
    oid = only_in_s3(p.client.store, b"an input only S3 holds")
    s3_server.stop()
    try:
        with pytest.raises(StoreUnavailable) as err:
            p.client.submit("offload/base", ["cat", "/offload/in/x"], inputs={"x": oid})
        assert not isinstance(err.value, SpecError)
        res = p.cli("submit", "offload/base", "--input", f"x={oid}", "--", "cat", "/offload/in/x")
        assert res.returncode == 10, (res.stdout, res.stderr)
        assert "cannot be reached" in res.stderr and "Traceback" not in res.stderr
        assert "not in the store" not in res.stderr
    finally:
        s3_server.start()
    assert p.client.broker.redis.keys(keys.job("*")) == []  # nothing was queued


def test_a_memo_entry_survives_an_outage_and_the_job_runs(
    s3_platform: Platform, s3_server: MotoServer, tmp_path: Path, docker_client: object
) -> None:
    p = s3_platform
    command = ["sh", "-c", f"echo {tmp_path.name} > /offload/out/x; date +%s%N >> /offload/out/x"]
    p.start_worker()
    try:
        first = p.client.submit("offload/base", command).result(timeout=60)
        # the memo is written just after the success is recorded: wait for that state
        r = p.client.broker.redis
        [memo_key] = wait_for(lambda: r.keys(keys.memo("*")), 15, "the first job's memo entry")
        before = json.loads(p.client.broker.redis.get(memo_key))
        assert before["job_id"] == first.job_id
        store = p.client.store
        assert isinstance(store, SealedStore)
        for oid in first.outputs.values():  # the outputs are in S3 only now
            store.local.delete(store.key.name_of(oid))
        s3_server.stop()
        try:
            second = p.client.submit("offload/base", command).result(timeout=120)
        finally:
            s3_server.start()
        assert second.ok and second.cache_hit is None  # could not use the memo: it ran
        entry = json.loads(p.client.broker.redis.get(memo_key))
        assert entry == before  # kept as it was (signature included)
        assert entry["outputs"] == first.outputs and entry["job_id"] == first.job_id
        assert p.client.broker.redis.ttl(memo_key) > 0
    finally:
        p.kill_worker()
