"""LocalStore: the node-local content store, one file per object under a root folder.

Layout: ``<root>/objects/<2 hex>/<64 hex>`` and ``<root>/tmp/`` for writes in flight.
Writes are atomic (temp file, fsync, rename) and write-once; reads are verified against the
id while they are copied out.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from offload.cache.store import CHUNK, Store, check_id, object_id
from offload.errors import CacheError, IntegrityError, ObjectNotFound


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the cache folder {self.root}: {exc}") from exc

    def _path(self, oid: str) -> Path:
        digest = check_id(oid)
        return self.objects / digest[:2] / digest

    def has(self, oid: str) -> bool:
        return self._path(oid).is_file()

    def put_stream(self, stream: BinaryIO) -> str:
        h = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="put-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            oid = object_id(h.hexdigest())
            final = self._path(oid)
            if final.exists():
                tmp.unlink()
                return oid
            final.parent.mkdir(exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            return oid
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def export(self, oid: str, dest: Path) -> None:
        src = self._path(oid)
        expected = check_id(oid)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            f = src.open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(oid) from None
        h = hashlib.sha256()
        try:
            with f, tmp.open("wb") as out:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != expected:
                raise IntegrityError(f"object {oid} is damaged: its bytes hash to {h.hexdigest()}")
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def delete(self, oid: str) -> None:
        self._path(oid).unlink(missing_ok=True)

    def ids(self) -> Iterator[str]:
        for sub in sorted(self.objects.iterdir()):
            for entry in sorted(sub.iterdir()):
                yield object_id(entry.name)

    def clear(self) -> None:
        shutil.rmtree(self.objects, ignore_errors=True)
        self.objects.mkdir(parents=True, exist_ok=True)
