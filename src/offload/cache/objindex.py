"""The object index of one node: which content its cache holds, for locality routing.

``offload:node:<name>:objects`` (:mod:`offload.broker.keys`) is a sorted set of content id →
plaintext bytes. The node's :class:`~offload.cache.sealed.SealedStore` adds an object when it
stores, fetches or reads it from the local tier, and removes it when the local tier evicts,
deletes or quarantines its blob; the router (:mod:`offload.broker.routing`) reads it to send a
job to the node that holds most of its input bytes.

Bounded: objects under ``min_bytes`` are not indexed (moving them costs little), and at most
``max_objects`` entries are kept, the smallest dropped first. Content ids (not blob names)
are indexed — Redis already holds them in job records — so the index never links an id to
the keyed name it is stored under; an evicted blob's name is matched to its id with the
cluster key, in the node's process.

The index is a hint: an entry a crash left behind routes a job to a node that then fetches
the object from S3 (no harm), and the router never waits on it. Its writes never fail a read
or a write of the store: a Redis error is logged and the entry skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import redis

from offload.broker import keys

log = logging.getLogger(__name__)


class ObjectIndex:
    def __init__(self, client: redis.Redis, node: str, *, min_bytes: int, max_objects: int) -> None:
        self.r, self.node = client, node
        self.key = keys.node_objects(node)
        self.min_bytes, self.max_objects = min_bytes, max_objects

    def add(self, oid: str, size: int) -> None:
        """Note that the node's cache holds ``oid`` (``size`` plaintext bytes)."""
        if size < self.min_bytes:
            return
        try:
            pipe = self.r.pipeline(transaction=True)
            pipe.zadd(self.key, {oid: size})
            pipe.zremrangebyrank(self.key, 0, -(self.max_objects + 1))
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("object index of node %s: cannot add %s: %s", self.node, oid, exc)

    def forget(self, names: Iterable[str], name_of: Callable[[str], str]) -> int:
        """Remove the entries whose blob (``name_of(oid)``) is among ``names``; how many."""
        gone = set(names)
        if not gone:
            return 0
        try:
            members = [str(m) for m in self.r.zrange(self.key, 0, -1)]
            drop = [oid for oid in members if name_of(oid) in gone]
            if drop:
                self.r.zrem(self.key, *drop)
            return len(drop)
        except redis.RedisError as exc:
            log.warning("object index of node %s: cannot remove entries: %s", self.node, exc)
            return 0

    def clear(self) -> None:
        """Forget everything (the node starts, or leaves)."""
        self.r.delete(self.key)

    def held(self) -> dict[str, int]:
        return {str(m): int(s) for m, s in self.r.zrange(self.key, 0, -1, withscores=True)}
