"""Where kombu's Redis transport keeps a queue's messages — read by the sweeper and the
autoscaler, which never import kombu for it (``tests/test_work.py`` checks these against
kombu's own).

* ready messages: one list per priority step, ``q`` for step 0 and ``q<SEP><step>`` for the
  others (:data:`PRIORITY_STEPS`, ``Channel.sep``); kombu serves lower steps first;
* delivered, unacknowledged messages: the ``unacked`` hash (delivery tag → ``[message,
  exchange, routing key]``) and its ``unacked_index`` sorted set.

offload's job priority runs the other way (0-9, 9 first): :func:`kombu_priority` maps it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from offload.spec.arrays import chunk_items

PRIORITY_STEPS = tuple(range(10))  # broker_transport_options["priority_steps"]
PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis.Channel.sep
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def kombu_priority(priority: int) -> int:
    """kombu's priority (0 served first) for a job's priority (9 served first)."""
    return max(PRIORITY_STEPS) - min(max(priority, 0), max(PRIORITY_STEPS))


def queue_lists(queue: str) -> list[str]:
    """The Redis lists holding ``queue``'s ready messages, served first to last."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


def message_job(raw: str | bytes) -> str | None:
    """The job id a kombu message (JSON envelope) is about, or None if it is not ours."""
    try:
        msg = json.loads(raw)
        if isinstance(msg, list):  # an unacked entry: [message, exchange, routing_key]
            msg = msg[0]
        task_id = str(msg["headers"]["id"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return task_id.split(".", 1)[0]


def message_jobs(raws: Iterable[str | bytes]) -> Iterable[str]:
    """The job ids the messages are about: a chunk's message (a batched array's) is about
    each of its items."""
    for raw in raws:
        yield from message_items(raw)


def message_items(raw: str | bytes) -> list[str]:
    """The jobs a message runs: its job, or each item of a chunk (:mod:`offload.spec.arrays`);
    [] if it is not ours."""
    job_id = message_job(raw)
    if job_id is None:
        return []
    return chunk_items(job_id) or [job_id]
