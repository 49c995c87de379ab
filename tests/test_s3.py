"""S3BlobStore against a real S3-compatible server process (moto's server mode,
tests/s3server.py), beyond the BlobStore contract (test_store_conformance.py): key layout,
listing, conditional writes, multipart, errors, outages, broken streams, configuration."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from offload.cache.factory import remote_tier
from offload.cache.s3 import MiB, S3BlobStore, S3Config, S3Unavailable
from offload.errors import CacheError
from tests.conftest import bare_settings
from tests.s3server import MotoServer


def blob_name(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def store(s3_bucket: S3Config) -> S3BlobStore:
    return S3BlobStore(s3_bucket)


def test_key_layout_and_empty_blob(
    store: S3BlobStore, s3_server: MotoServer, tmp_path: Path
) -> None:
    name = blob_name("empty")
    assert store.put(name, write(tmp_path / "e", b""))
    head = s3_server.client().head_object(
        Bucket=store.config.bucket, Key=f"offload/{name[:2]}/{name}"
    )
    assert head["ContentLength"] == 0
    store.get(name, tmp_path / "got")
    assert (tmp_path / "got").read_bytes() == b""


def test_names_paginates_and_ignores_foreign_keys(
    s3_bucket: S3Config, s3_server: MotoServer, tmp_path: Path
) -> None:
    store = S3BlobStore(replace(s3_bucket, list_page_size=7))
    src = write(tmp_path / "src", b"x")
    expected = {blob_name(str(i)) for i in range(40)}  # six pages of 7
    client = s3_server.client()
    for name in expected:
        client.put_object(Bucket=store.config.bucket, Key=store.key(name), Body=b"x")
    for key in ("offload/readme.txt", "offload/zz/" + blob_name("misplaced"), "other/x"):
        client.put_object(Bucket=store.config.bucket, Key=key, Body=b"x")
    store.put(blob_name("via-put"), src)  # also writes the conditional-write probe object
    assert set(store.names()) == expected | {blob_name("via-put")}


def test_moto_enforces_conditional_writes(store: S3BlobStore, tmp_path: Path) -> None:
    store.put(blob_name("probe"), write(tmp_path / "a", b"a"))
    assert store.conditional_writes is True  # the probe found If-None-Match honoured


def test_head_fallback_when_conditional_writes_are_off(s3_bucket: S3Config, tmp_path: Path) -> None:
    store = S3BlobStore(replace(s3_bucket, conditional_writes=False))
    name = blob_name("fallback")
    assert store.put(name, write(tmp_path / "a", b"first")) is True
    assert store.put(name, write(tmp_path / "b", b"second")) is False
    store.get(name, tmp_path / "got")
    assert (tmp_path / "got").read_bytes() == b"first"


def test_multipart_64_mib(s3_bucket: S3Config, s3_server: MotoServer, tmp_path: Path) -> None:
    store = S3BlobStore(s3_bucket)  # the default config: 64 MiB threshold, 16 MiB parts
    name = blob_name("big")
    src = tmp_path / "big"
    with src.open("wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    assert store.put(name, src) is True
    client = s3_server.client()
    head = client.head_object(Bucket=s3_bucket.bucket, Key=store.key(name))
    assert head["ETag"].strip('"').endswith("-4")  # went up as four parts
    assert head["ContentLength"] == 64 * MiB
    # A second multipart upload of the same name: the completion honours If-None-Match.
    small_parts = S3BlobStore(replace(s3_bucket, multipart_threshold=5 * MiB, part_size=5 * MiB))
    assert small_parts.put(name, write(tmp_path / "other", os.urandom(12 * MiB))) is False
    assert client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", []) == []
    store.get(name, tmp_path / "got")
    assert _digest(tmp_path / "got") == _digest(src)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def test_missing_bucket_is_a_clear_error(s3_server: MotoServer, tmp_path: Path) -> None:
    store = S3BlobStore(
        S3Config(bucket="offload-no-such-bucket", endpoint_url=s3_server.endpoint_url)
    )
    src = write(tmp_path / "src", b"x")
    with pytest.raises(CacheError, match="does not exist") as err:
        store.put(blob_name("x"), src)
    assert not isinstance(err.value, S3Unavailable)
    with pytest.raises(CacheError, match="does not exist"):
        list(store.names())


def test_outage_then_recovery(s3_server: MotoServer, s3_bucket: S3Config, tmp_path: Path) -> None:
    store = S3BlobStore(s3_bucket)
    src = write(tmp_path / "src", b"payload")
    assert store.put(blob_name("before"), src)

    s3_server.stop()
    try:
        calls = {
            "put": lambda: store.put(blob_name("during"), src),
            "get": lambda: store.get(blob_name("before"), tmp_path / "dest"),
            "has": lambda: store.has(blob_name("before")),
            "delete": lambda: store.delete(blob_name("before")),
            "names": lambda: list(store.names()),
        }
        for what, call in calls.items():
            start = time.monotonic()
            with pytest.raises(S3Unavailable, match="unreachable"):
                call()
            elapsed = time.monotonic() - start
            assert elapsed < 6, f"{what} took {elapsed:.1f}s to report the outage"
        assert not (tmp_path / "dest").exists()
    finally:
        s3_server.start()

    # moto lost its state on restart: the bucket is back (re-created by the fixture), empty.
    assert store.put(blob_name("after"), src) is True
    store.get(blob_name("after"), tmp_path / "dest")
    assert (tmp_path / "dest").read_bytes() == b"payload"
    assert set(store.names()) == {blob_name("after")}


def test_unreachable_endpoint_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3BlobStore(S3Config(bucket="nobody", endpoint_url=f"http://127.0.0.1:{port}"))
    start = time.monotonic()
    with pytest.raises(S3Unavailable):
        store.put(blob_name("x"), write(tmp_path / "src", b"x"))
    assert time.monotonic() - start < 6


def test_the_remote_tier_is_built_from_settings() -> None:
    settings = bare_settings(
        s3_bucket="b-1",
        s3_prefix="team",
        s3_endpoint_url="http://127.0.0.1:9",
        s3_region="eu-west-1",
    )
    store = remote_tier(settings)
    assert isinstance(store, S3BlobStore)
    assert store.config == S3Config(
        bucket="b-1", prefix="team/", endpoint_url="http://127.0.0.1:9", region="eu-west-1"
    )
    assert store.key("ab" + "0" * 62) == "team/ab/ab" + "0" * 62
    assert remote_tier(bare_settings(s3_bucket=None)) is None


class CuttingProxy:
    """A loopback TCP proxy to the S3 server that drops a connection once it has relayed
    ``cut_after`` response bytes, ``cuts`` times: a download stream breaking mid-way."""

    def __init__(self, upstream_port: int, cut_after: int, cuts: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        relayed = 0
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                relayed += len(data)
                if response and relayed > self.cut_after:
                    with self.lock:
                        cut = self.cuts_left > 0
                        self.cuts_left -= cut
                    if cut:
                        break
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def big_blob(store: S3BlobStore, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    name = blob_name("streamed")
    src = write(tmp_path / "src", os.urandom(24 * MiB))
    assert store.put(name, src)
    yield name, src


def test_get_resumes_a_broken_stream(
    s3_bucket: S3Config, s3_server: MotoServer, big_blob: tuple[str, Path], tmp_path: Path
) -> None:
    name, src = big_blob
    proxy = CuttingProxy(s3_server.port, cut_after=3 * MiB, cuts=2)
    try:
        via = S3BlobStore(replace(s3_bucket, endpoint_url=f"http://127.0.0.1:{proxy.port}"))
        via.get(name, tmp_path / "got")
    finally:
        proxy.close()
    assert proxy.cuts_left == 0  # both cuts happened, and the download resumed twice
    assert (tmp_path / "got").read_bytes() == src.read_bytes()


def test_get_gives_up_on_a_stream_that_keeps_breaking(
    s3_bucket: S3Config, s3_server: MotoServer, big_blob: tuple[str, Path], tmp_path: Path
) -> None:
    name, _ = big_blob
    (tmp_path / "out").mkdir()
    proxy = CuttingProxy(s3_server.port, cut_after=3 * MiB, cuts=1000)
    try:
        via = S3BlobStore(replace(s3_bucket, endpoint_url=f"http://127.0.0.1:{proxy.port}"))
        with pytest.raises(S3Unavailable):
            via.get(name, tmp_path / "out" / "got")
    finally:
        proxy.close()
    assert list((tmp_path / "out").iterdir()) == []  # no partial file left
