"""The content store seam: blobs addressed by the sha256 of their plaintext.

A :class:`Store` is what the producer uploads inputs to and what a worker stages inputs from
and collects outputs into. Implementations: :class:`~offload.cache.local.LocalStore` (the
node-local cache). The id a user sees is ``sha256:<hex>`` of the plaintext, so it can be
checked with ``sha256sum``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO

from offload.errors import CacheError
from offload.spec import OBJECT_ID_RE

CHUNK = 1024 * 1024


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


class Store(ABC):
    """Content-addressed, write-once blob storage."""

    @abstractmethod
    def has(self, oid: str) -> bool:
        """Whether the object is stored here."""

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

    def put_file(self, path: Path) -> str:
        with path.open("rb") as f:
            return self.put_stream(f)

    def put_bytes(self, data: bytes) -> str:
        import io

        return self.put_stream(io.BytesIO(data))

    def read_bytes(self, oid: str) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="offload-read-") as tmp:
            dest = Path(tmp) / "blob"
            self.export(oid, dest)
            return dest.read_bytes()
