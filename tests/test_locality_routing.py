"""Locality routing against a real Redis, without workers: the rule, the nodes' object index,
publish() into node queues, the grace mover, and node queues counted as work."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from offload.broker import keys
from offload.broker.app import make_app
from offload.broker.core import Broker
from offload.broker.depths import read_depths as read_work
from offload.broker.nodes import NodeRegistry
from offload.broker.publish import move_overdue, publish, publish_chunks
from offload.broker.records import JobRecords
from offload.broker.room import Room, Share, entry
from offload.broker.routing import NodeView, decide, read_nodes
from offload.broker.status import JobStatus, Reason
from offload.broker.sweeper import Sweeper
from offload.cache.keys import ClusterKey
from offload.cache.localblobs import LocalBlobStore
from offload.cache.objindex import ObjectIndex
from offload.cache.sealed import SealedStore
from offload.config import Settings
from offload.spec import GiB, JobSpec
from offload.spec.arrays import chunk_id, item_id
from tests.conftest import new_db, ready_messages

MiB = 1024 * 1024
A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


# -- the rule (pure) ---------------------------------------------------------------------------


def test_the_node_holding_most_input_bytes_with_a_free_slot_wins() -> None:
    nodes = [
        NodeView("n1", {A: 16 * MiB}, free=1),
        NodeView("n2", {A: 16 * MiB, B: 240 * MiB}, free=1),
        NodeView("n3", {}, free=4),
    ]
    r = decide("cpu-small", [A, B], nodes)
    assert (r.queue, r.node) == ("node.n2", "n2")
    assert r.why == "holds 256 MiB of 256 MiB inputs"


@pytest.mark.parametrize(
    ("unfit", "why"),
    [
        (dict(free=0), "has no free slot"),
        (dict(draining=True), "is draining"),
        (dict(live=False), "is not live"),
        (dict(serves=False), "does not serve its class"),
    ],
)
def test_a_holder_that_cannot_take_it_now_leaves_the_job_to_the_next_or_the_class(
    unfit: dict[str, object], why: str
) -> None:
    best = NodeView("n1", {A: 240 * MiB}, **{"free": 1, **unfit})  # type: ignore[arg-type]
    alone = decide("cpu-small", [A, B], [best, NodeView("n2", {B: 16 * MiB}, free=0)])
    assert alone.queue == "cpu-small" and alone.node is None
    assert alone.why == f"node n1 holds 240 MiB of 256 MiB inputs but {why}"
    second = decide("cpu-small", [A, B], [best, NodeView("n2", {B: 16 * MiB}, free=1)])
    assert second.node == "n2" and second.why == "holds 16 MiB of 256 MiB inputs"


def test_a_holder_without_free_room_for_the_job_leaves_it_to_the_next_saying_so() -> None:
    need = Share(2, 4 * GiB)
    best = NodeView("n1", {A: 240 * MiB}, free=3, room=Share(1.5, 20 * GiB))
    other = NodeView("n2", {B: 16 * MiB}, free=1, room=Share(2, 4 * GiB))
    alone = decide("cpu-large", [A, B], [best], need)
    assert alone.queue == "cpu-large"
    assert alone.why == (
        "node n1 holds 240 MiB of 240 MiB inputs (+1 of unknown size) but has no room for "
        "2 CPU / 4 GiB "
        "(1.5 CPU / 20 GiB free)"
    )
    assert decide("cpu-large", [A, B], [best, other], need).node == "n2"
    assert decide("cpu-large", [A, B], [best], Share(1, GiB)).node == "n1"


def test_no_holder_or_no_inputs_means_the_class_queue() -> None:
    nodes = [NodeView("n1", {}, free=2)]
    assert decide("cpu-small", [A], nodes).why == "no live node holds its inputs"
    assert decide("cpu-small", [], nodes).why == "no inputs to place"
    part = decide("cpu-small", [A, B], [NodeView("n1", {A: 3 * MiB}, free=1)])
    assert part.why == "holds 3 MiB of 3 MiB inputs (+1 of unknown size)"


# -- against Redis -------------------------------------------------------------------------------


@pytest.fixture
def settings(redis_server: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=f"{redis_server}/{new_db()}",
        home=tmp_path,
        lost_after=30,
        locality_grace=5,
        locality_min_bytes=MiB,
        sweep_interval=0.01,
    )


@pytest.fixture
def r(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def now(r: redis.Redis) -> float:
    sec, usec = r.time()
    return float(sec) + usec / 1e6


def register(r: redis.Redis, name: str, slots: int = 1, classes: str = "cpu-small") -> None:
    NodeRegistry(r, lost_after=30).register(
        name,
        provider="manual",
        classes=classes.split(","),
        slots=slots,
        cpus=1,
        memory=4 * GiB,
        gpus=0,
    )


def queued_job(records: JobRecords, inputs: dict[str, str]) -> str:
    job_id = uuid.uuid4().hex
    records.create(job_id, JobSpec(image="offload/base", inputs=inputs), "cpu-small")
    return job_id


def test_publish_routes_to_the_holder_records_why_and_the_sweeper_moves_it_after_the_grace(
    settings: Settings, r: redis.Redis
) -> None:
    records, app = JobRecords.from_settings(r, settings), make_app(settings)
    for name in ("n1", "n2", "n3"):
        register(r, name)
    ObjectIndex(r, "n2", min_bytes=MiB, max_objects=10).add(A, 240 * MiB)
    ObjectIndex(r, "n3", min_bytes=MiB, max_objects=10).add(B, 16 * MiB)
    job_id = queued_job(records, {"a": A, "b": B})

    assert publish(app, records.get(job_id)) == "node.n2"
    assert [m for m in ready_messages(r, "node.n2") if job_id in m]
    assert r.hmget(keys.job(job_id), "routed_to", "route_why") == [
        "n2",
        "holds 240 MiB of 256 MiB inputs",
    ]
    assert r.zscore(keys.ROUTED, job_id) is not None
    # the node's queue message counts against its free slot: the next job goes elsewhere
    other = queued_job(records, {"a": A, "b": B})
    assert publish(app, records.get(other)) == "node.n3"
    # and both count as work of their class for the autoscaler
    assert read_work(r, ["cpu-small"])["cpu-small"].ready == 2

    assert move_overdue(app, records, 5, now(r)) == []  # within the grace: left alone
    moved = move_overdue(app, records, 5, now(r) + 6)
    assert sorted(moved) == sorted([job_id, other])
    assert ready_messages(r, "node.n2") == [] and ready_messages(r, "node.n3") == []
    assert len(ready_messages(r, "cpu-small")) == 2
    assert r.hmget(keys.job(job_id), "routed_to", "route_why") == [
        "",
        "node n2 did not start it within 5 s",
    ]
    assert r.zcard(keys.ROUTED) == 0
    assert read_work(r, ["cpu-small"])["cpu-small"].ready == 2  # counted once, still


def test_a_chunk_goes_where_most_of_its_items_input_bytes_are_and_moves_after_the_grace(
    settings: Settings, r: redis.Redis
) -> None:
    records, app = JobRecords.from_settings(r, settings), make_app(settings)
    for name in ("n1", "n2"):
        register(r, name)
    ObjectIndex(r, "n1", min_bytes=MiB, max_objects=10).add(A, 200 * MiB)
    ObjectIndex(r, "n2", min_bytes=MiB, max_objects=10).add(B, 16 * MiB)
    array = uuid.uuid4().hex[:24]
    items = [item_id(array, i) for i in range(4)]
    for job_id, inputs in zip(items, [{"a": A}, {"b": B}, {"a": A}, {}], strict=True):
        records.create(job_id, JobSpec(image="offload/base", inputs=inputs), "cpu-small")
    chunk = chunk_id(array, 0, 4)

    assert publish_chunks(app, [records.get(j) for j in items], None, 4) == [chunk]
    assert [m for m in ready_messages(r, "node.n1") if chunk in m]
    assert ready_messages(r, "cpu-small") == [] and ready_messages(r, "node.n2") == []
    for job_id in items:  # each item says where its chunk went, and why
        assert r.hmget(keys.job(job_id), "routed_to", "route_why") == [
            "n1",
            "batched: chunk 0..3: holds 200 MiB of 216 MiB inputs",
        ]
    assert r.zrange(keys.ROUTED, 0, -1) == [chunk]  # the chunk is what is moved, not its items
    # its message stands for each item (not lost) and counts as one message of their class
    sweeper = Sweeper(Broker(settings, client=r, app=app))
    assert set(items) <= sweeper.jobs_with_a_message(0)[0]
    assert read_work(r, ["cpu-small"])["cpu-small"].ready == 1

    assert move_overdue(app, records, 5, now(r)) == []  # within the grace: left alone
    records.transition(items[3], JobStatus.CANCELLED, reason=Reason.CANCELLED)
    assert sorted(move_overdue(app, records, 5, now(r) + 6)) == items[:3]
    assert ready_messages(r, "node.n1") == [] and r.zcard(keys.ROUTED) == 0
    moved = ready_messages(r, "cpu-small")
    assert len(moved) == 1 and chunk_id(array, 0, 3) in moved[0]  # the ones still queued
    assert r.hmget(keys.job(items[0]), "routed_to", "route_why") == [
        "",
        "batched: chunk 0..2: node n1 did not start it within 5 s",
    ]


def test_a_message_the_node_took_first_is_not_moved_and_sweeper_sees_node_queues(
    settings: Settings, r: redis.Redis
) -> None:
    records, app = JobRecords.from_settings(r, settings), make_app(settings)
    register(r, "n1")
    ObjectIndex(r, "n1", min_bytes=MiB, max_objects=10).add(A, 2 * MiB)
    job_id = queued_job(records, {"a": A})
    assert publish(app, records.get(job_id)) == "node.n1"
    sweeper = Sweeper(Broker(settings, client=r, app=app))
    assert job_id in sweeper.jobs_with_a_message(0)[0]  # not taken for a lost message

    r.delete(*[k for k in r.keys("node.n1*")])  # the node's worker took it (BRPOP)
    assert move_overdue(app, records, 5, now(r) + 6) == []
    assert ready_messages(r, "cpu-small") == [] and r.zcard(keys.ROUTED) == 0


def test_busy_draining_or_lost_nodes_are_read_as_such(settings: Settings, r: redis.Redis) -> None:
    register(r, "busy")
    register(r, "draining", slots=2)
    register(r, "lost")
    register(r, "gpu", classes="gpu-large")
    r.sadd(keys.node_running("busy"), "some-job")
    NodeRegistry(r, lost_after=30).set_draining("draining")
    r.hset(keys.node("lost"), "heartbeat_at", now(r) - 60)
    for name in ("busy", "draining", "lost", "gpu"):
        ObjectIndex(r, name, min_bytes=MiB, max_objects=10).add(A, 8 * MiB)
    views = {n.name: n for n in read_nodes(r, "cpu-small", [A], lost_after=30)}
    assert views["busy"].unfit == "has no free slot"
    assert views["draining"].unfit == "is draining"
    assert views["lost"].unfit == "is not live"
    assert views["gpu"].unfit == "does not serve its class"
    route = decide("cpu-small", [A], views.values())
    assert route.node is None
    # a node whose machine's room its running job holds: read with the room left
    register(r, "full", slots=2)
    ObjectIndex(r, "full", min_bytes=MiB, max_objects=10).add(A, 8 * MiB)
    r.hset(keys.node_owners("full"), "big-job", "7:1")
    held = Share(1, 3 * GiB)
    room = Room(r)
    assert room.admit("full", "big-job", entry("full", 7, 1, held), held, Share(1, 4 * GiB),
                      starvation=60, ttl=30).admitted  # fmt: skip
    (full,) = [n for n in read_nodes(r, "cpu-small", [A], lost_after=30) if n.name == "full"]
    assert full.room == Share(0, GiB) and full.unfit_for(Share(1, GiB)).startswith("has no room")


# -- the object index kept by a node's store -------------------------------------------------------


def test_the_store_indexes_what_it_holds_and_forgets_what_its_cache_evicts(
    settings: Settings, r: redis.Redis, tmp_path: Path
) -> None:
    index = ObjectIndex(r, "n1", min_bytes=MiB, max_objects=3)
    local = LocalBlobStore(tmp_path / "cache", budget=int(5.5 * MiB))
    store = SealedStore(ClusterKey.generate(), local, index=index)
    small = store.put_stream(io.BytesIO(b"tiny"))
    big = [store.put_stream(io.BytesIO(bytes([i]) * (2 * MiB))) for i in range(2)]
    assert small not in index.held()  # under locality_min_bytes: not worth routing for
    assert index.held() == {oid: 2 * MiB for oid in big}
    third = store.put_stream(io.BytesIO(b"\x07" * (2 * MiB)))  # over budget: the oldest goes
    assert not local.has(store.key.name_of(big[0]))
    assert index.held() == {big[1]: 2 * MiB, third: 2 * MiB}
    store.delete(third)
    assert index.held() == {big[1]: 2 * MiB}
    dest = tmp_path / "out"
    store.export(big[1], dest)  # a local read keeps (or puts back) its entry
    r.delete(keys.node_objects("n1"))
    store.export(big[1], tmp_path / "out2")
    assert index.held() == {big[1]: 2 * MiB}
    for i in range(5):  # capped: the smallest entries go first
        index.add(f"sha256:{i:064x}", (i + 3) * MiB)
    assert len(index.held()) == 3 and min(index.held().values()) == 5 * MiB
    NodeRegistry(r, lost_after=30).deregister("n1")
    assert index.held() == {}
