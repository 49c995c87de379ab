"""Queue depths per resource class, read from Redis where kombu and the node registry keep them.

The one place outside kombu that reads kombu's storage formats (the sweeper asks
:mod:`offload.broker.queues` for the same decoding).

kombu's Redis transport keeps, for a queue ``q``:

* ready messages in lists: one per priority step (:mod:`offload.broker.queues`);
* delivered, not yet acknowledged messages in one hash for all queues, ``unacked``:
  delivery tag → JSON ``[message, exchange, routing_key]``. offload publishes with the
  default exchange and the class name as routing key (:func:`offload.broker.app.route`),
  and its class exchange binds each queue under its own name, so the routing key *is* the
  class; the message's own ``properties.delivery_info.routing_key`` is the fallback.

Jobs routed to a node's own queue (``node.<name>``, :mod:`offload.broker.routing`) count as
work of their class (each message's class read from its job record), ready or delivered.

An array's items not fed to the queue yet count as ready work of its class, one per message
they will be sent in (:func:`array_backlog`): the feeder holds them back for fairness, not
because there is no work.

Running jobs are counted from the node registry's running sets
(``offload:node:<name>:running``, :mod:`offload.broker.keys`), each job's class and status
read from its record: only ``staging``/``running``/``uploading`` count. With late acks these
jobs are also in ``unacked``; :attr:`ClassWork.total` takes the larger of the two.

Nothing here imports kombu (the autoscaler's policy imports :class:`ClassWork` and must not
reach Celery); ``tests/test_work.py`` checks the constants against kombu's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from offload.broker import keys
from offload.broker.queues import PRIORITY_STEPS, UNACKED, message_job, queue_lists
from offload.broker.routing import node_queue_messages
from offload.broker.status import ACTIVE
from offload.spec.arrays import chunk_items

UNACKED_KEY = UNACKED
_ACTIVE = frozenset(s.value for s in ACTIVE)
queue_keys = queue_lists  # the lists kombu keeps a queue's ready messages in


@dataclass(frozen=True)
class ClassWork:
    """Jobs of one class: ready in the queue, delivered but unacknowledged, running."""

    ready: int = 0
    unacked: int = 0
    running: int = 0

    @property
    def total(self) -> int:
        """Ready + unacked. With late acks unacked ⊇ running; the max guards early acks."""
        return self.ready + max(self.unacked, self.running)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def unacked_class(raw: str | bytes, classes: frozenset[str]) -> str | None:
    """The class (queue) of one entry of kombu's ``unacked`` hash, or None if not ours."""
    try:
        message, _exchange, routing_key = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if routing_key in classes:
        return str(routing_key)
    try:
        rk = message["properties"]["delivery_info"]["routing_key"]
    except (KeyError, TypeError):
        return None
    return str(rk) if rk in classes else None


def read_depths(
    r: redis.Redis, classes: Iterable[str], *, unacked_key: str = UNACKED_KEY
) -> dict[str, ClassWork]:
    """Ready (arrays' items not fed yet included), unacknowledged and running jobs per class,
    in five round trips."""
    names = list(dict.fromkeys(classes))
    wanted = frozenset(names)

    pipe = r.pipeline(transaction=False)
    for name in names:
        for key in queue_keys(name):
            pipe.llen(key)
    pipe.hvals(unacked_key)
    pipe.smembers(keys.NODES)
    replies = pipe.execute()
    steps = len(PRIORITY_STEPS)
    ready = {
        n: sum(int(x) for x in replies[i * steps : (i + 1) * steps]) for i, n in enumerate(names)
    }
    unacked = dict.fromkeys(names, 0)
    for raw in replies[-2]:
        cls = unacked_class(raw, wanted)
        if cls is not None:
            unacked[cls] += 1
    nodes = sorted(_str(n) for n in replies[-1])
    for cls, was_delivered in _node_queue_classes(r, nodes, replies[-2]):
        if cls in ready:
            (unacked if was_delivered else ready)[cls] += 1
    for cls, messages in array_backlog(r).items():
        if cls in ready:
            ready[cls] += messages
    running = dict.fromkeys(names, 0)
    for cls in _running_classes(r, nodes):
        if cls in running:
            running[cls] += 1
    return {n: ClassWork(ready=ready[n], unacked=unacked[n], running=running[n]) for n in names}


def array_backlog(r: redis.Redis) -> dict[str, int]:
    """Per class, the messages arrays will still send for the items they have not fed yet
    (one per item, or per chunk of a batched array): work the autoscaler counts as ready
    (:mod:`offload.broker.feeder`). Two round trips."""
    ids = [_str(a) for a in r.zrange(keys.ARRAYS_FEEDING, 0, -1)]
    if not ids:
        return {}
    pipe = r.pipeline(transaction=False)
    for array_id in ids:
        pipe.hmget(keys.array(array_id), "count", "batch", "state", "class", "classes")
        pipe.hgetall(keys.array_feed(array_id))
    replies = pipe.execute()
    out: dict[str, int] = {}
    for (count, batch, state, cls, classes), feed in zip(replies[::2], replies[1::2], strict=True):
        feed = {_str(k): _str(v) for k, v in feed.items()}
        if count is None or _str(state or "") != "active" or feed.get("cancelled") == "1":
            continue
        per = max(1, int(batch or 0))
        # items by class (an array of several classes; its feeder counts fed:<class>)
        total = json.loads(classes) if classes else {_str(cls): int(count)}
        fed = {c: int(feed.get(f"fed:{c}", 0)) for c in total} if classes else {
            _str(cls): int(feed.get("fed", 0))}  # fmt: skip
        for c, n in total.items():
            left = int(n) - fed[c]
            if left > 0:
                out[c] = out.get(c, 0) + -(-left // per)
    return out


def _node_queue_classes(
    r: redis.Redis, nodes: list[str], unacked_raws: Iterable[Any]
) -> list[tuple[str, bool]]:
    """(class, delivered?) of every message in the nodes' own queues (locality routing): ready
    in ``node.<name>``, or delivered from it and not acknowledged. A node queue holds jobs of
    several classes: each message's class is its job record's."""
    ready = [job_id for _, _, job_id in node_queue_messages(r, nodes)]
    delivered = []
    for raw in unacked_raws:
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, TypeError, IndexError, KeyError):
            continue
        if str(routing_key).startswith(keys.NODE_QUEUE_PREFIX):
            job_id = message_job(raw)
            if job_id is not None:
                delivered.append(job_id)
    jobs = [(j, False) for j in ready] + [(j, True) for j in delivered]
    if not jobs:
        return []
    pipe = r.pipeline(transaction=False)
    for job_id, _ in jobs:  # a chunk (one message) is of its items' class: its first's
        pipe.hget(keys.job((chunk_items(job_id) or [job_id])[0]), "class")
    return [
        (_str(cls), was)
        for (_, was), cls in zip(jobs, pipe.execute(), strict=True)
        if cls is not None
    ]


def _running_classes(r: redis.Redis, nodes: list[str]) -> list[str]:
    """The class of every active job in the nodes' running sets (a job counted once)."""
    if not nodes:
        return []
    pipe = r.pipeline(transaction=False)
    for node in nodes:
        pipe.smembers(keys.node_running(node))
    job_ids = sorted({_str(j) for members in pipe.execute() for j in members})
    if not job_ids:
        return []
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), "class", "status")
    out = []
    for cls, status in pipe.execute():
        if cls is not None and status is not None and _str(status) in _ACTIVE:
            out.append(_str(cls))
    return out
