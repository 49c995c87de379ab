"""The content store seam: blobs addressed by the sha256 of their plaintext.

A :class:`Store` is what the producer uploads inputs to and what a worker stages inputs from
and collects outputs into. Implementation: :class:`~offload.cache.sealed.SealedStore`
(encrypted, over the node-local cache and S3). The id a user sees is ``sha256:<hex>`` of the
plaintext, so it can be checked with ``sha256sum``.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from offload.errors import CacheError
from offload.spec import OBJECT_ID_RE

CHUNK = 1024 * 1024

Progress = Callable[[Path, int, int], None]
"""Called with (file, bytes read so far, total bytes) while a file is stored."""


def object_id(digest: str) -> str:
    return f"sha256:{digest}"


def check_id(oid: str) -> str:
    """Return the hex digest of a well-formed id, or raise :class:`CacheError`."""
    if not OBJECT_ID_RE.match(oid):
        raise CacheError(f"malformed object id {oid!r}; expected 'sha256:<64 hex digits>'")
    return oid.removeprefix("sha256:")


def file_id(path: Path) -> str:
    """The content id of a file, computed in constant memory."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return object_id(h.hexdigest())


class _Counted:
    """A file reader that reports how far it got."""

    def __init__(self, f: BinaryIO, path: Path, progress: Progress) -> None:
        self.f, self.path, self.progress = f, path, progress
        self.total = os.fstat(f.fileno()).st_size
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.done += len(data)
        self.progress(self.path, self.done, self.total)
        return data

    def readinto(self, buf: Any) -> int:
        n = self.f.readinto(buf)  # type: ignore[attr-defined]
        self.done += n or 0
        self.progress(self.path, self.done, self.total)
        return int(n or 0)


class Store(ABC):
    """Content-addressed, write-once blob storage."""

    @abstractmethod
    def has(self, oid: str) -> bool:
        """Whether the object is stored here.

        Raises :class:`~offload.errors.StoreUnavailable` when that cannot be told now (a tier
        that may hold it is unreachable): an outage is never reported as "absent".
        """

    @abstractmethod
    def put_stream(self, stream: BinaryIO) -> str:
        """Store everything read from ``stream``; return its id. Idempotent."""

    @abstractmethod
    def export(self, oid: str, dest: Path) -> None:
        """Write the verified plaintext of ``oid`` to ``dest`` (created; must not exist).

        Raises :class:`~offload.errors.ObjectNotFound` or
        :class:`~offload.errors.IntegrityError`; never leaves a partial ``dest`` behind.
        """

    @abstractmethod
    def delete(self, oid: str) -> None:
        """Remove the object if present."""

    def put_file(self, path: Path, progress: Progress | None = None) -> str:
        with path.open("rb") as f:
            if progress is None:
                return self.put_stream(f)
            return self.put_stream(_Counted(f, path, progress))  # type: ignore[arg-type]

    def put_bytes(self, data: bytes) -> str:
        import io

        return self.put_stream(io.BytesIO(data))

    def read_bytes(self, oid: str) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="offload-read-") as tmp:
            dest = Path(tmp) / "blob"
            self.export(oid, dest)
            return dest.read_bytes()
