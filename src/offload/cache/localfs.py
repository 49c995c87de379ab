"""Filesystem primitives of the node-local cache (:mod:`offload.cache.localblobs`).

``OSError`` turned into :class:`~offload.errors.CacheError` naming what failed, folder
fsyncs, non-blocking flocks, the per-instance temp folders (claimed with a flock for the
instance's life, swept once their lock is free) and the store-wide lock file that keeps the
total bytes of the blobs (:class:`ByteTotal`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from offload.cache.blobs import NAME_RE
from offload.errors import CacheError, ObjectNotFound


@contextlib.contextmanager
def fs(what: str, missing: str | None = None) -> Iterator[None]:
    """OSError → :class:`CacheError` saying what failed; ENOENT → ObjectNotFound(missing)."""
    try:
        yield
    except OSError as exc:
        if missing is not None and isinstance(exc, FileNotFoundError):
            raise ObjectNotFound(missing) from None
        raise CacheError(f"cannot {what}: {exc.strerror or exc}") from exc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_lock(f: BinaryIO | int) -> bool:
    """Take an exclusive flock without waiting; False when someone holds any lock on it."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def scan_blobs(blobs_dir: Path) -> list[tuple[int, str, int]]:
    """(mtime_ns, name, size) of every blob under ``blobs_dir/<2 hex>/``."""
    out = []
    with fs(f"list the blobs in {blobs_dir}"):
        for sub in os.scandir(blobs_dir):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                if NAME_RE.match(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat(follow_symlinks=False)
                        out.append((st.st_mtime_ns, entry.name, st.st_size))
    return out


def list_names(folder: Path) -> list[str]:
    """The blob names in ``folder`` (holds, quarantine), sorted."""
    with fs(f"list {folder}"):
        return sorted(n for n in os.listdir(folder) if NAME_RE.match(n))


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


# -- temp folders: one per live store instance -----------------------------------------------


def claim_tmp(tmp_root: Path) -> tuple[Path, int]:
    """Make a temp folder in ``tmp_root`` and lock it for as long as its caller lives."""
    with fs(f"create a temp folder in {tmp_root}"):
        while True:
            path = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"{os.getpid()}-"))
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue  # another instance's sweep removed it before we opened it
            fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return path, fd
            os.close(fd)  # a sweeper removed it before we locked it: make another


def release_tmp(fd: int, path: Path, pid: int) -> None:
    """Remove a claimed temp folder and drop its lock (by the process that claimed it)."""
    if os.getpid() == pid:  # a forked child shares the folder (and its lock) with its parent
        shutil.rmtree(path, ignore_errors=True)
    os.close(fd)


def sweep_tmp(tmp_root: Path) -> int:
    """Remove the temp folders of dead instances (their lock is free) and loose files; bytes
    freed."""
    freed = 0
    with fs(f"clean up {tmp_root}"):
        for entry in os.scandir(tmp_root):
            with contextlib.suppress(FileNotFoundError):
                if not entry.is_dir(follow_symlinks=False):
                    freed += entry.stat(follow_symlinks=False).st_size
                    os.unlink(entry.path)
                    continue
                fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    if not try_lock(fd):
                        continue  # its instance is alive (ours included)
                    freed += _tree_bytes(Path(entry.path))
                    shutil.rmtree(entry.path, ignore_errors=True)
                finally:
                    os.close(fd)
    return freed


# -- the store-wide lock and byte total ------------------------------------------------------


class ByteTotal:
    """The file ``path``: its flock is the store-wide lock, its content the blobs' total.

    ``recount`` computes the total from disk, for when the file holds garbage.
    """

    def __init__(self, path: Path, recount: Callable[[], int]) -> None:
        self.path = path
        self._recount = recount
        with fs(f"create {path}"):
            path.touch(exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[BinaryIO]:
        """The store-wide lock (a fresh open file each time, so threads exclude too)."""
        with fs(f"open {self.path}"):
            f = self.path.open("r+b")
        with f:
            with fs(f"lock {self.path}"):
                fcntl.flock(f, fcntl.LOCK_EX)
            yield f

    def write(self, state: BinaryIO, total: int) -> None:
        """Under :meth:`locked`: set the total."""
        with fs(f"write {self.path}"):
            state.seek(0)
            state.write(b"%d\n" % total)
            state.truncate()
            state.flush()

    def adjust(self, state: BinaryIO, delta: int) -> int:
        """Under :meth:`locked`: add ``delta`` to the total (recounting a damaged one)."""
        with fs(f"read {self.path}"):
            state.seek(0)
            text = state.read()
        try:
            total = max(0, int(text) + delta)
        except ValueError:  # a recount already includes the change just made on disk
            total = self._recount()
        self.write(state, total)
        return total
