"""Locality routing: which queue a job's message goes to.

A job goes to the queue of a node (``node.<name>``, :func:`offload.broker.keys.node_queue`)
that is live (heartbeat within ``lost_after``), not draining, serves the job's class, has a
free slot (slots - running jobs - messages already in its queue) and free room for the job
(its allocatable CPUs, memory and GPUs less what its machine's running jobs hold,
:mod:`offload.broker.room`), and whose cache holds the
most of the job's input bytes (its object index, :mod:`offload.cache.objindex`); otherwise to
its class queue. :func:`decide` is the pure rule; :func:`read_nodes` reads what it needs from
Redis in two round trips; :func:`record` writes the decision into the job record (fields
``routed_to`` and ``route_why``, no status change) and, for a node queue, into
``offload:routed``, where the sweeper finds a job its node has not started within
``locality_grace`` and moves it to its class queue (:func:`offload.broker.publish.move_overdue`).

Input sizes come from the nodes' indexes, not from the store: every node that holds an
object records its plaintext size, so routing needs no store access and no key. An input no
node indexes (never fetched by a node yet, or smaller than ``locality_min_bytes``) is of
unknown size here; it cannot change which node is best, and the decision says how many there
were. Nothing here imports Celery: the autoscaler reads node queues through it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from offload.broker import keys
from offload.broker.queues import PRIORITY_STEPS, message_job, queue_lists
from offload.broker.room import Room, Share
from offload.spec import OBJECT_ID_RE
from offload.spec.uris import is_uri, parse_uri, uri_digest

# KEYS: job record, routed index.  ARGV: 1 job id, 2 node ('' = class queue), 3 why,
# 4 the id that enters the routed index ('' = none: an item of a chunk, whose chunk does).
# Only while the record exists; a node route enters the routed index at Redis time.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'routed_to', ARGV[2], 'route_why', ARGV[3])
if ARGV[4] == '' then return 1 end
if ARGV[2] ~= '' then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[4])
else
  redis.call('ZREM', KEYS[2], ARGV[4])
end
return 1
"""


@dataclass(frozen=True)
class NodeView:
    """One registered node as routing sees it."""

    name: str
    holds: Mapping[str, int]  # input id -> plaintext bytes, for the inputs its cache holds
    free: int = 0  # slots not taken by running jobs or by messages already in its queue
    serves: bool = True  # serves the job's class
    live: bool = True
    draining: bool = False
    room: Share | None = None  # free room of its machine (None: not known, not limiting)

    @property
    def held(self) -> int:
        return sum(self.holds.values())

    @property
    def unfit(self) -> str:
        """Why it cannot take the job now ("" when it can)."""
        if not self.live:
            return "is not live"
        if self.draining:
            return "is draining"
        if not self.serves:
            return "does not serve its class"
        if self.free <= 0:
            return "has no free slot"
        return ""

    def unfit_for(self, need: Share | None) -> str:
        """Why it cannot take a job needing ``need`` now ("" when it can)."""
        why = self.unfit
        if why or need is None or self.room is None or self.room.covers(need):
            return why
        return f"has no room for {need.describe()} ({self.room.describe()} free)"


@dataclass(frozen=True)
class Route:
    queue: str
    why: str
    node: str | None = None  # None: the class queue
    held: int = 0
    total: int = 0


@dataclass
class Inputs:
    """A job's content-id inputs and what the nodes' indexes say of their sizes."""

    ids: tuple[str, ...]
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @property
    def unknown(self) -> int:
        return sum(1 for i in self.ids if i not in self.sizes)


def input_ids(inputs: Mapping[str, str]) -> tuple[str, ...]:
    """The content ids among a spec's inputs (references not resolved yet are skipped)."""
    return tuple(dict.fromkeys(v for v in inputs.values() if OBJECT_ID_RE.match(v)))


def fetched_ids(r: redis.Redis, inputs: Mapping[str, str]) -> tuple[str, ...]:
    """The content ids the spec's input URIs are known to hold: a pin, else what a node
    fetched the URI as (``offload:fetched:<hash>``); a URI never fetched counts nothing."""
    out: list[str] = []
    names: list[str] = []
    for ref in inputs.values():
        if not is_uri(ref):
            continue
        uri = parse_uri(ref)
        if uri.pin:
            out.append(uri.pin)
        elif not uri.has_credentials:  # a credentialed URI's memo is keyed: not ours to read
            names.append(keys.fetched(uri_digest(uri.url)))
    if names:
        for raw in r.mget(names):
            try:
                oid = json.loads(raw)["oid"] if raw else None
            except (ValueError, KeyError, TypeError):
                oid = None
            if isinstance(oid, str) and OBJECT_ID_RE.match(oid):
                out.append(oid)
    return tuple(dict.fromkeys(out))


def human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return (
                f"{n / size:.0f} {unit}"
                if n % size == 0 or n >= 10 * size
                else (f"{n / size:.1f} {unit}")
            )
    return f"{n} B"


def decide(
    resource_class: str, ids: Sequence[str], nodes: Iterable[NodeView], need: Share | None = None
) -> Route:
    """The queue for a job of ``resource_class`` with inputs ``ids`` needing ``need``, given
    every node."""
    nodes = list(nodes)
    if not ids:
        return Route(resource_class, "no inputs to place")
    inputs = Inputs(tuple(ids))
    for n in nodes:
        for oid, size in n.holds.items():
            inputs.sizes[oid] = max(size, inputs.sizes.get(oid, 0))
    of = f"{human(inputs.total)} inputs"
    if inputs.unknown:
        of += f" (+{inputs.unknown} of unknown size)"
    holders = sorted((n for n in nodes if n.held > 0), key=lambda n: (-n.held, -n.free, n.name))
    for n in holders:
        if not n.unfit_for(need):
            return Route(
                keys.node_queue(n.name),
                f"holds {human(n.held)} of {of}",
                node=n.name,
                held=n.held,
                total=inputs.total,
            )
    if holders:
        best = holders[0]
        why = f"node {best.name} holds {human(best.held)} of {of} but {best.unfit_for(need)}"
    else:
        why = "no live node holds its inputs"
    return Route(resource_class, why, total=inputs.total)


# -- reading the nodes ---------------------------------------------------------------------


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nodes(
    r: redis.Redis, resource_class: str, ids: Sequence[str], *, lost_after: float
) -> list[NodeView]:
    """Every registered node as :func:`decide` needs it, in two round trips."""
    pipe = r.pipeline(transaction=False)
    pipe.time()
    pipe.smembers(keys.NODES)
    (sec, usec), members = pipe.execute()
    now = float(sec) + usec / 1e6
    names = sorted(_str(m) for m in members)
    if not names:
        return []
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hmget(
            keys.node(name),
            "classes",
            "slots",
            "heartbeat_at",
            "draining",
            "cpus",
            "memory",
            "gpus",
            "machine",
            "engine_down_at",
        )
        pipe.scard(keys.node_running(name))
        for lst in queue_lists(keys.node_queue(name)):
            pipe.llen(lst)
        pipe.zmscore(keys.node_objects(name), list(ids))
    replies = pipe.execute()
    per = 3 + len(PRIORITY_STEPS)
    rooms = Room(r)
    used: dict[str, Share] = {}
    out = []
    for i, name in enumerate(names):
        row = replies[i * per : (i + 1) * per]
        (classes, slots, beat, draining, cpus, memory, gpus, machine, engine_down) = row[0]
        running = int(row[1])
        if beat is None:  # deregistered meanwhile
            continue
        free_room = None
        if cpus is not None and memory is not None:
            where = _str(machine or name)
            if where not in used:
                used[where] = rooms.used(where)
            alloc = Share(float(cpus), int(memory), int(gpus or 0))
            free_room = alloc - used[where]
        waiting = sum(int(x) for x in row[2:-1])
        holds = {oid: int(s) for oid, s in zip(ids, row[-1] or [], strict=False) if s is not None}
        out.append(
            NodeView(
                name=name,
                holds=holds,
                free=int(slots or 1) - running - waiting,
                serves=resource_class in _str(classes or "").split(","),
                # a node whose engine does not answer takes no work: not live for routing
                live=now - float(beat) <= lost_after and not float(engine_down or 0),
                draining=_str(draining or "0") == "1",
                room=free_room,
            )
        )
    return out


def record(r: redis.Redis | Any, job_id: str, route: Route, routed: str | None = None) -> None:
    """Write the decision into the job record (and the routed index for a node queue);
    ``r`` may be a pipeline (a submit writes the record and its route in one transaction).
    ``routed``: the id the routed index holds for it (a chunk's, for each of its items; ""
    for none), else the job's own."""
    routed = job_id if routed is None else routed
    args = (job_id, route.node or "", route.why, routed)
    r.eval(_RECORD, 2, keys.job(job_id), keys.ROUTED, *args)


# -- node queues' messages -------------------------------------------------------------------


def node_queue_messages(r: redis.Redis, nodes: Iterable[str]) -> list[tuple[str, str, str]]:
    """(list key, raw message, job id) of every ready message in the nodes' queues."""
    lists = [lst for n in dict.fromkeys(nodes) for lst in queue_lists(keys.node_queue(n))]
    if not lists:
        return []
    pipe = r.pipeline(transaction=False)
    for lst in lists:
        pipe.lrange(lst, 0, -1)
    out = []
    for lst, raws in zip(lists, pipe.execute(), strict=True):
        for raw in raws:
            job_id = message_job(raw)
            if job_id is not None:
                out.append((lst, _str(raw), job_id))
    return out


def registered_nodes(r: redis.Redis) -> list[str]:
    return sorted(_str(n) for n in r.smembers(keys.NODES))
