"""One conformance suite per storage seam, run against every implementation.

``BlobContract`` (the :class:`BlobStore` seam): LocalBlobStore, and S3BlobStore on a real
S3-compatible server (moto, on loopback).

``StoreContract`` (the :class:`Store` seam): SealedStore over the local cache alone; over S3
(every read comes from the bucket: the local copy is dropped first); and tiered, local + S3.
The damaged-object matrix (flip, truncate, append, empty, swap) runs against each, damaging
the copy its reads come from: a damaged object is never served; the tiered store catches a
damaged local copy, quarantines it and fetches a good one from S3.

Implementation-specific behaviour stays in test_localblobs.py, test_s3.py and test_store.py.
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
from offload.cache.store import CHUNK
from offload.errors import CacheError, ConfigError, IntegrityError, ObjectNotFound

NAME_A = "a" * 64
NAME_B = "b" * 64
BAD_NAMES = ["", "abc", "A" * 64, "g" * 64, "a" * 63, "a" * 65, "../" + "a" * 61, "a" * 62 + "/x"]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- the BlobStore seam ------------------------------------------------------------------------


class BlobContract:
    @pytest.fixture
    def blobs(self, tmp_path: Path) -> BlobStore:
        raise NotImplementedError

    def test_put_get_round_trip(self, blobs: BlobStore, tmp_path: Path) -> None:
        data = os.urandom(300_000)
        assert not blobs.has(NAME_A)
        assert blobs.put(NAME_A, write(tmp_path / "src", data)) is True
        assert blobs.has(NAME_A)
        out = tmp_path / "out"
        out.mkdir()
        blobs.get(NAME_A, out / "dest")
        assert (out / "dest").read_bytes() == data
        assert os.listdir(out) == ["dest"]  # no temporary file left behind

    def test_empty_blob(self, blobs: BlobStore, tmp_path: Path) -> None:
        assert blobs.put(NAME_A, write(tmp_path / "src", b""))
        blobs.get(NAME_A, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == b""

    def test_write_once_keeps_the_first_bytes(self, blobs: BlobStore, tmp_path: Path) -> None:
        assert blobs.put(NAME_A, write(tmp_path / "a", b"first")) is True
        assert blobs.put(NAME_A, write(tmp_path / "b", b"second, longer")) is False
        blobs.get(NAME_A, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == b"first"

    def test_absent_blob_is_object_not_found(self, blobs: BlobStore, tmp_path: Path) -> None:
        out = tmp_path / "out"
        out.mkdir()
        assert not blobs.has(NAME_B)
        with pytest.raises(ObjectNotFound) as err:
            blobs.get(NAME_B, out / "dest")
        assert err.value.object_id == NAME_B
        assert os.listdir(out) == []  # no partial destination

    def test_names_and_delete(self, blobs: BlobStore, tmp_path: Path) -> None:
        assert list(blobs.names()) == []
        blobs.put(NAME_A, write(tmp_path / "a", b"a"))
        blobs.put(NAME_B, write(tmp_path / "b", b"b"))
        assert sorted(blobs.names()) == [NAME_A, NAME_B]
        blobs.delete(NAME_A)
        blobs.delete(NAME_A)  # deleting what is gone is fine
        assert not blobs.has(NAME_A)
        assert list(blobs.names()) == [NAME_B]

    @pytest.mark.parametrize("bad", BAD_NAMES)
    def test_malformed_names_are_refused(self, blobs: BlobStore, tmp_path: Path, bad: str) -> None:
        src = write(tmp_path / "src", b"x")
        for call in (
            lambda: blobs.put(bad, src),
            lambda: blobs.get(bad, tmp_path / "out"),
            lambda: blobs.has(bad),
            lambda: blobs.delete(bad),
        ):
            with pytest.raises(CacheError, match="malformed blob name"):
                call()
        assert list(blobs.names()) == []
        assert not (tmp_path / "out").exists()

    def test_put_of_a_missing_file_is_a_cache_error(self, blobs: BlobStore, tmp_path: Path) -> None:
        with pytest.raises(CacheError) as err:
            blobs.put(NAME_A, tmp_path / "nope")
        assert str(tmp_path / "nope") in str(err.value)
        assert not blobs.has(NAME_A)


class TestLocalBlobs(BlobContract):
    @pytest.fixture
    def blobs(self, tmp_path: Path) -> BlobStore:
        return LocalBlobStore(tmp_path / "cache")


class TestS3Blobs(BlobContract):
    @pytest.fixture
    def blobs(self, s3_bucket: S3Config) -> BlobStore:
        return S3BlobStore(s3_bucket)


# -- the Store seam ----------------------------------------------------------------------------

MALFORMED_IDS = [
    "sha256:abc",
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 64 + "\n",
    "md5:" + "a" * 32,
    "a" * 64,
    "",
    "sha256:../../../etc/passwd",
    "../" + "a" * 64,
]
DAMAGE = ["flip", "truncate", "append", "empty", "swap"]


def damaged(raw: bytes, how: str, other: bytes) -> bytes:
    """``raw`` changed as a bad disk, a bad upload or a mix-up would change it."""
    data = bytearray(raw)
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    elif how == "truncate":
        del data[-1]
    elif how == "append":
        data += b"\0"
    elif how == "empty":
        data = bytearray()
    elif how == "swap":  # another object's intact envelope under this object's name
        data = bytearray(other)
    return bytes(data)


class StoreContract:
    key = ClusterKey.generate()
    heals = False
    """Whether a damaged copy is caught and replaced from another tier (else: refused)."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> SealedStore:
        raise NotImplementedError

    def before_read(self, store: SealedStore, oid: str) -> None:
        """Make the next read come from the tier this variant tests."""

    def damage(self, store: SealedStore, oid: str, how: str, other: str, tmp: Path) -> None:
        """Damage the copy of ``oid`` that reads come from (``other``: a second object)."""
        raise NotImplementedError

    def read(self, store: SealedStore, oid: str) -> bytes:
        self.before_read(store, oid)
        return store.read_bytes(oid)

    def tiers(self, store: SealedStore) -> list[BlobStore]:
        return [store.local] + ([store.remote] if store.remote is not None else [])

    def test_ids_are_the_sha256_of_the_plaintext(self, store: SealedStore, tmp_path: Path) -> None:
        data = b"pear\napple\nfig\n"
        oid = store.put_bytes(data)
        assert oid == sha(data)
        assert store.put_file(write(tmp_path / "words.txt", data)) == oid
        assert store.put_stream(io.BytesIO(data)) == oid
        assert store.has(oid)
        assert self.read(store, oid) == data

    @pytest.mark.parametrize("size", [0, 1, 2 * CHUNK + 123, 5 * 1024 * 1024 + 7])
    def test_export_writes_the_exact_bytes(
        self, store: SealedStore, tmp_path: Path, size: int
    ) -> None:
        data = os.urandom(size)
        oid = store.put_file(write(tmp_path / "src", data))
        out = tmp_path / "out"
        out.mkdir()
        self.before_read(store, oid)
        store.export(oid, out / "blob.bin")
        assert (out / "blob.bin").read_bytes() == data
        assert os.listdir(out) == ["blob.bin"]  # no temporary file left

    def test_same_content_is_stored_once(self, store: SealedStore) -> None:
        assert store.put_bytes(b"same") == store.put_stream(io.BytesIO(b"same"))
        for tier in self.tiers(store):
            assert len(list(tier.names())) == 1

    def test_stored_bytes_are_ciphertext_under_a_keyed_name(
        self, store: SealedStore, tmp_path: Path
    ) -> None:
        data = b"secret plaintext " * 100
        oid = store.put_bytes(data)
        name = self.key.name_of(oid)
        assert oid.removeprefix("sha256:") != name
        for i, tier in enumerate(self.tiers(store)):
            assert list(tier.names()) == [name]
            tier.get(name, tmp_path / f"raw{i}")
            assert data[:17] not in (tmp_path / f"raw{i}").read_bytes()

    def test_has_and_delete(self, store: SealedStore) -> None:
        a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
        self.before_read(store, a)
        assert store.has(a) and store.has(b)
        store.delete(a)
        assert not store.has(a) and store.has(b)
        store.delete(a)  # deleting what is gone is fine
        store.delete(sha(b"never stored"))
        with pytest.raises(ObjectNotFound):
            store.read_bytes(a)
        assert self.read(store, b) == b"b"

    def test_an_absent_object_is_object_not_found(self, store: SealedStore, tmp_path: Path) -> None:
        oid = sha(b"never stored")
        assert not store.has(oid)
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(ObjectNotFound) as info:
            store.export(oid, out / "nothing")
        assert info.value.object_id == oid
        assert str(info.value) == f"object {oid} not found"
        assert os.listdir(out) == []

    @pytest.mark.parametrize("oid", MALFORMED_IDS)
    def test_a_malformed_id_is_a_cache_error(
        self, store: SealedStore, tmp_path: Path, oid: str
    ) -> None:
        for call in (
            lambda: store.has(oid),
            lambda: store.export(oid, tmp_path / "x"),
            lambda: store.delete(oid),
            lambda: store.read_bytes(oid),
        ):
            with pytest.raises(CacheError) as info:
                call()
            assert not isinstance(info.value, ObjectNotFound | IntegrityError)
            assert "malformed object id" in str(info.value)
            assert "sha256:<64 hex digits>" in str(info.value)
        assert not (tmp_path / "x").exists()

    @pytest.mark.parametrize("how", DAMAGE)
    def test_a_damaged_object_is_never_served(
        self, store: SealedStore, tmp_path: Path, how: str
    ) -> None:
        data = b"precious bytes " * 1000
        oid = store.put_bytes(data)
        other = store.put_bytes(b"another object " * 900)
        self.damage(store, oid, how, other, tmp_path)
        out = tmp_path / "out"
        out.mkdir()
        (out / "keep.txt").write_bytes(b"earlier content")
        if self.heals:
            store.export(oid, out / "result.bin")
            assert (out / "result.bin").read_bytes() == data
            assert local_of(store).quarantined() == [self.key.name_of(oid)]
            assert store.read_bytes(oid) == data  # the good copy is kept locally
            return
        with pytest.raises(IntegrityError) as info:
            store.export(oid, out / "result.bin")
        assert oid in str(info.value) and "damaged" in str(info.value)
        with pytest.raises((IntegrityError, ObjectNotFound)):  # and never served later
            store.export(oid, out / "keep.txt")
        assert sorted(os.listdir(out)) == ["keep.txt"]  # no partial destination, no temp file
        assert (out / "keep.txt").read_bytes() == b"earlier content"
        assert self.read(store, other) == b"another object " * 900


def local_of(store: SealedStore) -> LocalBlobStore:
    assert isinstance(store.local, LocalBlobStore)
    return store.local


def damage_local(store: SealedStore, oid: str, how: str, other: str) -> None:
    local = local_of(store)
    path, other_path = local.path(store.key.name_of(oid)), local.path(store.key.name_of(other))
    path.chmod(0o644)
    path.write_bytes(damaged(path.read_bytes(), how, other_path.read_bytes()))
    path.chmod(0o444)


def damage_remote(store: SealedStore, oid: str, how: str, other: str, tmp: Path) -> None:
    remote = store.remote
    assert remote is not None
    name = store.key.name_of(oid)
    remote.get(name, tmp / "raw")
    remote.get(store.key.name_of(other), tmp / "other-raw")
    write(tmp / "bad", damaged((tmp / "raw").read_bytes(), how, (tmp / "other-raw").read_bytes()))
    remote.delete(name)
    remote.put(name, tmp / "bad")
    for f in ("raw", "other-raw", "bad"):
        (tmp / f).unlink()


class TestSealedLocal(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> SealedStore:
        return SealedStore(self.key, LocalBlobStore(tmp_path / "cache"))

    def damage(self, store: SealedStore, oid: str, how: str, other: str, tmp: Path) -> None:
        damage_local(store, oid, how, other)

    def test_a_damaged_object_is_quarantined(self, store: SealedStore, tmp_path: Path) -> None:
        oid = store.put_bytes(b"x" * 5000)
        self.damage(store, oid, "flip", store.put_bytes(b"y"), tmp_path)
        with pytest.raises(IntegrityError, match="quarantined"):
            store.read_bytes(oid)
        assert local_of(store).quarantined() == [self.key.name_of(oid)]
        with pytest.raises(ObjectNotFound):
            store.read_bytes(oid)


class TestSealedOverS3(StoreContract):
    """Reads come from S3: the local copy is dropped before each one."""

    @pytest.fixture
    def store(self, tmp_path: Path, s3_bucket: S3Config) -> SealedStore:
        return SealedStore(self.key, LocalBlobStore(tmp_path / "cache"), S3BlobStore(s3_bucket))

    def before_read(self, store: SealedStore, oid: str) -> None:
        store.local.delete(store.key.name_of(oid))

    def damage(self, store: SealedStore, oid: str, how: str, other: str, tmp: Path) -> None:
        damage_remote(store, oid, how, other, tmp)
        self.before_read(store, oid)

    def test_a_damaged_remote_copy_is_not_kept_locally(
        self, store: SealedStore, tmp_path: Path
    ) -> None:
        oid = store.put_bytes(b"z" * 5000)
        self.damage(store, oid, "flip", store.put_bytes(b"y"), tmp_path)
        with pytest.raises(IntegrityError, match="shared store"):
            store.read_bytes(oid)
        assert not store.local.has(self.key.name_of(oid))
        assert local_of(store).quarantined() == []


class TestTiered(StoreContract):
    """Local + S3, damage in the local copy: caught, quarantined, fetched again from S3."""

    heals = True

    @pytest.fixture
    def store(self, tmp_path: Path, s3_bucket: S3Config) -> SealedStore:
        return SealedStore(self.key, LocalBlobStore(tmp_path / "cache"), S3BlobStore(s3_bucket))

    def damage(self, store: SealedStore, oid: str, how: str, other: str, tmp: Path) -> None:
        damage_local(store, oid, how, other)

    def test_damaged_in_both_tiers_is_refused(self, store: SealedStore, tmp_path: Path) -> None:
        oid = store.put_bytes(b"w" * 5000)
        other = store.put_bytes(b"v" * 10)
        damage_local(store, oid, "flip", other)
        damage_remote(store, oid, "truncate", other, tmp_path)
        with pytest.raises(IntegrityError, match="shared store"):
            store.read_bytes(oid)
        assert local_of(store).quarantined() == [self.key.name_of(oid)]
        assert not store.local.has(self.key.name_of(oid))

    def test_writes_reach_s3_and_reads_fall_back_to_it(self, store: SealedStore) -> None:
        oid = store.put_bytes(b"shared")
        name = self.key.name_of(oid)
        assert store.remote is not None and store.remote.has(name)
        store.local.delete(name)
        assert store.read_bytes(oid) == b"shared"
        assert store.local.has(name)  # read-through keeps a local copy

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
