"""One contract per storage interface, run against every implementation.

``BlobContract``: LocalBlobStore and S3BlobStore (a real moto server on loopback).
``ContentContract``: SealedStore over the local cache alone, and tiered (local + S3).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from offload.cache.blobs import BlobStore
from offload.cache.keys import ClusterKey
from offload.cache.localblobs import LocalBlobStore
from offload.cache.s3 import S3BlobStore, S3Config
from offload.cache.sealed import SealedStore
from offload.errors import CacheError, IntegrityError, ObjectNotFound

NAME_A = "a" * 64
NAME_B = "b" * 64


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BlobContract:
    @pytest.fixture
    def blobs(self, tmp_path: Path) -> BlobStore:
        raise NotImplementedError

    def write(self, tmp_path: Path, data: bytes, name: str = "src") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    def test_put_get_round_trip(self, blobs: BlobStore, tmp_path: Path) -> None:
        data = os.urandom(300_000)
        assert blobs.put(NAME_A, self.write(tmp_path, data))
        assert blobs.has(NAME_A)
        blobs.get(NAME_A, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == data

    def test_write_once(self, blobs: BlobStore, tmp_path: Path) -> None:
        assert blobs.put(NAME_A, self.write(tmp_path, b"first"))
        assert not blobs.put(NAME_A, self.write(tmp_path, b"second", "src2"))
        blobs.get(NAME_A, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == b"first"

    def test_absent_blob(self, blobs: BlobStore, tmp_path: Path) -> None:
        assert not blobs.has(NAME_B)
        with pytest.raises(ObjectNotFound):
            blobs.get(NAME_B, tmp_path / "out")
        assert not (tmp_path / "out").exists()

    def test_names_and_delete(self, blobs: BlobStore, tmp_path: Path) -> None:
        blobs.put(NAME_A, self.write(tmp_path, b"a"))
        blobs.put(NAME_B, self.write(tmp_path, b"b", "src2"))
        assert sorted(blobs.names()) == [NAME_A, NAME_B]
        blobs.delete(NAME_A)
        blobs.delete(NAME_A)  # idempotent
        assert sorted(blobs.names()) == [NAME_B]

    @pytest.mark.parametrize("bad", ["", "A" * 64, "../" + "a" * 61, "a" * 63])
    def test_malformed_names_are_refused(self, blobs: BlobStore, tmp_path: Path, bad: str) -> None:
        with pytest.raises(CacheError):
            blobs.put(bad, self.write(tmp_path, b"x"))


class TestLocalBlobs(BlobContract):
    @pytest.fixture
    def blobs(self, tmp_path: Path) -> BlobStore:
        return LocalBlobStore(tmp_path / "cache")


class TestS3Blobs(BlobContract):
    @pytest.fixture
    def blobs(self, s3_bucket: S3Config) -> BlobStore:
        return S3BlobStore(s3_bucket)


class ContentContract:
    key = ClusterKey.generate()

    @pytest.fixture
    def store(self, tmp_path: Path) -> SealedStore:
        raise NotImplementedError

    def test_ids_are_sha256_of_the_plaintext(self, store: SealedStore) -> None:
        data = b"hello offload\n"
        assert store.put_bytes(data) == sha(data)
        assert store.has(sha(data))
        assert store.read_bytes(sha(data)) == data

    def test_large_object_round_trip(self, store: SealedStore, tmp_path: Path) -> None:
        data = os.urandom(5 * 1024 * 1024 + 123)
        src = tmp_path / "big"
        src.write_bytes(data)
        oid = store.put_file(src)
        store.export(oid, tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data

    def test_stored_bytes_are_ciphertext_under_a_keyed_name(self, store: SealedStore) -> None:
        data = b"secret plaintext " * 100
        oid = store.put_stream(io.BytesIO(data))
        name = self.key.name_of(oid)
        assert oid.removeprefix("sha256:") != name
        raw = store.local.path(name).read_bytes()
        assert data[:17] not in raw

    def test_missing_object(self, store: SealedStore, tmp_path: Path) -> None:
        with pytest.raises(ObjectNotFound):
            store.export(sha(b"never stored"), tmp_path / "out")
        assert not (tmp_path / "out").exists()

    def test_same_content_is_stored_once(self, store: SealedStore) -> None:
        assert store.put_bytes(b"same") == store.put_bytes(b"same")
        assert len(list(store.local.names())) == 1


class TestSealedLocal(ContentContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> SealedStore:
        return SealedStore(self.key, LocalBlobStore(tmp_path / "cache"))

    def test_a_damaged_blob_is_quarantined_and_never_served(
        self, store: SealedStore, tmp_path: Path
    ) -> None:
        oid = store.put_bytes(b"x" * 5000)
        path = store.local.path(self.key.name_of(oid))
        path.chmod(0o644)
        raw = bytearray(path.read_bytes())
        raw[200] ^= 1
        path.write_bytes(bytes(raw))
        with pytest.raises(IntegrityError):
            store.export(oid, tmp_path / "out")
        assert not (tmp_path / "out").exists()
        assert store.local.quarantined() == [self.key.name_of(oid)]
        with pytest.raises(ObjectNotFound):
            store.export(oid, tmp_path / "out")


class TestTiered(ContentContract):
    @pytest.fixture
    def store(self, tmp_path: Path, s3_bucket: S3Config) -> SealedStore:
        return SealedStore(self.key, LocalBlobStore(tmp_path / "cache"), S3BlobStore(s3_bucket))

    def test_writes_reach_s3_and_reads_fall_back_to_it(
        self, store: SealedStore, tmp_path: Path
    ) -> None:
        oid = store.put_bytes(b"shared")
        name = self.key.name_of(oid)
        assert store.remote is not None and store.remote.has(name)
        store.local.delete(name)
        assert store.read_bytes(oid) == b"shared"
        assert store.local.has(name)  # read-through keeps a local copy

    def test_a_damaged_local_blob_is_replaced_from_s3(
        self, store: SealedStore, tmp_path: Path
    ) -> None:
        oid = store.put_bytes(b"y" * 5000)
        path = store.local.path(self.key.name_of(oid))
        path.chmod(0o644)
        path.write_bytes(path.read_bytes()[:-1])  # truncated
        assert store.read_bytes(oid) == b"y" * 5000
        assert store.local.quarantined() == [self.key.name_of(oid)]

    def test_a_damaged_remote_blob_is_neither_served_nor_kept(
        self, store: SealedStore, tmp_path: Path
    ) -> None:
        oid = store.put_bytes(b"z" * 5000)
        name = self.key.name_of(oid)
        assert store.remote is not None
        store.local.delete(name)
        bad = tmp_path / "bad"
        bad.write_bytes(b"\0" * 200)
        store.remote.delete(name)
        store.remote.put(name, bad)
        with pytest.raises(IntegrityError):
            store.export(oid, tmp_path / "out")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "cache"]  # no partial out
        assert not store.local.has(name)

    def test_two_nodes_sharing_a_bucket_see_each_others_objects(
        self, store: SealedStore, tmp_path: Path, s3_bucket: S3Config
    ) -> None:
        other = SealedStore(self.key, LocalBlobStore(tmp_path / "other"), S3BlobStore(s3_bucket))
        oid = store.put_bytes(b"from node one")
        assert other.has(oid)
        assert other.read_bytes(oid) == b"from node one"

    def test_a_wrong_key_is_a_clear_error(
        self, store: SealedStore, tmp_path: Path, s3_bucket: S3Config
    ) -> None:
        from offload.errors import ConfigError

        oid = store.put_bytes(b"sealed with key one")
        intruder = SealedStore(
            ClusterKey.generate(), LocalBlobStore(tmp_path / "intruder"), S3BlobStore(s3_bucket)
        )
        # another key names objects differently: the blob is simply not found under its key
        assert not intruder.has(oid)
        # and a blob read under the wrong key is refused as such, not served
        name = self.key.name_of(oid)
        wrong = SealedStore(ClusterKey.generate(), store.local)
        with pytest.raises(ConfigError, match="key"):
            wrong._export_local(name, oid, tmp_path / "out")
        assert not (tmp_path / "out").exists()
