"""Publishing a queued job: the one place that decides which queue its message goes to.

Every publication — at submit, when a waiting job is released, on a retry, when the sweeper
requeues a dead attempt's job or republishes a lost message — goes through :func:`publish`,
so routing (the class queue, or a node queue for data locality) is decided in one place:
:mod:`offload.broker.routing` decides, the decision is written into the job record
(``routed_to``, ``route_why``) before the message is sent, and the sweeper calls
:func:`move_overdue` to move a job its node has not started within ``locality_grace`` to its
class queue.

The settings routing needs ride on the Celery app (``offload_locality``,
``offload_lost_after`` in its conf, set by :func:`offload.broker.app.make_app`); the Redis
client is the one of the :class:`~offload.broker.core.Broker` that made the app (one built
from the app's settings for an app made without one).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from kombu import Queue

from offload.broker import keys, routing
from offload.broker.app import CHUNK_TASK_NAME, EXCHANGE, route, settings_of
from offload.broker.connection import redis_client
from offload.broker.records import JobRecord, JobRecords
from offload.broker.room import Share
from offload.broker.status import JobStatus
from offload.errors import JobNotFound
from offload.spec.arrays import chunk_items, chunks, parse_chunk

if TYPE_CHECKING:
    from offload.spec import JobSpec

log = logging.getLogger(__name__)

_clients: weakref.WeakKeyDictionary[Celery, redis.Redis] = weakref.WeakKeyDictionary()


def bind_client(app: Celery, client: redis.Redis) -> None:
    """Route ``app``'s jobs with ``client`` (the :class:`~offload.broker.core.Broker`'s)."""
    _clients[app] = client


def _redis(app: Celery) -> redis.Redis:
    client = _clients.get(app)
    if client is None:
        client = redis_client(settings_of(app))
        _clients[app] = client
    return client


def declare_node_queue(app: Celery, node: str) -> str:
    """Make ``node.<node>`` a queue ``app`` may publish to (and a worker consume); its name."""
    name = keys.node_queue(node)
    queues = app.amqp.queues
    if name not in queues:
        queues.add(Queue(name, EXCHANGE, routing_key=name))
    return name


def choose(app: Celery, spec: JobSpec, resource_class: str) -> routing.Route | None:
    """Where a job of ``spec`` goes now; None: its class queue, with nothing to decide
    (locality routing is off, or the job has no inputs)."""
    return _by_inputs(app, spec.inputs, spec, resource_class)


def _by_inputs(
    app: Celery, inputs: Mapping[str, str], spec: JobSpec, resource_class: str
) -> routing.Route | None:
    """Where work with ``inputs`` that needs ``spec``'s resources goes now; None: its class
    queue, with nothing to decide (locality routing is off, or no input to place)."""
    if not app.conf.get("offload_locality", True):
        return None
    ids = routing.input_ids(inputs)
    ids += routing.fetched_ids(_redis(app), inputs)  # URIs a node fetched before
    if not ids:
        return None
    lost_after = float(app.conf.get("offload_lost_after") or 15.0)
    nodes = routing.read_nodes(_redis(app), resource_class, ids, lost_after=lost_after)
    res = spec.resources
    need = Share(res.cpu, res.memory, res.gpus)
    return routing.decide(resource_class, ids, nodes, need)


def decide(
    app: Celery, job_id: str, spec: JobSpec, resource_class: str, class_queue_because: str = ""
) -> routing.Route:
    """The queue a job's next message goes to and why: with ``class_queue_because`` its class
    queue for that reason (the sweeper moving it out of a node queue), else routing's word —
    the class queue when routing has nothing to say or cannot read the nodes."""
    decision: routing.Route | None = None
    if class_queue_because:
        decision = routing.Route(resource_class, class_queue_because)
    else:
        try:
            decision = choose(app, spec, resource_class)
        except redis.RedisError as exc:  # routing is an optimisation: never lose the job to it
            log.warning("job %s: locality routing unavailable (%s); class queue", job_id, exc)
    return decision if decision is not None else routing.Route(resource_class, "")


def send(
    app: Celery,
    rec: JobRecord,
    decision: routing.Route,
    task_id: str | None = None,
    producer: Any = None,
) -> str:
    """Send ``rec``'s message where ``decision`` says, once the decision is in the record
    (:func:`offload.broker.routing.record`); returns the queue's name. ``producer``: a kombu
    producer the caller keeps (else one is taken from the app's pool for this message)."""
    if decision.node is not None:
        declare_node_queue(app, decision.node)
    route(
        app,
        rec.id,
        decision.queue,
        rec.spec.display_name(),
        rec.spec.summary(),
        task_id,
        priority=rec.spec.priority,
        producer=producer,
    )
    return decision.queue


class _IntoTransaction:
    """A kombu publish-batch session (the object behind kombu 5.7's ``Producer.batch``)
    whose Redis commands — the message's LPUSH, its ``task-sent`` event's PUBLISH — join a
    transaction of offload's instead of a pipeline of kombu's."""

    def __init__(self, channel: Any, pipe: Any) -> None:
        self.channel = channel
        self.pipe = pipe

    def publish(self, message: Any, **kwargs: Any) -> Any:
        return self.channel.basic_publish(message, _publish_batch=self, **kwargs)

    def add(self, name: str, *args: Any) -> None:
        getattr(self.pipe, name)(*args)

    def flush(self) -> None:  # the transaction's EXEC sends it
        pass

    def discard(self) -> None:
        pass

    def close(self) -> None:
        pass


def send_in(pipe: Any, app: Celery, rec: JobRecord, decision: routing.Route, producer: Any) -> bool:
    """Put ``rec``'s message (and its ``task-sent`` event) into ``pipe``, a MULTI of the same
    Redis as the broker's, so that the record and its message are written by one EXEC — one
    round trip, and never one without the other. Celery and kombu build the messages as for
    any send; only their final Redis commands are taken. False, with nothing added, where
    the installed kombu cannot hand its commands over (before 5.7): then send after EXEC."""
    return _captured(pipe, producer, lambda: send(app, rec, decision, producer=producer))


def _captured(pipe: Any, producer: Any, sending: Any) -> bool:
    """Call ``sending`` (a send with ``producer``) with its Redis commands going into ``pipe``
    (see :func:`send_in`); False, with nothing sent, where this kombu cannot."""
    try:  # kombu's own batch state, holding a session of ours
        from kombu.messaging import _ProducerBatchState

        channel = producer.channel
        if not hasattr(channel, "create_publish_batch"):
            return False
        state = _ProducerBatchState(1 << 20)
        state.session = _IntoTransaction(channel, pipe)
        producer._batch_local.current = state
    except (ImportError, AttributeError, TypeError):  # another kombu: send after EXEC
        return False
    try:
        sending()
    finally:
        del producer._batch_local.current
    return True


def publish(
    app: Celery, rec: JobRecord, task_id: str | None = None, *, class_queue_because: str = ""
) -> str:
    """Send ``rec``'s job to its queue; returns the queue's name.

    With ``class_queue_because`` the job goes to its class queue for that reason (the
    sweeper moving it out of a node queue), without routing.
    """
    decision = decide(app, rec.id, rec.spec, rec.resource_class, class_queue_because)
    # Every publication writes its decision, an empty one too: a route shown is never stale.
    routing.record(_redis(app), rec.id, decision)
    return send(app, rec, decision, task_id)


PUBLISH_CHUNK = 500  # jobs whose routes and messages go in one pipelined round trip


def publish_many(
    app: Celery, recs: list[JobRecord], producer: Any, chunk: int | None = None
) -> None:
    """Send many queued jobs' messages (each routed as :func:`publish` routes one): a chunk's
    routes and messages go out in one pipelined round trip (:func:`send_in`), not three
    round trips a job. Not a transaction: if Redis goes away mid-way, the jobs whose message
    was not written are left ``queued`` without one, and the sweeper publishes them."""
    r = _redis(app)
    chunk = chunk or PUBLISH_CHUNK
    for start in range(0, len(recs), chunk):
        pipe = r.pipeline(transaction=False)
        for i, rec in enumerate(recs[start : start + chunk]):
            decision = decide(app, rec.id, rec.spec, rec.resource_class)
            routing.record(pipe, rec.id, decision)
            if not send_in(pipe, app, rec, decision, producer):  # a kombu before 5.7
                pipe.execute()
                for each in recs[start + i :]:
                    publish(app, each)
                return
        pipe.execute()


def publish_chunks(
    app: Celery,
    recs: list[JobRecord],
    producer: Any,
    batch: int,
    name: str = "",
    *,
    class_queue_because: str = "",
    suffix: str = "",
) -> list[str]:
    """Send the queued items ``recs`` of a batched array (ascending index) as chunk messages of
    up to ``batch`` consecutive items of one class (:func:`offload.spec.arrays.chunks`); returns
    the chunks' ids. A chunk goes where most of its items' input bytes are
    (:func:`choose_chunk`: a node queue, its id in the routed index so that :func:`move_overdue`
    moves it to the class queue if the node does not start it) or to its class queue
    (``class_queue_because``: there, for that reason), with its first item's priority; Flower
    shows it as ``<name>[first..last]``. Each item's record says where its chunk went and why.
    ``suffix``: added to each chunk's task id (a moved chunk's new message). As
    :func:`publish_many`, not a transaction: an item whose chunk was not written is ``queued``
    without a message, and the sweeper publishes it (alone)."""
    if not recs:
        return []
    r = _redis(app)
    array_id = recs[0].id[:24]
    by_index = {int(rec.id[24:], 16): rec for rec in recs}
    by_class: dict[str, list[int]] = {}  # a chunk's items are of one class
    for index in sorted(by_index):
        by_class.setdefault(by_index[index].resource_class, []).append(index)
    ids = sorted(
        (c for indexes in by_class.values() for c in chunks(array_id, indexes, batch)),
        key=lambda c: (parse_chunk(c) or ("", 0, 0))[1],
    )

    def items(chunk: str) -> list[JobRecord]:
        _, first, stop = parse_chunk(chunk) or ("", 0, 0)
        return [by_index[i] for i in range(first, stop)]

    def sender(chunk: str, decision: routing.Route) -> Any:
        _, first, stop = parse_chunk(chunk) or ("", 0, 0)
        head = by_index[first]
        if decision.node is not None:
            declare_node_queue(app, decision.node)
        return lambda: route(
            app,
            chunk,
            decision.queue,
            f"{name or head.spec.display_name()}[{first}..{stop - 1}]",
            f"{stop - first} items of array {array_id}",
            chunk + suffix,
            priority=head.spec.priority,
            producer=producer,
            task=CHUNK_TASK_NAME,
        )

    per_trip = max(1, PUBLISH_CHUNK // batch)
    for start in range(0, len(ids), per_trip):
        pipe = r.pipeline(transaction=False)
        for i, chunk in enumerate(ids[start : start + per_trip]):
            mine = items(chunk)
            decision = choose_chunk(app, chunk, mine, class_queue_because)
            for rec in mine:
                routing.record(pipe, rec.id, decision, routed=chunk)
            if not _captured(pipe, producer, sender(chunk, decision)):  # a kombu before 5.7
                pipe.execute()
                for each in ids[start + i :]:
                    sender(each, choose_chunk(app, each, items(each), class_queue_because))()
                return ids
        pipe.execute()
    return ids


def choose_chunk(
    app: Celery, chunk: str, recs: list[JobRecord], class_queue_because: str = ""
) -> routing.Route:
    """Where a chunk goes: the node holding the most of its items' input bytes that can take
    its first item (:func:`offload.broker.routing.decide` over the union of the items'
    inputs), else its class queue."""
    _, first, stop = parse_chunk(chunk) or ("", 0, 0)
    head = recs[0]
    what = f"batched: chunk {first}..{stop - 1}"
    if class_queue_because:
        return routing.Route(head.resource_class, f"{what}: {class_queue_because}")
    decision = None
    refs = {f"{i}/{k}": v for i, rec in enumerate(recs) for k, v in rec.spec.inputs.items()}
    try:
        decision = _by_inputs(app, refs, head.spec, head.resource_class)
    except redis.RedisError as exc:  # routing is an optimisation: never lose items to it
        log.warning("chunk %s: locality routing unavailable (%s); class queue", chunk, exc)
    if decision is None:
        return routing.Route(head.resource_class, what)
    return dataclasses.replace(decision, why=f"{what}: {decision.why}")


def move_overdue(app: Celery, records: JobRecords, grace: float, now: float) -> list[str]:
    """Move the jobs routed to a node queue more than ``grace`` seconds ago (Redis time) and
    not started there to their class queues; returns their ids.

    A message is taken out of the node's list with ``LREM`` of its exact bytes: when that
    removes nothing the node's worker took it first (it starts, or its delivery comes back
    through Celery), and the job is left alone. A job that is no longer ``queued`` leaves the
    routed index.
    """
    r = records.r
    due = [str(j) for j in r.zrangebyscore(keys.ROUTED, "-inf", now - grace)]
    moved = [j for c in due if parse_chunk(c) for j in _move_chunk(app, records, c, grace)]
    due = [j for j in due if not parse_chunk(j)]
    if not due:
        return moved
    pipe = r.pipeline(transaction=False)
    for job_id in due:
        pipe.hmget(keys.job(job_id), "status", "routed_to")
    states = dict(zip(due, pipe.execute(), strict=True))
    waiting = {j: str(s[1]) for j, s in states.items() if s[0] == "queued" and s[1]}
    for job_id in set(due) - set(waiting):
        r.zrem(keys.ROUTED, job_id)
    messages = routing.node_queue_messages(r, waiting.values())
    for job_id, node in sorted(waiting.items()):
        mine = [(lst, raw) for lst, raw, j in messages if j == job_id]
        mine = [(lst, raw) for lst, raw in mine if lst.startswith(keys.node_queue(node))]
        taken = any(int(r.lrem(lst, 1, raw)) == 1 for lst, raw in mine)
        r.zrem(keys.ROUTED, job_id)
        if not taken:
            continue  # the node took it meanwhile (or it is lost: the sweeper republishes it)
        try:
            rec = records.get(job_id)
        except JobNotFound:  # the record went away: nothing to run
            continue
        why = f"node {node} did not start it within {grace:g} s"
        publish(app, rec, f"{job_id}.m{uuid.uuid4().hex[:6]}", class_queue_because=why)
        log.warning("job %s: %s; moved to class queue %s", job_id, why, rec.resource_class)
        moved.append(job_id)
    return moved


def _move_chunk(app: Celery, records: JobRecords, chunk: str, grace: float) -> list[str]:
    """:func:`move_overdue` for a chunk routed to a node queue: its message taken out of
    the node's list (``LREM``: nothing when the node took it first), its items still
    ``queued`` sent to their class queue as a chunk again; returns those items' ids."""
    r = records.r
    ids = chunk_items(chunk)
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), "status", "routed_to")
    states = pipe.execute()
    nodes = {str(s[1]) for s in states if s[0] == "queued" and s[1]}
    r.zrem(keys.ROUTED, chunk)
    if not nodes:
        return []
    node = nodes.pop()
    taken = any(
        int(r.lrem(lst, 1, raw)) == 1
        for lst, raw, j in routing.node_queue_messages(r, [node])
        if j == chunk and lst.startswith(keys.node_queue(node))
    )
    if not taken:
        return []  # the node took it meanwhile (or it is lost: the sweeper republishes it)
    recs = []
    for job_id in ids:
        try:
            rec = records.get(job_id)
        except JobNotFound:
            continue
        if rec.status is JobStatus.QUEUED:
            recs.append(rec)
    why = f"node {node} did not start it within {grace:g} s"
    publish_chunks(app, recs, None, len(ids), class_queue_because=why,
                   suffix=f".m{uuid.uuid4().hex[:6]}")  # fmt: skip
    log.warning("chunk %s: %s; moved to its class queue", chunk, why)
    return [rec.id for rec in recs]
