"""The autoscaler's word on each resource class, kept in Redis for ``offload status``.

One hash per class (key :func:`offload.broker.keys.autoscaler_status`), rewritten by every
tick of the autoscaler loop and expiring after ``ttl`` seconds, so a missing hash means no
autoscaler runs::

    offload:autoscaler:<class>   HASH   desired, up, starting, draining, work, reason, at

Written by :mod:`offload.autoscaler.loop`; read by ``Job.why_waiting`` and ``offload up``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis

from offload.broker import keys


@dataclass(frozen=True)
class ClassStatus:
    """What the autoscaler wants for one class, what it has, and why."""

    desired: int
    up: int
    starting: int
    draining: int
    work: int
    reason: str
    at: float


def write_status(r: redis.Redis, statuses: Mapping[str, ClassStatus], ttl: int) -> None:
    """Replace the status hash of each class in ``statuses``; each expires after ``ttl`` s."""
    pipe = r.pipeline(transaction=False)
    for cls, st in statuses.items():
        key = keys.autoscaler_status(cls)
        fields: dict[str | bytes, str | int] = {k: v for k, v in asdict(st).items()}
        fields["at"] = repr(st.at)
        pipe.delete(key)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, ttl)
    pipe.execute()


def read_status(r: redis.Redis, resource_class: str) -> dict[str, str] | None:
    """The autoscaler's last word on a class, or None when no autoscaler runs."""
    raw = r.hgetall(keys.autoscaler_status(resource_class))
    if not raw:
        return None
    return {_s(k): _s(v) for k, v in raw.items()}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
