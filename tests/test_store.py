"""The sealed content store on a node's cache: content addressing, write-once objects,
verified reads — and `offload put/get`."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.cache.keys import ClusterKey
from offload.cache.localblobs import LocalBlobStore
from offload.cache.sealed import SealedStore
from offload.cache.store import CHUNK, check_id
from offload.errors import CacheError, IntegrityError, ObjectNotFound

from .conftest import Platform

KEY = ClusterKey.generate()
ABSENT_ID = "sha256:" + "0123456789abcdef" * 4


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> SealedStore:
    return SealedStore(KEY, LocalBlobStore(tmp_path / "store"))


def object_files(store: SealedStore) -> list[Path]:
    return sorted(p for p in store.local.blobs_dir.rglob("*") if p.is_file())


def damage(path: Path, how: str) -> None:
    """Change a stored object's bytes in place (objects are read-only: chmod first)."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    elif how == "truncate":
        del data[-1]
    elif how == "append":
        data += b"\0"
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)


def test_ids_are_the_sha256_of_the_content(store: SealedStore, tmp_path: Path) -> None:
    data = b"pear\napple\nfig\n"
    oid = store.put_bytes(data)
    assert oid == sha(data)
    f = tmp_path / "words.txt"
    f.write_bytes(data)
    assert store.put_file(f) == oid
    assert store.put_bytes(b"") == sha(b"")


@given(st.binary(max_size=4096))
def test_any_bytes_round_trip(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    store = SealedStore(KEY, LocalBlobStore(tmp_path_factory.mktemp("prop")))
    oid = store.put_bytes(data)
    assert oid == sha(data)
    assert store.read_bytes(oid) == data


def test_has_ids_and_delete(store: SealedStore) -> None:
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    assert store.has(a) and store.has(b)
    assert not store.has(ABSENT_ID)
    assert len(object_files(store)) == 2
    store.delete(a)
    assert not store.has(a) and store.has(b)
    assert len(object_files(store)) == 1
    store.delete(a)  # deleting what is gone is fine
    store.delete(ABSENT_ID)
    with pytest.raises(ObjectNotFound):
        store.read_bytes(a)


def test_export_writes_the_exact_bytes(store: SealedStore, tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK + 123)  # more than one read chunk
    oid = store.put_bytes(data)
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    store.export(oid, dest)
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["blob.bin"]  # no temporary file left
    empty = tmp_path / "out" / "empty"
    store.export(store.put_bytes(b""), empty)
    assert empty.read_bytes() == b""


def test_objects_are_written_once(store: SealedStore) -> None:
    data = b"the same content"
    oid = store.put_bytes(data)
    [path] = object_files(store)
    first = path.stat()
    assert store.put_bytes(data) == oid
    assert store.put_bytes(bytearray(data)) == oid
    assert object_files(store) == [path]
    again = path.stat()
    assert again.st_ino == first.st_ino
    assert not stat.S_IMODE(again.st_mode) & 0o222  # read-only on disk
    assert not any(store.local.tmp_dir.iterdir())


@pytest.mark.parametrize("how", ["flip", "truncate", "append", "empty"])
def test_a_damaged_object_is_never_exported(store: SealedStore, tmp_path: Path, how: str) -> None:
    data = b"precious bytes " * 1000
    oid = store.put_bytes(data)
    [path] = object_files(store)
    damage(path, how)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "result.bin"
    with pytest.raises(IntegrityError) as info:
        store.export(oid, dest)
    assert oid in str(info.value) and "damaged" in str(info.value)
    assert isinstance(info.value, CacheError)
    assert os.listdir(out) == []  # no partial destination, no temporary file
    with pytest.raises(ObjectNotFound):  # quarantined: never served again
        store.read_bytes(oid)


def test_a_damaged_object_does_not_replace_an_existing_destination(
    store: SealedStore, tmp_path: Path
) -> None:
    oid = store.put_bytes(b"x" * 100)
    damage(object_files(store)[0], "flip")
    dest = tmp_path / "keep.txt"
    dest.write_bytes(b"earlier content")
    with pytest.raises(IntegrityError):
        store.export(oid, dest)
    assert dest.read_bytes() == b"earlier content"
    assert sorted(os.listdir(tmp_path)) == ["keep.txt", "store"]


def test_exporting_an_absent_object_is_object_not_found(store: SealedStore, tmp_path: Path) -> None:
    dest = tmp_path / "nothing"
    with pytest.raises(ObjectNotFound) as info:
        store.export(ABSENT_ID, dest)
    assert info.value.object_id == ABSENT_ID
    assert str(info.value) == f"object {ABSENT_ID} not found"
    assert not dest.exists()
    assert sorted(os.listdir(tmp_path)) == ["store"]


MALFORMED = [
    "sha256:abc",
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 64 + "\n",
    "md5:" + "a" * 32,
    "a" * 64,
    "",
    "sha256:../../../etc/passwd",
    "../" + "a" * 64,
]


@pytest.mark.parametrize("oid", MALFORMED)
def test_a_malformed_id_is_a_cache_error(store: SealedStore, tmp_path: Path, oid: str) -> None:
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


@given(st.text())
def test_only_sha256_ids_are_accepted(oid: str) -> None:
    if len(oid) == 71 and oid.startswith("sha256:") and set(oid[7:]) <= set("0123456789abcdef"):
        assert check_id(oid) == oid[7:]
    else:
        with pytest.raises(CacheError):
            check_id(oid)


# -- the command -----------------------------------------------------------------------------


def test_put_and_get_through_the_cli(private_platform: Platform, tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    data = os.urandom(300_000)
    src.write_bytes(data)
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")

    put = private_platform.cli("put", str(src), str(other))
    assert put.returncode == 0, put.stderr
    lines = [line.split() for line in put.stdout.splitlines()]
    assert lines == [[sha(data), str(src)], [sha(b"hello\n"), str(other)]]
    assert private_platform.client.store.has(sha(data))

    dest = tmp_path / "copy.jpg"
    get = private_platform.cli("get", sha(data), "-o", str(dest))
    assert get.returncode == 0, get.stderr
    assert get.stdout.strip() == str(dest)
    assert dest.read_bytes() == data

    missing = tmp_path / "missing.bin"
    unknown = private_platform.cli("get", ABSENT_ID, "-o", str(missing))
    assert unknown.returncode == 5, unknown.stderr
    assert f"object {ABSENT_ID} not found" in unknown.stderr
    assert "Traceback" not in unknown.stderr and unknown.stdout == ""
    assert not missing.exists()

    bad = private_platform.cli("get", "sha256:nope", "-o", str(missing))
    assert bad.returncode == 5, bad.stderr
    assert "malformed object id" in bad.stderr
    assert not missing.exists()

    no_file = private_platform.cli("put", str(tmp_path / "no-such-file"))
    assert no_file.returncode == 2
    assert "does not exist" in no_file.stderr
