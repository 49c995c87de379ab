"""The archive's store (:class:`~offload.broker.archive.ArchiveStore`) over the sealed store.

A segment is one sealed object like any other: encrypted with the cluster key, in this node's
cache and, when configured, in S3 (the shared tier every reader reaches). The store is opened
on first use, so a process that never reads an archived job never opens it.
"""

from __future__ import annotations

from collections.abc import Callable

from offload.broker.archive import ArchiveStore
from offload.cache.store import Store
from offload.config import Settings


class SealedArchive(ArchiveStore):
    def __init__(self, store: Store | Callable[[], Store]) -> None:
        self._store = store if isinstance(store, Store) else None
        self._open = None if isinstance(store, Store) else store

    @property
    def store(self) -> Store:
        if self._store is None:
            assert self._open is not None
            self._store = self._open()
        return self._store

    def put(self, data: bytes) -> str:
        return self.store.put_bytes(data)

    def get(self, ref: str) -> bytes:
        return self.store.read_bytes(ref)

    def delete(self, ref: str) -> None:
        self.store.delete(ref)


def sealed_archive(settings: Settings) -> SealedArchive:
    """The archive of the store ``open_store(settings)`` opens (lazily)."""
    from offload.cache.factory import open_store

    return SealedArchive(lambda: open_store(settings))
