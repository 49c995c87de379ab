"""Input URIs fetched into the sealed store (cache/fetch.py) from a real HTTP server on
loopback and the real S3 server: remembered by validators, redirects, retries, pins."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import redis

from offload.broker import keys
from offload.cache.fetch import FetchConfig, Fetcher, FetchFailed, UserS3
from offload.cache.keys import ClusterKey, init_key, load_key
from offload.cache.localblobs import LocalBlobStore
from offload.cache.sealed import SealedStore
from offload.spec.uris import parse_uri

from .conftest import new_db
from .httpserver import HTTPFiles
from .s3server import MotoServer


def oid_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def parts(redis_server: str, tmp_path: Path) -> tuple[SealedStore, redis.Redis, ClusterKey]:
    init_key(tmp_path / "key")
    key = load_key(tmp_path / "key")
    store = SealedStore(key, LocalBlobStore(tmp_path / "cache", None))
    r = redis.Redis.from_url(f"{redis_server}/{new_db()}", decode_responses=True)
    return store, r, key


def fetcher(parts: tuple[SealedStore, redis.Redis, ClusterKey], **kw: object) -> Fetcher:
    store, r, key = parts
    given: dict[str, object] = {"ttl": 600, "attempts": 3, "timeout": 5, "backoff": 0.05, **kw}
    config = FetchConfig(**given)  # type: ignore[arg-type]
    return Fetcher(store, r, key, config)


def test_a_url_is_fetched_once_then_remembered_by_its_etag(parts, http_files: HTTPFiles) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(300_000)
    http_files.files["/a.bin"] = data
    http_files.files["/same.bin"] = data
    f = fetcher(parts)
    oid = f.fetch(parse_uri(http_files.url("/a.bin")))
    assert oid == oid_of(data) and parts[0].read_bytes(oid) == data
    assert f.fetch(parse_uri(http_files.url("/a.bin"))) == oid  # 304: no body again
    assert http_files.requests["/a.bin"] == 2 and http_files.sent["/a.bin"] == len(data)
    [memo] = parts[1].keys(keys.fetched("*"))
    assert 0 < parts[1].ttl(memo) <= 600
    # the same bytes behind another URL: one content id, one object
    assert f.fetch(parse_uri(http_files.url("/same.bin"))) == oid
    http_files.files["/a.bin"] = b"changed"
    assert f.fetch(parse_uri(http_files.url("/a.bin"))) == oid_of(b"changed")


def test_redirects_followed_bounded_and_errors_named(parts, http_files: HTTPFiles) -> None:  # type: ignore[no-untyped-def]
    http_files.files["/real"] = b"real"
    http_files.redirects["/hop"] = "/real"
    http_files.redirects["/loop"] = "/loop"
    f = fetcher(parts, redirects=3)
    assert f.fetch(parse_uri(http_files.url("/hop"))) == oid_of(b"real")
    with pytest.raises(FetchFailed, match="too many redirects"):
        f.fetch(parse_uri(http_files.url("/loop")))
    assert http_files.requests["/loop"] == 4  # the first and 3 redirects
    secret = http_files.url("/nope").replace("http://", "http://joe:hunter2@") + "?sig=abc"
    with pytest.raises(FetchFailed) as err:
        f.fetch(parse_uri(secret))
    assert "HTTP 404" in str(err.value) and "/nope" in str(err.value)
    assert "hunter2" not in str(err.value) and "abc" not in str(err.value)


def test_a_503_that_clears_is_retried_and_auth_sent(parts, http_files: HTTPFiles) -> None:  # type: ignore[no-untyped-def]
    http_files.files["/flaky"] = b"at last"
    http_files.fail_first["/flaky"] = 2
    f = fetcher(parts)
    assert f.fetch(parse_uri(http_files.url("/flaky"))) == oid_of(b"at last")
    assert http_files.requests["/flaky"] == 3
    http_files.files["/down"] = b"x"
    http_files.fail_first["/down"] = 100
    with pytest.raises(FetchFailed, match="HTTP 503"):
        f.fetch(parse_uri(http_files.url("/down")))
    http_files.files["/private"] = b"mine"
    http_files.auth["/private"] = "joe:s3cret"
    url = http_files.url("/private").replace("http://", "http://joe:s3cret@")
    assert f.fetch(parse_uri(url)) == oid_of(b"mine")
    # a credentialed URI's memo is keyed: its hash says nothing of the password
    assert all(keys.fetched(hashlib.sha256(url.encode()).hexdigest()) != k
               for k in parts[1].keys(keys.fetched("*")))  # fmt: skip


def test_a_slow_body_streams_and_a_read_timeout_fails(parts, http_files: HTTPFiles) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(640 * 1024)
    http_files.files["/slow"] = data
    http_files.slow["/slow"] = 0.05  # ten chunks, 0.5 s in all, each read well in time
    assert fetcher(parts).fetch(parse_uri(http_files.url("/slow"))) == oid_of(data)
    http_files.files["/slower"] = data[::-1]
    http_files.slow["/slower"] = 1.0  # a stalled body: each read times out
    with pytest.raises(FetchFailed, match="after 2 attempts"):
        fetcher(parts, timeout=0.3, attempts=2).fetch(parse_uri(http_files.url("/slower")))
    assert http_files.started["/slower"] == 2
    tmp = parts[0].local.tmp_dir
    assert list(tmp.iterdir()) == []  # no partial object kept


def test_a_pin_is_checked_and_skips_the_fetch(parts, http_files: HTTPFiles) -> None:  # type: ignore[no-untyped-def]
    http_files.files["/p"] = b"pinned"
    f = fetcher(parts)
    wrong = http_files.url("/p") + "#sha256=" + "0" * 64
    with pytest.raises(FetchFailed, match="not the pinned"):
        f.fetch(parse_uri(wrong))
    right = http_files.url("/p") + "#sha256=" + hashlib.sha256(b"pinned").hexdigest()
    assert f.fetch(parse_uri(right)) == oid_of(b"pinned")
    n = http_files.requests["/p"]
    assert f.fetch(parse_uri(right)) == oid_of(b"pinned")
    assert http_files.requests["/p"] == n  # held: not asked again


def test_an_s3_uri_is_fetched_and_remembered_by_etag(parts, s3_server: MotoServer) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_server.create_bucket(f"in-{os.getpid()}-{new_db()}")
    try:
        s3_server.client().put_object(Bucket=bucket, Key="d/x.txt", Body=b"fig\n")
        f = fetcher(parts, s3=UserS3(endpoint_url=s3_server.endpoint_url))
        uri = parse_uri(f"s3://{bucket}/d/x.txt")
        assert f.fetch(uri) == oid_of(b"fig\n")
        parts[0].local.delete(parts[0].key.name_of(oid_of(b"fig\n")))
        assert f.fetch(uri) == oid_of(b"fig\n")  # gone from the store: fetched again
        with pytest.raises(FetchFailed, match="404"):
            f.fetch(parse_uri(f"s3://{bucket}/missing"))
    finally:
        s3_server.remove_bucket(bucket)


def test_fetched_for_a_job_the_bytes_come_first_and_the_sealed_copy_behind(  # type: ignore[no-untyped-def]
    parts, http_files: HTTPFiles, tmp_path: Path
) -> None:
    data = os.urandom(3 * (1 << 20) + 12345)  # several chunks of the read-ahead ring
    http_files.files["/big.bin"] = data
    f = fetcher(parts)
    uri = parse_uri(http_files.url("/big.bin"))
    oid, sealing = f.fetch_to(uri, tmp_path / "in.bin")
    assert oid == oid_of(data) and (tmp_path / "in.bin").read_bytes() == data
    assert sealing is not None
    (tmp_path / "in.bin").unlink()  # the job is over before its input was sealed: no matter
    sealing.result(timeout=30)
    assert parts[0].read_bytes(oid) == data
    assert parts[1].keys(keys.fetched("*"))  # remembered once the copy is in the store
    again, none = f.fetch_to(uri, tmp_path / "again.bin")  # 304: the store holds it
    assert (again, none) == (oid, None) and not (tmp_path / "again.bin").exists()
    assert http_files.sent["/big.bin"] == len(data)


def test_a_body_cut_short_is_fetched_again_and_never_left_half(  # type: ignore[no-untyped-def]
    parts, http_files: HTTPFiles, tmp_path: Path
) -> None:
    data = os.urandom(2 * (1 << 20))
    http_files.files["/cut.bin"] = data
    http_files.cut["/cut.bin"] = 1
    f = fetcher(parts)
    dest = tmp_path / "cut.bin"
    oid, sealing = f.fetch_to(parse_uri(http_files.url("/cut.bin")), dest)
    assert oid == oid_of(data) and dest.read_bytes() == data and sealing is not None
    assert http_files.started["/cut.bin"] == 2
    sealing.result(timeout=30)
    http_files.files["/always.bin"] = data
    http_files.cut["/always.bin"] = 99
    with pytest.raises(FetchFailed, match="after 3 attempts"):
        f.fetch_to(parse_uri(http_files.url("/always.bin")), tmp_path / "always.bin")
    assert not (tmp_path / "always.bin").exists()
    with pytest.raises(FetchFailed, match="after 3 attempts"):
        f.fetch(parse_uri(http_files.url("/always.bin")))  # into the store: nothing half kept
    assert list((tmp_path / "cache").rglob("seal-*")) == []


def test_a_gzipped_body_is_stored_as_its_bytes(
    parts, http_files: HTTPFiles, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = b"offload " * 100_000
    http_files.files["/text"] = data
    http_files.gzipped.add("/text")
    oid, sealing = fetcher(parts).fetch_to(parse_uri(http_files.url("/text")), tmp_path / "t")
    assert oid == oid_of(data) and (tmp_path / "t").read_bytes() == data
    assert sealing is not None
    sealing.result(timeout=30)
