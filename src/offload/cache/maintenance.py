"""Upkeep of a node's local cache: audit every blob, collect garbage.

What ``offload cache verify|gc`` do, as library calls returning results (``cache stats`` is
:meth:`LocalBlobStore.stats <offload.cache.localblobs.LocalBlobStore.stats>`); the command
only prints them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from offload.cache import envelope
from offload.cache.keys import ClusterKey
from offload.cache.localblobs import CacheStats, LocalBlobStore
from offload.errors import CacheError, ConfigError, IntegrityError, ObjectNotFound, WrongKey


@dataclass(frozen=True)
class VerifyReport:
    ok: int
    """Blobs that verified under their own name."""
    bad: list[tuple[str, str]]
    """(name, why) of each blob found damaged or misnamed; each was quarantined."""
    gone: int
    """Blobs evicted or deleted between the listing and their check."""

    @property
    def checked(self) -> int:
        return self.ok + len(self.bad)


def verify(key: ClusterKey, local: LocalBlobStore) -> VerifyReport:
    """Check every blob of ``local`` against ``key``; quarantine the damaged and misnamed.

    Reading does not change recency (a pass must not reorder the LRU), and a blob is pinned
    while it is checked. When the blobs were sealed under another key, raises
    :class:`~offload.errors.ConfigError` and quarantines nothing, not even what an earlier
    blob failed: with the wrong key configured, no verdict can be trusted.
    """
    ok = gone = 0
    bad: list[tuple[str, str]] = []
    for name in local.names():
        try:
            with local.inspect(name) as f:
                try:
                    oid = envelope.verify(f, key, total_size=os.fstat(f.fileno()).st_size)
                except OSError as exc:
                    raise CacheError(
                        f"cannot read blob {local.path(name)}: {exc.strerror or exc}"
                    ) from exc
        except ObjectNotFound:
            gone += 1  # evicted or deleted since the listing: nothing to check
            continue
        except WrongKey as exc:
            raise ConfigError(
                f"blob {name} in {local.root}: {exc}. Stopped; nothing was quarantined "
                "(the blobs may be intact: check OFFLOAD_KEY_FILE)"
            ) from None
        except IntegrityError as exc:
            bad.append((name, str(exc)))
            continue
        if key.name_of(oid) != name:
            bad.append((name, f"holds object {oid}, which is not stored under this name"))
        else:
            ok += 1
    for name, why in bad:
        local.quarantine(name, why)
    return VerifyReport(ok=ok, bad=bad, gone=gone)


@dataclass(frozen=True)
class GcReport:
    freed: int
    """Bytes removed: dead instances' temp files and evicted blobs."""
    stats: CacheStats
    """The cache afterwards."""

    @property
    def over_budget(self) -> bool:
        """Still above the budget: the rest is pinned or held."""
        return self.stats.budget is not None and self.stats.bytes > self.stats.budget


def gc(local: LocalBlobStore) -> GcReport:
    """Remove dead temp files and evict least recently used blobs down to ``local.budget``
    (blobs pinned or held for upload are never evicted)."""
    freed = local.gc()
    return GcReport(freed=freed, stats=local.stats())
