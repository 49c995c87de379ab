"""The blob seam: opaque bytes by name, written once. Encryption and addressing live above.

A :class:`BlobStore` never sees plaintext or content ids: callers (the sealed content store)
give it ciphertext envelopes under names that are keyed hashes. Implementations: the
node-local folder (:mod:`offload.cache.localblobs`) and S3 (:mod:`offload.cache.s3`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

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
