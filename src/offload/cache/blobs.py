"""The blob seam: opaque bytes by name, written once. Encryption and addressing live above.

A :class:`BlobStore` never sees plaintext or content ids: callers (the sealed content store)
give it ciphertext envelopes under names that are keyed hashes. Implementations: the
node-local folder (:mod:`offload.cache.localblobs`) and S3 (:mod:`offload.cache.s3`).

:class:`LocalTier` is what the sealed store needs of its node-local tier on top: pins,
holds, quarantine and files it can stream.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from offload.errors import CacheError

NAME_RE = re.compile(r"^[0-9a-f]{64}$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise CacheError(f"malformed blob name {name!r}; expected 64 lowercase hex digits")
    return name


class BlobStore(ABC):
    """Write-once named blobs. Every method raises :class:`CacheError` subclasses only."""

    @abstractmethod
    def has(self, name: str) -> bool:
        """Whether a blob of that name is stored."""

    @abstractmethod
    def put(self, name: str, src: Path) -> bool:
        """Store the file ``src`` as ``name`` unless present; True if this call created it.

        Atomic: a reader sees the whole blob or none. Never overwrites an existing blob.
        """

    @abstractmethod
    def get(self, name: str, dest: Path) -> None:
        """Copy the blob to the new file ``dest``; :class:`ObjectNotFound` when absent.

        Leaves no partial ``dest`` on failure.
        """

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove the blob if present."""

    @abstractmethod
    def names(self) -> Iterator[str]:
        """Every stored blob name."""


class LocalTier(BlobStore):
    """The node-local tier a :class:`~offload.cache.sealed.SealedStore` reads first.

    Beyond the blob contract it lends files for streaming (:meth:`path`, :meth:`open`,
    :meth:`size`, read only under :meth:`pin`), takes finished files without a copy
    (:meth:`put_owned`), keeps blobs that wait for an upload (:meth:`hold` /
    :meth:`release` / :meth:`held`) and takes damaged ones out of service
    (:meth:`quarantine`). Implementation: :class:`~offload.cache.localblobs.LocalBlobStore`.

    Whoever keeps an index of the tier's content (the node's object index for locality) sets
    :attr:`on_removed`: the tier calls it with the names of the blobs it evicted, deleted or
    quarantined, after the fact, outside its locks.
    """

    on_removed: Callable[[list[str]], None] | None = None

    @property
    @abstractmethod
    def tmp_dir(self) -> Path:
        """A private folder for files the caller will hand to :meth:`put_owned`."""

    @abstractmethod
    def put_owned(self, name: str, tmp: Path) -> bool:
        """Store the finished file ``tmp`` (inside :attr:`tmp_dir`) as ``name``, taking it.

        ``tmp`` is gone afterwards; True when this call created the blob.
        """

    @abstractmethod
    def path(self, name: str) -> Path:
        """Where blob ``name`` lives (maybe absent); read it only while :meth:`pin` is held."""

    @abstractmethod
    def open(self, name: str) -> BinaryIO:
        """The blob for streaming, as stored; :class:`ObjectNotFound` when absent."""

    @abstractmethod
    def size(self, name: str) -> int:
        """The blob's size in bytes; :class:`ObjectNotFound` when absent."""

    @abstractmethod
    def pin(self, name: str) -> AbstractContextManager[None]:
        """Keep ``name`` from eviction while the context is open."""

    @abstractmethod
    def hold(self, name: str) -> None:
        """Keep ``name`` durably (across restarts, never evicted) until :meth:`release`."""

    @abstractmethod
    def release(self, name: str) -> None:
        """End a :meth:`hold` (nothing to do when there is none)."""

    @abstractmethod
    def held(self) -> Iterator[str]:
        """The names of the held blobs."""

    @abstractmethod
    def quarantine(self, name: str, why: str) -> None:
        """Take a blob that failed verification out of service, recording ``why``."""
