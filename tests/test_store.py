"""The sealed content store on a node's cache, beyond the Store contract
(test_store_conformance.py): any bytes round-trip, objects on disk written once and
read-only, id checks — and `offload put/get`."""

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
from offload.cache.store import check_id
from offload.errors import CacheError

from .conftest import Platform

KEY = ClusterKey.generate()
ABSENT_ID = "sha256:" + "0123456789abcdef" * 4


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> SealedStore:
    return SealedStore(KEY, LocalBlobStore(tmp_path / "store"))


@given(st.binary(max_size=4096))
def test_any_bytes_round_trip(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    store = SealedStore(KEY, LocalBlobStore(tmp_path_factory.mktemp("prop")))
    oid = store.put_bytes(data)
    assert oid == sha(data)
    assert store.read_bytes(oid) == data


def object_files(store: SealedStore) -> list[Path]:
    assert isinstance(store.local, LocalBlobStore)
    return sorted(p for p in store.local.blobs_dir.rglob("*") if p.is_file())


def test_objects_are_written_once_and_read_only(store: SealedStore) -> None:
    data = b"the same content"
    oid = store.put_bytes(data)
    [path] = object_files(store)
    first = path.stat()
    assert store.put_bytes(data) == oid
    assert object_files(store) == [path]
    again = path.stat()
    assert again.st_ino == first.st_ino
    assert not stat.S_IMODE(again.st_mode) & 0o222  # read-only on disk
    assert not any(store.local.tmp_dir.iterdir())


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
