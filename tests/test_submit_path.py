"""A single submit's path (issue 17, part 5): its record and route written in one
transaction, its message sent by a producer the broker keeps, admission read about once a
second — and the promises kept: a submit that raises leaves no job, one that returns left a
record and a message, and a refusal is always decided on a fresh read of Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from offload import CapacityError
from offload.broker import keys
from offload.broker import publish as publish_module
from offload.broker.core import Broker
from offload.broker.highwater import RedisUsage
from offload.cache.keys import init_key
from offload.config import Settings
from offload.errors import BrokerError
from offload.producer.client import Client
from tests.conftest import new_db, ready_messages


@pytest.fixture
def client(redis_server: str, tmp_path: Path) -> Client:
    settings = Settings(redis_url=f"{redis_server}/{new_db()}", home=tmp_path)
    init_key(settings.key_path)
    return Client(settings)


def r_of(c: Client) -> redis.Redis:
    return redis.Redis.from_url(c.settings.redis_url, decode_responses=True)


def test_a_submit_leaves_its_record_route_and_message(client: Client) -> None:
    job = client.submit("offload/base", ["true"], cpu=2)
    r = r_of(client)
    h = r.hgetall(keys.job(job.id))
    assert h["status"] == "queued" and h["routed_to"] == "" and h["route_why"] == ""
    assert r.zscore(keys.QUEUED, job.id) is not None
    assert [m for m in ready_messages(r, "cpu-large") if job.id in m]
    second = client.submit("offload/base", ["true"], cpu=2)  # the same warm producer
    assert [m for m in ready_messages(r, "cpu-large") if second.id in m]
    client.broker.close()  # gives the producer back; the broker can be used again
    third = client.submit("offload/base", ["true"], cpu=2)
    assert [m for m in ready_messages(r, "cpu-large") if third.id in m]


def test_a_submit_whose_message_cannot_be_sent_leaves_no_job(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: Any, **kwargs: Any) -> str:
        raise ConnectionError("broker gone")

    monkeypatch.setattr(publish_module, "send", down)
    with pytest.raises(BrokerError, match="could not queue the job"):
        client.submit("offload/base", ["true"], cpu=2)
    r = r_of(client)
    assert r.zcard(keys.JOBS_INDEX) == 0 and r.zcard(keys.QUEUED) == 0
    assert not list(r.scan_iter("offload:job:*"))


def test_admission_reads_redis_about_once_a_second_and_refuses_on_a_fresh_read(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[RedisUsage] = []
    real = Broker.redis_usage

    def counted(self: Broker) -> RedisUsage:
        reads.append(real(self))
        return reads[-1]

    monkeypatch.setattr(Broker, "redis_usage", counted)
    for _ in range(20):
        client.submit("offload/base", ["true"], cpu=2)
    assert len(reads) == 1  # one read admitted the run (well within a second)

    # Redis fills (another client, an operator): within the second the old read still
    # admits what fits with this broker's own bytes; once it is stale a fresh read refuses,
    # and the refusal is not kept: room again, the next submit is admitted.
    r = r_of(client)
    used = int(r.info("memory")["used_memory"])
    monkeypatch.setattr(Broker, "ADMIT_STALE", 0.0)
    r.config_set("maxmemory", str(used))
    try:
        with pytest.raises(CapacityError, match="high-water mark"):
            client.submit("offload/base", ["true"], cpu=2)
        with pytest.raises(CapacityError):
            client.submit("offload/base", ["true"], cpu=2)
        r.config_set("maxmemory", str(used * 100))
        client.submit("offload/base", ["true"], cpu=2)
    finally:
        r.config_set("maxmemory", "0")
    assert r.zcard(keys.JOBS_INDEX) == 21  # the refused two left nothing


def test_bytes_admitted_on_a_read_count_until_the_next(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read admits so many bytes more in all, not so many a submit: a run of submits that
    reaches the mark on one read's figures reads Redis again (and is refused if full)."""
    broker = client.broker
    usage = [RedisUsage(used=1000, max=10_000, high_water=0.8)]  # 7,000 bytes below the mark
    reads = []

    def read(self: Broker) -> RedisUsage:
        reads.append(usage[0])
        return usage[0]

    monkeypatch.setattr(Broker, "redis_usage", read)
    broker.admit(1, 3000)
    broker.admit(1, 3000)
    assert len(reads) == 1
    usage[0] = RedisUsage(used=7000, max=10_000, high_water=0.8)  # what the two took
    with pytest.raises(CapacityError):
        broker.admit(1, 3000)  # 9,000 on the first read's figures: read again, refused
    assert len(reads) == 2


def test_many_clients_in_one_process_each_submit_without_waiting_on_a_shared_pool(
    client: Client,
) -> None:
    """kombu's connection and producer pools are process-wide per broker URL (limit 10):
    a broker that kept a producer from there left the eleventh client of a process blocked
    forever on its first submit. Each broker's producer is its own now."""
    import threading

    clients = [Client(client.settings) for _ in range(15)]
    ids: list[str] = []
    # a daemon thread: a submit blocked for good must fail the test, not hang the process
    t = threading.Thread(
        target=lambda: ids.extend(c.submit("offload/base", ["true"], cpu=2).id for c in clients),
        daemon=True,
    )
    t.start()
    t.join(60)
    assert len(ids) == len(clients), f"{len(ids)} of {len(clients)} clients submitted"
    r = r_of(client)
    queued = "".join(ready_messages(r, "cpu-large"))
    assert all(job_id in queued for job_id in ids)
    for c in clients:
        c.broker.close()


def test_with_a_kombu_that_cannot_join_the_transaction_the_message_follows_it(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before kombu 5.7 a message's commands cannot be taken into the record's MULTI:
    ``send_in`` says so, and the message is sent after the EXEC, as before."""
    monkeypatch.setattr(publish_module, "send_in", lambda *args: False)
    job = client.submit("offload/base", ["true"], cpu=2)
    r = r_of(client)
    assert r.hget(keys.job(job.id), "status") == "queued"
    assert [m for m in ready_messages(r, "cpu-large") if job.id in m]
