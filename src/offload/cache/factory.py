"""Building the content store a process uses, from settings (at the edge)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from offload.cache.blobs import BlobStore
from offload.cache.keys import ClusterKey, load_key
from offload.cache.localblobs import LocalBlobStore
from offload.cache.objindex import ObjectIndex
from offload.cache.sealed import SealedStore
from offload.config import Settings

if TYPE_CHECKING:  # the fetcher imports boto3: only a node's user data needs it
    from offload.cache.fetch import Fetcher, UserS3


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
            ca_bundle=str(settings.s3_ca_bundle) if settings.s3_ca_bundle else None,
        )
    )


def local_tier(settings: Settings, budget: int | None = None) -> LocalBlobStore:
    """The node's local cache, bounded by ``budget`` (default: the configured budget)."""
    return LocalBlobStore(
        settings.store_dir, budget if budget is not None else settings.cache_budget
    )


_node_index: list[bool] = [False]  # set by the worker's entry point before its pool forks


def index_this_node(on: bool = True) -> None:
    """Declare this process (and the pool processes it forks) a worker node: the stores
    :func:`open_store` opens from now on keep the node's object index for locality routing.
    Producers and other tools leave it off: their caches are nobody's node."""
    _node_index[0] = on


def object_index(settings: Settings, client: redis.Redis) -> ObjectIndex:
    """The object index of ``settings.node_name`` (locality routing), kept through
    ``client`` (the process's :class:`~offload.broker.core.Broker`'s)."""
    return ObjectIndex(
        client,
        settings.node_name,
        min_bytes=settings.locality_min_bytes,
        max_objects=settings.locality_max_objects,
    )


def open_store(settings: Settings, client: redis.Redis | None = None) -> SealedStore:
    """The node's sealed store: its local cache, plus S3 when configured; on a worker node
    (:func:`index_this_node`) with the node's object index, kept through ``client``."""
    key = load_key(settings.key_path)
    indexed = _node_index[0] and settings.locality and client is not None
    index = object_index(settings, client) if indexed and client is not None else None
    return SealedStore(key, local_tier(settings), remote_tier(settings), index=index)


def user_s3(settings: Settings) -> UserS3:
    """The user's own S3 (``s3://`` inputs, deliveries): ``OFFLOAD_DELIVER_*``, endpoint and
    region defaulting to the ``OFFLOAD_S3_*`` ones."""
    from offload.cache.fetch import UserS3

    ca = settings.deliver_ca_bundle or settings.s3_ca_bundle
    return UserS3(
        endpoint_url=settings.deliver_endpoint_url or settings.s3_endpoint_url,
        region=settings.deliver_region or settings.s3_region,
        ca_bundle=str(ca) if ca else None,
        profile=settings.deliver_profile,
        timeout=settings.fetch_timeout,
    )


def user_data(
    settings: Settings, store: SealedStore, client: redis.Redis, key: ClusterKey
) -> tuple[Fetcher, UserS3]:
    """A node's fetcher of input URIs (remembered through ``client``) and its user S3."""
    s3 = user_s3(settings)
    from offload.cache.fetch import FetchConfig, Fetcher

    config = FetchConfig(
        ttl=settings.memo_ttl,
        attempts=settings.fetch_attempts,
        timeout=settings.fetch_timeout,
        backoff=settings.fetch_backoff,
        redirects=settings.fetch_redirects,
        s3=s3,
    )
    return Fetcher(store, client, key, config), s3
