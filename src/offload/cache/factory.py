"""Building the content store a process uses, from settings (at the edge)."""

from __future__ import annotations

from offload.cache.blobs import BlobStore
from offload.cache.keys import load_key
from offload.cache.localblobs import LocalBlobStore
from offload.cache.sealed import SealedStore
from offload.config import Settings


def remote_tier(settings: Settings) -> BlobStore | None:
    """The shared S3 tier when a bucket is configured."""
    if not settings.s3_bucket:
        return None
    from offload.cache.s3 import S3BlobStore, S3Config

    return S3BlobStore(
        S3Config(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    )


def local_tier(settings: Settings, budget: int | None = None) -> LocalBlobStore:
    """The node's local cache, bounded by ``budget`` (default: the configured budget)."""
    return LocalBlobStore(
        settings.store_dir, budget if budget is not None else settings.cache_budget
    )


def open_store(settings: Settings) -> SealedStore:
    """The node's sealed store: its local cache, plus S3 when configured."""
    key = load_key(settings.key_path)
    return SealedStore(key, local_tier(settings), remote_tier(settings))
