"""LocalBlobStore: the node-local cache of opaque blobs, bounded by a byte budget.

Layout under ``root``, shared by every process of a node (a worker pool)::

    blobs/<2 hex>/<64 hex>   the blobs: read-only, written once (fsync, link, fsync folder)
    tmp/<pid>-<random>/      one folder per live store instance, flock'ed while it lives
    held/<64 hex>            persistent pins: blobs waiting to be uploaded elsewhere
    quarantine/<64 hex>      blobs that failed verification, beside ``<64 hex>.why``
    state                    the store-wide lock; holds the total bytes of ``blobs/``

Protocol between processes:

* Every change to the set of blobs (add, delete, quarantine, evict) happens under
  ``flock(state, LOCK_EX)`` and adjusts the total kept there, so a put reads one small file
  instead of rescanning the tree; the constructor and :meth:`LocalBlobStore.gc` recount it.
* Recency is a blob's mtime, set explicitly with ``os.utime`` on put, open, get and pin.
  mtime rather than atime: ``noatime``/``relatime`` mounts do not keep atime, and a blob's
  content never changes, so its mtime carries nothing else.
* A reader pins a blob with ``flock(blob, LOCK_SH)``; the evictor takes
  ``LOCK_EX | LOCK_NB`` and skips what it cannot lock, and never removes a held blob.
* A crash leaves at most temp files in the dead instance's tmp folder, whose lock died with
  it; the constructor and :meth:`LocalBlobStore.gc` remove such folders.

The file-level pieces of that protocol (temp folders, the lock and total, scans) are in
:mod:`offload.cache.localfs`; this class is the :class:`~offload.cache.blobs.LocalTier`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from offload.cache.blobs import LocalTier, check_name
from offload.cache.localfs import (
    ByteTotal,
    claim_tmp,
    fs,
    fsync_dir,
    list_names,
    release_tmp,
    scan_blobs,
    sweep_tmp,
    try_lock,
)
from offload.errors import CacheError, ObjectNotFound

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class CacheStats:
    count: int
    bytes: int
    budget: int | None
    pinned: int
    held: int
    quarantined: int


class LocalBlobStore(LocalTier):
    def __init__(
        self, root: Path, budget: int | None = None, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        if budget is not None and budget < 0:
            raise CacheError(f"the cache budget must be at least 0 bytes, not {budget}")
        self.root = Path(root)
        self.budget = budget
        self._clock = clock
        self._last_ns = 0
        self.blobs_dir = self.root / "blobs"
        self.held_dir = self.root / "held"
        self.quarantine_dir = self.root / "quarantine"
        self._tmp_root = self.root / "tmp"
        with fs(f"create the cache folder {self.root}"):
            for d in (self.blobs_dir, self.held_dir, self.quarantine_dir, self._tmp_root):
                d.mkdir(parents=True, exist_ok=True)
        self._total = ByteTotal(
            self.root / "state", lambda: sum(size for _, _, size in scan_blobs(self.blobs_dir))
        )
        sweep_tmp(self._tmp_root)
        self._tmp_dir, fd = claim_tmp(self._tmp_root)
        self._finalizer = weakref.finalize(self, release_tmp, fd, self._tmp_dir, os.getpid())
        self._evict(None)  # recount the total; eviction waits for the next put or gc

    def close(self) -> None:
        """Remove this instance's tmp folder and drop its lock (also done at collection)."""
        self._finalizer()

    def __enter__(self) -> LocalBlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tmp_dir(self) -> Path:
        """This instance's own temp folder (removed when it closes)."""
        return self._tmp_dir

    # -- reading ---------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """Where blob ``name`` lives (maybe absent). Read it only while :meth:`pin` is held."""
        check_name(name)
        return self.blobs_dir / name[:2] / name

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def size(self, name: str) -> int:
        path = self.path(name)
        with fs(f"stat blob {path}", missing=name):
            return path.stat().st_size

    def open(self, name: str) -> BinaryIO:
        """The blob for streaming, as stored; the caller verifies what it reads."""
        path = self.path(name)
        with fs(f"open blob {path}", missing=name):
            f = path.open("rb")
        self._touch(f.fileno())
        return f

    @contextlib.contextmanager
    def inspect(self, name: str) -> Iterator[BinaryIO]:
        """The blob for an audit: pinned against eviction like :meth:`pin`, but its recency
        untouched (a verify pass must not reorder the LRU). ObjectNotFound when it is gone
        (evicted or deleted meanwhile)."""
        path = self.path(name)
        with fs(f"open blob {path}", missing=name):
            f = path.open("rb")
        with f:
            with fs(f"lock blob {path}", missing=name):
                fcntl.flock(f, fcntl.LOCK_SH)
                if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:
                    raise ObjectNotFound(name)  # evicted (and maybe stored again) meanwhile
            yield f

    def get(self, name: str, dest: Path) -> None:
        dest = Path(dest)
        with self.open(name) as src:
            with fs(f"create a temp file next to {dest}"):
                fd, part = tempfile.mkstemp(
                    dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"
                )
            try:
                with fs(f"copy blob {name} to {dest}"), os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                with fs(f"rename {part} to {dest}"):
                    os.replace(part, dest)
            except BaseException:
                Path(part).unlink(missing_ok=True)
                raise

    def names(self) -> Iterator[str]:
        return iter(sorted(name for _, name, _ in scan_blobs(self.blobs_dir)))

    # -- writing ---------------------------------------------------------------------------

    def put(self, name: str, src: Path) -> bool:
        if self.has(name):  # write-once: keep the first bytes, skip the copy
            self._touch(self.path(name))
            return False
        with fs(f"create a temp file in {self.tmp_dir}"):
            fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="put-")
            os.close(fd)
        tmp = Path(tmp_name)
        try:
            with fs(f"copy {src} into the cache at {tmp}"):
                shutil.copyfile(src, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._commit(name, tmp)

    def put_owned(self, name: str, tmp: Path) -> bool:
        """Store the finished file ``tmp`` as ``name`` without copying it (a hard link).

        ``tmp`` must lie in :attr:`tmp_dir`; this call owns it and removes it, whether the
        blob was new (True) or already present (False: its bytes are discarded).
        """
        check_name(name)
        tmp = Path(tmp)
        if not tmp.resolve().is_relative_to(self._tmp_root.resolve()):
            raise CacheError(f"put_owned takes files inside {self.tmp_dir}, not {tmp}")
        return self._commit(name, tmp)

    def _commit(self, name: str, tmp: Path) -> bool:
        final = self.path(name)
        created, total = False, 0
        try:
            with fs(f"seal the temp file {tmp}"):
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.fchmod(fd, 0o444)
                    size = os.fstat(fd).st_size
                    self._touch(fd)
                finally:
                    os.close(fd)
            with fs(f"create the folder {final.parent}"):
                new_dir = not final.parent.is_dir()
                final.parent.mkdir(exist_ok=True)
            with self._total.locked() as state:
                try:
                    os.link(tmp, final)  # fails rather than replace: write-once without a race
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise CacheError(f"cannot store blob {final}: {exc.strerror}") from exc
                else:
                    created, total = True, self._total.adjust(state, size)
        finally:
            with fs(f"remove the temp file {tmp}"):
                tmp.unlink(missing_ok=True)
        if not created:
            self._touch(final)
            return False
        with fs(f"sync the folder {final.parent}"):
            fsync_dir(final.parent)
            if new_dir:
                fsync_dir(self.blobs_dir)
        if self.budget is not None and total > self.budget:
            self._evict(self.budget, protect=name)
        return True

    def delete(self, name: str) -> None:
        """Remove the blob (pinned or not; open readers keep their bytes) and any hold on it."""
        path = self.path(name)
        with self._total.locked() as state, fs(f"delete blob {path}"):
            removed = self._take_out(state, path, None)
        self.release(name)
        if removed:
            self._report_removed([name])

    # -- pins, holds, quarantine -----------------------------------------------------------

    @contextlib.contextmanager
    def pin(self, name: str) -> Iterator[None]:
        """Keep ``name`` from eviction, by any process, while the context is open."""
        path = self.path(name)
        while True:
            with fs(f"open blob {path}", missing=name):
                f = path.open("rb")
            try:
                with fs(f"lock blob {path}", missing=name):  # ENOENT: evicted as we waited
                    fcntl.flock(f, fcntl.LOCK_SH)
                    if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                        break
            except CacheError:
                f.close()
                raise
            f.close()  # replaced since we opened it: lock the new file
        try:
            self._touch(f.fileno())
            yield
        finally:
            f.close()

    def hold(self, name: str) -> None:
        """Pin ``name`` persistently, across restarts, until :meth:`release`."""
        marker = self.held_dir / check_name(name)
        with self.pin(name), fs(f"create the hold marker {marker}"):
            marker.touch()
            fsync_dir(self.held_dir)

    def release(self, name: str) -> None:
        marker = self.held_dir / check_name(name)
        with fs(f"remove the hold marker {marker}"):
            marker.unlink(missing_ok=True)

    def held(self) -> Iterator[str]:
        return iter(list_names(self.held_dir))

    def quarantine(self, name: str, why: str) -> None:
        """Move a blob that failed verification out of service, recording ``why``."""
        path = self.path(name)
        target = self.quarantine_dir / name
        with self._total.locked() as state, fs(f"quarantine blob {path}"):
            removed = self._take_out(state, path, target)
            if removed:
                (self.quarantine_dir / f"{name}.why").write_text(why.rstrip() + "\n")
        self.release(name)  # its bytes are bad: an upload waiting on them cannot happen
        if removed:
            self._report_removed([name])

    def quarantined(self) -> list[str]:
        return list_names(self.quarantine_dir)

    # -- accounting and eviction -----------------------------------------------------------

    def used(self) -> int:
        """Total bytes of the stored blobs, from the shared counter (no scan)."""
        with self._total.locked() as state:
            return self._total.adjust(state, 0)

    def stats(self) -> CacheStats:
        entries = scan_blobs(self.blobs_dir)
        return CacheStats(
            count=len(entries),
            bytes=sum(size for _, _, size in entries),
            budget=self.budget,
            pinned=sum(1 for _, name, _ in entries if self._pinned(name)),
            held=len(list_names(self.held_dir)),
            quarantined=len(self.quarantined()),
        )

    def gc(self) -> int:
        """Drop temp files of dead instances and evict down to the budget; bytes freed."""
        return sweep_tmp(self._tmp_root) + self._evict(self.budget)

    def _evict(self, limit: int | None, protect: str | None = None) -> int:
        """Recount the total and remove least recently used blobs until it fits ``limit``."""
        with self._total.locked() as state:
            entries = sorted(scan_blobs(self.blobs_dir))
            total = sum(size for _, _, size in entries)
            freed = 0
            evicted = []
            for _, name, size in entries:
                if limit is None or total <= limit:
                    break
                if name != protect and self._evict_one(name):
                    total -= size
                    freed += size
                    evicted.append(name)
            self._total.write(state, total)
        self._report_removed(evicted)
        if limit is not None and total > limit:
            log.warning(
                "cache %s over budget (%d > %d): the rest is in use", self.root, total, limit
            )
        return freed

    def _evict_one(self, name: str) -> bool:
        """Under the store lock: remove ``name`` unless a reader pins it or it is held."""
        path = self.path(name)
        with fs(f"evict blob {path}"), path.open("rb") as f:
            if not try_lock(f) or (self.held_dir / name).exists():
                return False
            path.unlink()
            return True

    def _report_removed(self, names: list[str]) -> None:
        """Tell :attr:`on_removed` (the node's object index) which blobs left; never raises."""
        if not names or self.on_removed is None:
            return
        try:
            self.on_removed(names)
        except Exception:
            log.exception("cache %s: reporting %d removed blob(s)", self.root, len(names))

    def _pinned(self, name: str) -> bool:
        with contextlib.suppress(FileNotFoundError), self.path(name).open("rb") as f:
            return not try_lock(f)
        return False

    def _take_out(self, state: BinaryIO, path: Path, target: Path | None) -> bool:
        """Under the lock: remove ``path`` (or move it to ``target``) and count it out."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if target is None:
            path.unlink()
        else:
            os.replace(path, target)
        self._total.adjust(state, -size)
        return True

    # -- internals -------------------------------------------------------------------------

    def _touch(self, target: Path | int) -> None:
        """Mark a blob as used now: its mtime is the recency the evictor orders by."""
        now = self._last_ns = max(self._clock(), self._last_ns + 1)
        try:
            os.utime(target, ns=(now, now))
        except OSError as exc:  # e.g. another user's file: recency is best effort
            log.debug("cannot mark %s as recently used: %s", target, exc)
