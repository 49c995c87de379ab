"""Arrays fed to their queue as their class has room (broker/feeder.py), with real workers."""

from __future__ import annotations

import time

from offload.broker import keys
from offload.broker.depths import array_backlog
from offload.broker.queues import message_job
from offload.broker.status import JobStatus
from offload.spec.arrays import parse_chunk

from .conftest import Platform, ready_messages, wait_for


def test_an_array_waits_in_its_table_and_is_fed_as_slots_free(
    private_platform: Platform,
) -> None:
    c = private_platform.client
    # no worker: what is fed stays queued (a queue of its own: nothing else is in it)
    array = c.map("offload/base", ["true"], each=[{"params": {"n": i}} for i in range(50)],
                  batch=2, cpu=2, name="held-big")  # fmt: skip
    assert array.not_fed() == (46, False)  # two chunks fed (no node: two messages)
    assert array.statuses() == [JobStatus.QUEUED] * 50
    rec = array[49].record()  # an item not fed reads as a queued job, from the table
    assert (rec.status, rec.spec.params, rec.resource_class) == (
        JobStatus.QUEUED,
        {"n": 49},
        "cpu-large",
    )
    assert "fed to the queue" in rec.wait
    work = c.broker.depths(["cpu-large"])["cpu-large"]
    assert work.ready >= 2 + 23  # two chunk messages, 23 chunks still in the table
    assert c.broker.feeder.feed(array.id) == 0  # the queue holds enough for its slots
    st = array.status()
    assert st.by_status == {JobStatus.QUEUED: 50} and not st.done
    before = array.cancel()
    assert before == {JobStatus.QUEUED: 50}
    assert array.statuses() == [JobStatus.CANCELLED] * 50
    st = array.status()
    assert st.by_status == {JobStatus.CANCELLED: 50} and st.done
    assert st.by_reason == {"cancelled": 50} and st.failed == list(range(50))
    assert c.broker.feeder.feed(array.id) == 0 and array.not_fed() == (46, True)
    r = c.broker.redis
    assert r.zscore(keys.ARRAYS_FEEDING, array.id) is None


def test_a_single_job_overtakes_a_running_array(private_platform: Platform) -> None:
    p = private_platform
    p.env.update(OFFLOAD_WORKER_SLOTS="1", OFFLOAD_WORKER_CLASSES="cpu-small")
    p.start_worker()
    c = p.client
    array = c.map("offload/base", ["sleep", "0.3"], each=[{}] * 40, cache=False)
    wait_for(lambda: array[1].status().terminal, 60, "the array to be running")
    submitted = time.time()
    single = c.submit("offload/base", ["true"], name="overtaker", cache=False)
    assert single.result(timeout=60).ok
    started = single.record().started_at
    assert started is not None
    ahead = [
        j.id for j in array if (s := j.record().started_at) is not None and submitted < s < started
    ]
    # behind at most the array's messages already queued (one per slot, at least two)
    assert len(ahead) <= 3, ahead
    assert not array.status().done  # it overtook an array still running
    array.cancel()


def test_a_job_over_an_arrays_outputs_waits_for_items_not_fed_yet(
    private_platform: Platform,
) -> None:
    p = private_platform
    p.env.update(OFFLOAD_WORKER_SLOTS="1", OFFLOAD_WORKER_CLASSES="cpu-small")
    p.start_worker()
    c = p.client
    array = c.map(
        "offload/base",
        ["sh", "-c", 'echo "part $OFFLOAD_TASK_INDEX" > /offload/out/p.txt'],
        each=[{}] * 6,
        cache=False,
    )
    join = c.submit(
        "offload/base",
        ["sh", "-c", "cat /offload/in/p0 /offload/in/p5"],
        inputs={f"p{i}": ref for i, ref in enumerate(array.outputs("p.txt"))},
        cache=False,
    )
    assert join.result(timeout=120).ok
    assert [line.text for line in join.logs()] == ["part 0", "part 5"]
    assert array.statuses() == [JobStatus.SUCCEEDED] * 6


def test_a_held_class_is_fed_nothing_until_released(private_platform: Platform) -> None:
    c = private_platform.client
    c.hold("cpu-small")
    array = c.map("offload/base", ["true"], each=[{}] * 10)
    assert array.not_fed() == (10, False) and c.broker.feeder.feed(array.id) == 0
    c.release("cpu-small")
    assert c.broker.feeder.feed(array.id) == 2 and array.not_fed() == (8, False)
    array.cancel()


def test_items_parked_by_a_limit_do_not_draw_the_whole_table_into_records(
    private_platform: Platform,
) -> None:
    p = private_platform
    p.env.update(OFFLOAD_WORKER_SLOTS="2", OFFLOAD_WORKER_CLASSES="cpu-small")
    p.start_worker()
    c = p.client
    c.set_limit("feed=one", 1)  # one at a time: the others park, waiting for the permit
    array = c.map(
        "offload/base", ["sleep", "0.3"], each=[{}] * 40, labels={"feed": "one"}, cache=False
    )

    def ended() -> int:
        return array.status().by_status.get(JobStatus.SUCCEEDED, 0)

    wait_for(lambda: ended() >= 4, 90, "four items to end")
    counts = c.broker.arrays.counts(array.info)
    assert len(counts.live) <= 4 * 2, counts  # at most 4 x (two slots) live, not 36
    assert counts.fed < 40
    array.cancel()


def test_an_array_of_two_classes_is_fed_and_counted_by_each_class(
    private_platform: Platform,
) -> None:
    c = private_platform.client
    r = c.broker.redis
    # items 0, 1, 4, 5, ... in cpu-small; 2, 3, 6, 7, ... ask for 2 CPUs: cpu-large
    each = [{"params": {"n": i}, **({"cpu": 2} if i % 4 >= 2 else {})} for i in range(40)]
    array = c.map("offload/base", ["true"], each=each, batch=2, name="mixed")
    assert c.broker.arrays.get(array.id).classes == {"cpu-small": 20, "cpu-large": 20}
    # no node: each class is fed up to two messages, in order, and a chunk is of one class
    assert array.not_fed() == (32, False)
    firsts = {}
    for queue in ("cpu-small", "cpu-large"):
        chunks = [parse_chunk(message_job(raw) or "") for raw in ready_messages(r, queue)]
        firsts[queue] = sorted(chunk[1] for chunk in chunks if chunk)
    assert firsts == {"cpu-small": [0, 4], "cpu-large": [2, 6]}
    assert [array[i].record().resource_class for i in (0, 2, 37, 38)] == [
        "cpu-small", "cpu-large", "cpu-small", "cpu-large"
    ]  # fmt: skip
    # the autoscaler counts what is left of each class as that class's work
    assert array_backlog(r) == {"cpu-small": 8, "cpu-large": 8}
    assert c.broker.feeder.feed(array.id) == 0  # both queues hold enough for their slots


def test_results_as_completed_reads_the_fed_window_and_ends_on_a_cancel(
    private_platform: Platform,
) -> None:
    c = private_platform.client
    array = c.map("offload/base", ["true"], each=[{"params": {"n": i}} for i in range(30)], cpu=2)
    assert array.not_fed() == (28, False)
    array.cancel()  # the two fed are cancelled, the 28 in the table never fed
    got = dict(array.results(timeout=10, as_completed=True))
    assert sorted(got) == list(range(30))
    assert {res.status for res in got.values()} == {JobStatus.CANCELLED}
