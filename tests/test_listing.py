"""`offload ls` and `client.jobs(...)` against a real Redis and a real archive: filters,
newest first, pages with a cursor, live and archived jobs alike; bad input named."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.broker import keys
from offload.broker.core import Broker
from offload.broker.status import JobStatus, Reason
from offload.cache.archive import SealedArchive
from offload.cache.factory import open_store
from offload.cache.keys import init_key
from offload.config import Settings
from offload.errors import SpecError
from offload.producer.client import Client
from offload.spec import JobSpec
from tests.conftest import new_db, offload_cli

N = 120


@pytest.fixture
def settings(redis_server: str, tmp_path: Path) -> Settings:
    s = Settings(redis_url=f"{redis_server}/{new_db()}", home=tmp_path / "home", archive_after=0)
    s.home.mkdir(parents=True)
    init_key(s.key_path)
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    b = Broker(settings, archive=SealedArchive(lambda: open_store(settings)))
    b.redis.flushdb()
    jobs = []
    for i in range(N):
        spec = JobSpec(
            image="offload/base",
            name=f"{'etl' if i % 2 else 'train'}-{i:03d}",
            labels={"db": "orders" if i % 3 == 0 else "users"},
        )
        jobs.append((f"{i:032x}", spec, "cpu-large" if i % 4 == 0 else "cpu-small"))
    for job_id, spec, cls in jobs:  # one at a time: distinct submit times, in order
        b.records.create(job_id, spec, cls)
    for job_id, *_ in jobs[: N // 2]:  # the older half ends and is archived
        assert b.records.transition(job_id, JobStatus.CANCELLED, reason=Reason.CANCELLED)
    b.records.archive.batch = 25
    while b.records.archive.run(b.server_time()).archived:
        pass
    assert b.redis.hlen(keys.ARCHIVE_WHERE) == N // 2
    yield Client(settings, broker=b)
    b.redis.flushdb()


def ids(recs: list) -> list[int]:  # type: ignore[type-arg]
    return [int(r.id, 16) for r in recs]


def test_newest_first_with_every_filter_over_live_and_archived_jobs(client: Client) -> None:
    assert ids(client.jobs(5)) == [119, 118, 117, 116, 115]
    assert ids(client.jobs(200)) == list(range(N - 1, -1, -1))
    cancelled = client.jobs(200, status=["cancelled"])
    assert ids(cancelled) == list(range(N // 2 - 1, -1, -1))  # all archived
    assert ids(client.jobs(200, resource_class=["cpu-large"])) == list(range(116, -1, -4))
    assert ids(client.jobs(200, labels={"db": "orders"})) == list(range(117, -1, -3))
    assert ids(client.jobs(3, name="etl-")) == [119, 117, 115]
    mixed = client.jobs(200, status=["queued", "cancelled"], labels={"db": "orders"}, name="tr")
    assert ids(mixed) == [i for i in range(N - 1, -1, -1) if i % 3 == 0 and i % 2 == 0]
    t = {int(r.id, 16): r.created_at for r in client.jobs(200)}
    window = client.jobs(200, since=t[50], until=t[70])
    assert ids(window) == list(range(70, 49, -1))  # across the archive's edge (60)


def test_pages_with_a_cursor_walk_everything_once(client: Client) -> None:
    seen: list[int] = []
    after = None
    for _ in range(N):
        page = client.job_page(17, after=after)
        seen += ids(page.jobs)
        if page.next is None:
            break
        after = page.next
    assert seen == list(range(N - 1, -1, -1))
    filtered = client.job_page(4, labels={"db": "orders"})
    again = client.job_page(4, labels={"db": "orders"}, after=filtered.next)
    assert ids(filtered.jobs) + ids(again.jobs) == list(range(117, 92, -3))[:8]
    with pytest.raises(SpecError, match="--after"):
        client.job_page(5, after="not-a-cursor")


def test_the_cli_lists_pages_as_json_and_names_bad_options(
    client: Client, settings: Settings
) -> None:
    env = {
        **os.environ,
        "OFFLOAD_REDIS_URL": settings.redis_url,
        "OFFLOAD_HOME": str(settings.home),
    }
    out = offload_cli(env, "ls", "--json", "-n", "3", "--label", "db=orders", "--since", "1h")
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    assert [int(j["id"], 16) for j in first["jobs"]] == [117, 114, 111]
    out = offload_cli(
        env, "ls", "--json", "-n", "2", "--label", "db=orders", "--after", first["next"]
    )
    assert [int(j["id"], 16) for j in json.loads(out.stdout)["jobs"]] == [108, 105]
    tsv = offload_cli(env, "ls", "-n", "2", "--status", "cancelled", "--class", "cpu-large")
    assert tsv.returncode == 0 and [line.split("\t")[0] for line in tsv.stdout.splitlines()] == [
        f"{56:032x}",
        f"{52:032x}",
    ]
    assert "next page: offload ls --after " in tsv.stderr
    for args, option in [
        (["--since", "yesterday-ish"], "--since"),
        (["--until", "5x"], "--until"),
        (["--after", "nope"], "--after"),
        (["--label", "novalue"], "--label"),
    ]:
        bad = offload_cli(env, "ls", *args)
        assert bad.returncode != 0 and option in bad.stderr, (args, bad.stderr)


def test_an_array_is_one_member_of_the_index_and_lists_as_its_items(client: Client) -> None:
    b = client.broker
    r = b.redis
    before = r.zcard(keys.JOBS_INDEX)
    array = client.map("offload/base", ["true"], each=[{"params": {"n": i}} for i in range(30)])
    assert b.feeder.feed(array.id, everything=True) == 28  # two fed at submit
    single = client.submit("offload/base", ["true"], name="after-the-array")
    assert r.zcard(keys.JOBS_INDEX) == before + 2  # the array's one member, the single job's
    items = [job.id for job in reversed(list(array))]  # last first, as a listing walks them
    listed = [rec.id for rec in client.jobs(500)]
    assert listed[:31] == [single.id, *items]
    assert len(listed) == N + 31
    seen: list[str] = []  # pages of 7 cross the array's items once, in order
    after = None
    while True:
        page = client.job_page(7, after=after)
        seen += [rec.id for rec in page.jobs]
        if page.next is None:
            break
        after = page.next
    assert seen == listed
    # --array walks that array alone, paged by item
    assert [rec.id for rec in client.jobs(100, array=array.id)] == items
    first = client.job_page(4, array=array.id)
    second = client.job_page(4, array=array.id, after=first.next)
    assert [rec.id for rec in first.jobs + second.jobs] == items[:8]
    # ended and archived items are still listed, through the array's archive index
    for job in array[:10]:
        assert b.records.transition(job.id, JobStatus.CANCELLED, reason=Reason.CANCELLED)
    while b.records.archive.run(b.server_time()).archived:
        pass
    assert not r.exists(keys.job(array[0].id))
    cancelled = client.jobs(100, array=array.id, status=["cancelled"])
    assert [rec.id for rec in cancelled] == items[-10:]
    # an array not wholly fed lists the items fed so far
    each = [{"params": {"n": i}} for i in range(10)]
    part = client.map("offload/base", ["true"], each=each, cpu=2)  # an empty queue: 2 fed
    assert part.not_fed() == (8, False)
    assert [rec.id for rec in client.jobs(100, array=part.id)] == [part[1].id, part[0].id]
    # an expired array's member leaves the index as a walk meets it
    r.delete(keys.array(part.id))
    assert client.jobs(100, array=part.id) == []
    client.jobs(500)
    assert r.zscore(keys.JOBS_INDEX, part.id) is None
