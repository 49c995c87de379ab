"""Arrays: one record for the many jobs of a ``map`` (key ``offload:array:<id>``).

An array's items are ordinary jobs whose ids are derived from the array's
(:mod:`offload.spec.arrays`), so this record holds only what the whole array shares: how many
items it has, its name and image, when it was made. It is written in the same all-or-none
step as the items' records (:meth:`offload.broker.core.Broker.submit_many`) and expires after
``record_ttl``, like the history of its items.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from offload.broker import keys
from offload.broker.connection import broker_error
from offload.errors import JobNotFound
from offload.spec.arrays import item_id


@dataclass(frozen=True)
class ArrayInfo:
    """What an array's record says."""

    id: str
    count: int
    name: str = ""
    image: str = ""
    created_at: float = 0.0
    batch: int = 0  # items run one after another in one warm container (0: not batched)

    def item(self, index: int) -> str:
        """The job id of item ``index``; IndexError outside ``0..count-1``."""
        if not 0 <= index < self.count:
            raise IndexError(f"array {self.id} has items 0..{self.count - 1}, not {index}")
        return item_id(self.id, index)

    def items(self) -> list[str]:
        return [item_id(self.id, i) for i in range(self.count)]


class Arrays:
    """Arrays' records, read and written through one Redis client."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.r = client
        self.ttl = ttl

    def write(self, pipe: Any, info: ArrayInfo) -> None:
        """Add the array's record to ``pipe`` (the transaction that records its items)."""
        pipe.hset(
            keys.array(info.id),
            mapping={
                "id": info.id,
                "count": str(info.count),
                "name": info.name,
                "image": info.image,
                "created_at": repr(info.created_at or time.time()),
                "batch": str(info.batch),
            },
        )
        pipe.expire(keys.array(info.id), self.ttl)

    def delete(self, array_id: str) -> None:
        try:
            self.r.delete(keys.array(array_id))
        except redis.RedisError as exc:
            raise broker_error(exc) from exc

    def get(self, array_id: str) -> ArrayInfo:
        """The array ``array_id``; :class:`JobNotFound` when there is none (never made, or
        older than ``record_ttl``)."""
        try:
            h = self.r.hgetall(keys.array(array_id))
        except redis.RedisError as exc:
            raise broker_error(exc) from exc
        if not h:
            raise JobNotFound(f"no array {array_id}")
        return ArrayInfo(
            id=array_id,
            count=int(h["count"]),
            name=h.get("name", ""),
            image=h.get("image", ""),
            created_at=float(h.get("created_at", 0) or 0),
            batch=int(h.get("batch", 0) or 0),
        )


__all__ = ["ArrayInfo", "Arrays"]
