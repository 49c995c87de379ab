"""LocalBlobStore on the real filesystem, beyond the BlobStore contract
(test_store_conformance.py): streaming, owned puts, atomicity, LRU budget, pins, holds,
quarantine, several processes on one folder."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.cache import localblobs
from offload.cache.localblobs import CacheStats, LocalBlobStore
from offload.errors import CacheError, ObjectNotFound

SIZE = 1000


def nm(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


A, B, C, D = nm("a"), nm("b"), nm("c"), nm("d")


def src_file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / f"src-{hashlib.sha256(data).hexdigest()[:8]}"
    p.write_bytes(data)
    return p


def put(store: LocalBlobStore, name: str, data: bytes | None = None) -> bool:
    data = data if data is not None else name.encode()[:8] * (SIZE // 8)
    return store.put(name, src_file(store.root.parent, data))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalBlobStore]:
    with LocalBlobStore(tmp_path / "cache") as s:
        yield s


def test_layout_open_size_and_the_byte_total(store: LocalBlobStore) -> None:
    assert put(store, A, b"alpha")
    assert put(store, B, b"bravo!")
    assert store.path(A) == store.root / "blobs" / A[:2] / A
    assert store.size(B) == 6
    with store.open(B) as f:
        assert f.read() == b"bravo!"
    with store.inspect(B) as f:
        assert f.read() == b"bravo!"
    assert store.used() == 11
    store.delete(A)
    assert store.used() == 6


def test_an_absent_blob_cannot_be_opened_pinned_or_held(store: LocalBlobStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.open(A)
    with pytest.raises(ObjectNotFound):
        store.size(A)
    with pytest.raises(ObjectNotFound), store.pin(A):
        pass
    with pytest.raises(ObjectNotFound), store.inspect(A):
        pass
    with pytest.raises(ObjectNotFound):
        store.hold(A)


def test_put_owned_is_write_once_and_takes_its_file(store: LocalBlobStore) -> None:
    assert put(store, A, b"first")
    tmp = store.tmp_dir / "sealed"
    tmp.write_bytes(b"third")
    assert not store.put_owned(A, tmp)
    assert not tmp.exists()  # owned and discarded
    assert store.open(A).read() == b"first"
    assert store.used() == 5
    assert store.path(A).stat().st_mode & 0o222 == 0  # read-only on disk


def test_put_owned_links_without_copying(store: LocalBlobStore, tmp_path: Path) -> None:
    tmp = store.tmp_dir / "sealed"
    tmp.write_bytes(b"ciphertext")
    ino = tmp.stat().st_ino
    assert store.put_owned(A, tmp)
    assert not tmp.exists()
    assert store.path(A).stat().st_ino == ino
    assert store.path(A).stat().st_nlink == 1
    outside = tmp_path / "elsewhere"
    outside.write_bytes(b"x")
    with pytest.raises(CacheError, match="inside"):
        store.put_owned(B, outside)
    assert outside.exists() and not store.has(B)


@pytest.mark.parametrize(
    "bad", ["", "abc", A.upper(), A[:63], A + "0", f"../{A[3:]}", "g" * 64, A[:62] + "/x"]
)
def test_malformed_names_are_refused_by_the_local_tier_calls(
    store: LocalBlobStore, tmp_path: Path, bad: str
) -> None:
    calls = [
        lambda: store.put_owned(bad, store.tmp_dir / "x"),
        lambda: store.open(bad),
        lambda: store.size(bad),
        lambda: store.hold(bad),
        lambda: store.release(bad),
        lambda: store.quarantine(bad, "why"),
        lambda: store.pin(bad).__enter__(),
        lambda: store.inspect(bad).__enter__(),
    ]
    for call in calls:
        with pytest.raises(CacheError, match="malformed blob name"):
            call()
    assert list(store.names()) == []


def test_constructor_removes_crash_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    live = LocalBlobStore(root)
    (live.tmp_dir / "in-flight").write_bytes(b"live write")
    dead = root / "tmp" / "12345-dead"  # an instance that crashed: nobody holds its lock
    dead.mkdir()
    (dead / "put-partial").write_bytes(b"x" * 700)
    (root / "tmp" / "loose-partial").write_bytes(b"y" * 300)
    again = LocalBlobStore(root)
    assert not dead.exists()
    assert not (root / "tmp" / "loose-partial").exists()
    assert (live.tmp_dir / "in-flight").read_bytes() == b"live write"  # the live one is kept
    assert list(again.names()) == []
    again.close()
    live.close()
    assert list((root / "tmp").iterdir()) == []


def test_failing_copy_leaves_no_blob_and_no_temp(
    store: LocalBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_copy(src: Path, dst: Path) -> None:
        Path(dst).write_bytes(Path(src).read_bytes()[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(localblobs.shutil, "copyfile", half_copy)
    src = src_file(tmp_path, b"z" * 100)
    with pytest.raises(CacheError, match="No space left on device") as info:
        store.put(A, src)
    assert str(src) in str(info.value)
    assert not store.has(A)
    assert list(store.tmp_dir.iterdir()) == []
    assert store.used() == 0


def test_failing_get_leaves_no_partial_dest(
    store: LocalBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(store, A)

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(localblobs.shutil, "copyfileobj", broken)
    with pytest.raises(CacheError, match="Input/output error"):
        store.get(A, tmp_path / "out")
    assert not list(tmp_path.glob("*out*"))


def test_oserror_becomes_cache_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match=str(blocker)):
        LocalBlobStore(blocker / "cache")
    with pytest.raises(CacheError, match="budget"):
        LocalBlobStore(tmp_path / "c", budget=-1)


def test_lru_evicts_the_oldest(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "cache", budget=2 * SIZE)
    put(store, A)
    put(store, B)
    put(store, C)
    assert list(store.names()) == sorted([B, C])
    assert store.used() == 2 * SIZE


def test_lru_reads_refresh_recency(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "cache", budget=2 * SIZE)
    put(store, A)
    put(store, B)
    store.get(A, tmp_path / "out")
    put(store, C)
    assert list(store.names()) == sorted([A, C])
    with store.open(A):  # open also counts as a read
        pass
    put(store, D)
    assert list(store.names()) == sorted([A, D])


def test_a_blob_larger_than_the_budget_survives_its_own_put(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "cache", budget=SIZE // 2)
    put(store, A)
    assert store.has(A)  # kept so the caller can use it; the next put or gc removes it
    assert store.gc() == SIZE
    assert not store.has(A)


PIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from offload.cache.localblobs import LocalBlobStore
    store = LocalBlobStore(Path(sys.argv[1]))
    with store.pin(sys.argv[2]):
        print("pinned", flush=True)
        sys.stdin.read()
    """
)


def test_a_blob_pinned_by_another_process_is_never_evicted(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "cache", budget=SIZE)
    put(store, A)
    proc = subprocess.Popen(
        [sys.executable, "-c", PIN_SCRIPT, str(store.root), A],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "pinned\n"
        assert store.stats().pinned == 1
        put(store, B)  # over budget: A is oldest but pinned, B is the new one
        put(store, C)  # B goes, A stays
        assert list(store.names()) == sorted([A, C])
        assert store.gc() == SIZE  # still over budget: C goes, the pinned A stays
        assert list(store.names()) == [A]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    assert store.stats().pinned == 0
    put(store, D)
    assert list(store.names()) == [D]


def test_a_pin_in_this_process_blocks_eviction(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "cache", budget=SIZE)
    put(store, A)
    with store.pin(A):
        put(store, B)
        put(store, C)
        assert store.has(A)
        assert store.stats().pinned == 1
    assert store.gc() == SIZE
    assert list(store.names()) == [C]


def test_held_blobs_stay_until_released_across_restarts(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = LocalBlobStore(root, budget=SIZE)
    put(store, A)
    store.hold(A)
    put(store, B)
    put(store, C)
    assert list(store.names()) == sorted([A, C])
    store.close()
    again = LocalBlobStore(root, budget=SIZE)  # the hold is on disk
    assert list(again.held()) == [A]
    assert again.gc() == SIZE  # C goes; A is held
    assert again.has(A)
    assert again.stats().held == 1
    again.release(A)
    again.release(A)
    assert list(again.held()) == []
    put(again, D)
    assert list(again.names()) == [D]


def test_delete_drops_a_hold(store: LocalBlobStore) -> None:
    put(store, A)
    store.hold(A)
    store.delete(A)
    assert list(store.held()) == []


def test_quarantine_takes_a_blob_out_of_service(store: LocalBlobStore, tmp_path: Path) -> None:
    put(store, A, b"damaged envelope")
    put(store, B, b"fine")
    store.hold(A)
    store.quarantine(A, "final tag missing")
    assert not store.has(A)
    assert store.quarantined() == [A]
    assert (store.root / "quarantine" / f"{A}.why").read_text() == "final tag missing\n"
    assert (store.root / "quarantine" / A).read_bytes() == b"damaged envelope"
    assert list(store.held()) == []
    with pytest.raises(ObjectNotFound):
        store.get(A, tmp_path / "out")
    assert list(store.names()) == [B]
    assert store.used() == 4
    store.quarantine(A, "again")  # already gone: nothing to do
    assert put(store, A, b"good copy from the next tier")  # can be fetched again
    assert store.stats().quarantined == 1


def test_stats_and_gc(tmp_path: Path) -> None:
    budget = 3 * SIZE + 3
    store = LocalBlobStore(tmp_path / "cache", budget=budget)
    assert store.stats() == CacheStats(0, 0, budget, 0, 0, 0)
    for name in (A, B, C):
        put(store, name)
    store.hold(B)
    put(store, D, b"bad")
    store.quarantine(D, "bad tag")
    with store.pin(C):
        assert store.stats() == CacheStats(
            count=3, bytes=3 * SIZE, budget=budget, pinned=1, held=1, quarantined=1
        )
    dead = store.root / "tmp" / "999-dead"
    dead.mkdir()
    (dead / "fetch-x").write_bytes(b"q" * 123)
    (store.tmp_dir / "mine").write_bytes(b"m" * 50)  # this live instance's: kept
    assert store.gc() == 123
    assert (store.tmp_dir / "mine").exists()
    store.budget = 2 * SIZE
    assert store.gc() == SIZE  # A goes; B is held, C is the newest and fits
    assert list(store.names()) == sorted([B, C])
    assert store.used() == store.stats().bytes == 2 * SIZE


def test_the_byte_total_is_shared_and_recounted(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    one, two = LocalBlobStore(root), LocalBlobStore(root)
    put(one, A)
    put(two, B)
    assert one.used() == two.used() == 2 * SIZE
    (root / "state").write_text("garbage")
    assert one.used() == 2 * SIZE
    (root / "state").write_text("5")  # drifted, e.g. a crash between link and count
    assert LocalBlobStore(root).used() == 2 * SIZE  # the constructor recounts


def _close_in_child(store: LocalBlobStore) -> None:
    store.close()


def test_a_forked_child_closing_its_copy_keeps_the_parents_tmp(store: LocalBlobStore) -> None:
    proc = multiprocessing.get_context("fork").Process(target=_close_in_child, args=(store,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert store.tmp_dir.is_dir()
    assert LocalBlobStore(store.root).gc() == 0  # and still locked: not swept as dead
    assert store.tmp_dir.is_dir()


def _put_many(root: str, worker: int) -> None:
    store = LocalBlobStore(Path(root))
    for i in range(15):
        src = Path(root).parent / f"w{worker}-{i}"
        src.write_bytes(b"x" * (100 + i))
        store.put(nm(f"{i % 10}"), src)  # overlapping names between the workers


def test_concurrent_writers_keep_the_total_exact(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    LocalBlobStore(root).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_put_many, args=(str(root), w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = LocalBlobStore(root)
    assert len(list(store.names())) == 10
    assert sum(store.size(n) for n in store.names()) == store.stats().bytes
    assert list((root / "tmp").iterdir()) == [store.tmp_dir]
    assert os.listdir(store.tmp_dir) == []


def _open_many(root: str, rounds: int) -> None:
    for _ in range(rounds):
        LocalBlobStore(Path(root)).close()


def test_stores_opening_together_on_one_folder_do_not_trip_over_each_other(
    tmp_path: Path,
) -> None:
    # Nodes starting at once share a cache: each sweeps dead instances' temp folders while
    # the others create theirs. Seen once as "cannot create a temp folder … No such file".
    # spawn, not fork: forking a test process that runs threads can inherit a held lock
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_open_many, args=(str(tmp_path), 150)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.exitcode is None:
            p.kill()
    assert codes == [0, 0, 0, 0]
