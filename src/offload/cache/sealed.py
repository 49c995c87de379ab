"""SealedStore: the content store every node and producer uses, over one or two blob tiers.

Content ids (``sha256:<hex>`` of plaintext) are what users see. Underneath, each object is
an encrypted envelope (:mod:`.envelope`) stored under a keyed hash of its id (:mod:`.keys`)
in a node-local tier (a :class:`~offload.cache.blobs.LocalTier`: the node's
:class:`~offload.cache.localblobs.LocalBlobStore`) and, when configured, a shared remote
tier (a :class:`~offload.cache.blobs.BlobStore`: S3).

Reads: local, else remote; the envelope is verified while it is decrypted, a local blob that
fails is quarantined and fetched again from the remote tier, and a fetched blob is kept
locally. Writes: local first, then the remote tier; when the remote tier is unreachable the
blob is *held* locally (never evicted) and its name stays in the durable pending list (the
held markers) until :meth:`SealedStore.flush_pending` uploads it. Uploads are
create-if-absent, so a blob is never uploaded twice.

An unreachable remote tier is never taken for "absent": :meth:`SealedStore.has` and reads of
an object the local tier lacks raise :class:`~offload.errors.StoreUnavailable`.

On a worker node the store keeps the node's object index (:mod:`offload.cache.objindex`)
current: every object it stores, fetches or reads locally is noted with its plaintext size,
and every blob the local tier evicts, deletes or quarantines is forgotten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from offload.cache import envelope
from offload.cache.blobs import BlobStore, LocalTier
from offload.cache.keys import ClusterKey
from offload.cache.objindex import ObjectIndex
from offload.cache.probe import probe
from offload.cache.store import Store
from offload.errors import CacheError, IntegrityError, ObjectNotFound, StoreUnavailable

log = logging.getLogger(__name__)


class SealedStore(Store):
    def __init__(
        self,
        key: ClusterKey,
        local: LocalTier,
        remote: BlobStore | None = None,
        *,
        index: ObjectIndex | None = None,
    ) -> None:
        self.key = key
        self.local = local
        self.remote = remote
        self.index = index
        if index is not None:
            local.on_removed = self._forget

    def _forget(self, names: list[str]) -> None:
        if self.index is not None:
            self.index.forget(names, self.key.name_of)

    def _indexed(self, oid: str, size: int) -> None:
        if self.index is not None:
            self.index.add(oid, size)

    # -- writes ----------------------------------------------------------------------------

    def put_stream(self, stream: BinaryIO) -> str:
        fd, tmp_name = tempfile.mkstemp(dir=self.local.tmp_dir, prefix="seal-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w+b") as out:
                sealed = envelope.seal(stream, out, self.key)
                out.flush()
                os.fsync(out.fileno())
            self.local.put_owned(sealed.name, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        if self.remote is not None:
            self._upload(sealed.name)
        self._indexed(sealed.oid, sealed.size)
        return sealed.oid

    def _upload(self, name: str) -> bool:
        """Send one local blob to the remote tier; hold it locally while that fails."""
        assert self.remote is not None
        self.local.hold(name)  # durable and never evicted until the upload is done
        try:
            with self.local.pin(name):
                self.remote.put(name, self.local.path(name))
        except StoreUnavailable as exc:
            log.warning("remote store unreachable; blob %s… waits for upload: %s", name[:12], exc)
            return False
        self.local.release(name)
        return True

    def flush_pending(self) -> int:
        """Upload every held blob; returns how many went out (0 while still unreachable)."""
        if self.remote is None:
            return 0
        sent = 0
        for name in self.local.held():
            if not self._upload(name):
                break
            sent += 1
        return sent

    # -- reads -----------------------------------------------------------------------------

    def has(self, oid: str) -> bool:
        name = self.key.name_of(oid)
        if self.local.has(name):
            return True
        if self.remote is None:
            return False
        try:
            return self.remote.has(name)
        except StoreUnavailable as exc:  # not "absent": nobody can tell now
            raise StoreUnavailable(
                f"cannot tell whether object {oid} is stored: this node's cache lacks it "
                f"and the shared store cannot be reached ({exc})"
            ) from exc

    def export(self, oid: str, dest: Path) -> None:
        name = self.key.name_of(oid)
        try:
            self._export_local(name, oid, dest)
            probe().read(local_hit=True)
            return
        except ObjectNotFound:
            if self.remote is None:
                raise ObjectNotFound(oid) from None
        except IntegrityError as exc:
            self.local.quarantine(name, str(exc))
            log.error("quarantined local blob for %s: %s", oid, exc)
            if self.remote is None:
                raise IntegrityError(
                    f"object {oid} is damaged in this node's cache and was quarantined: {exc}"
                ) from exc
        probe().read(local_hit=False)
        self._fetch(name, oid, dest)

    def _export_local(self, name: str, oid: str, dest: Path) -> None:
        part = dest.with_name(f".{dest.name}.part")
        try:
            with self.local.pin(name), self.local.open(name) as src, part.open("wb") as out:
                envelope.unseal(src, out, self.key, oid, total_size=self.local.size(name))
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        self._indexed(oid, dest.stat().st_size)

    def _fetch(self, name: str, oid: str, dest: Path) -> None:
        """Copy a blob from the remote tier; in one pass verify it and decrypt it to ``dest``;
        then keep it locally. Nothing is kept or written to ``dest`` unless it verified."""
        assert self.remote is not None
        part = dest.with_name(f".{dest.name}.part")
        fd, tmp_name = tempfile.mkstemp(dir=self.local.tmp_dir, prefix="fetch-")
        os.close(fd)
        tmp = Path(tmp_name)
        tmp.unlink()
        try:
            try:
                self.remote.get(name, tmp)
            except ObjectNotFound:
                raise ObjectNotFound(oid) from None
            try:
                with tmp.open("rb") as src, part.open("wb") as out:
                    envelope.unseal(src, out, self.key, oid, total_size=tmp.stat().st_size)
            except IntegrityError as exc:  # neither kept nor served; the shared copy stays
                raise IntegrityError(
                    f"object {oid} is damaged in the shared store and was not used: {exc}"
                ) from exc
            self.local.put_owned(name, tmp)
            os.replace(part, dest)
        finally:
            tmp.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
        self._indexed(oid, dest.stat().st_size)

    # -- housekeeping ----------------------------------------------------------------------

    def delete(self, oid: str) -> None:
        name = self.key.name_of(oid)
        self.local.delete(name)
        if self.remote is not None:
            with contextlib.suppress(CacheError):
                self.remote.delete(name)
