"""Schedules fired by ``Scheduler.tick(now)``: real Redis, no worker (runs stay queued, so a
run is "unfinished" until the test cancels it), no sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.broker import keys
from offload.errors import SpecError
from offload.producer.client import Client
from offload.producer.schedules import Schedules
from offload.producer.timing import iso
from offload.scheduler import Scheduler

from .conftest import make_platform

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a whole minute


@pytest.fixture
def client(redis_server: str, tmp_path: Path) -> Iterator[Client]:
    c = make_platform(redis_server, tmp_path / "home").client
    yield c
    c.broker.redis.flushdb()


@pytest.fixture
def schedules(client: Client) -> Schedules:
    return Schedules(client)


def scheduler(client: Client) -> Scheduler:
    return Scheduler(Client(client.settings), lock_ttl=30)


def spec_of(client: Client, job_id: str):  # type: ignore[no-untyped-def]
    return client.broker.records.get(job_id).spec


# -- definitions: bad input named, nothing stored ---------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"cron": "61 * * * *"}, "cron", "61 * * * *"),
        ({"cron": "* * *"}, "cron", "5 fields"),
        ({"cron": "every day"}, "cron", "invalid cron expression"),
        ({"cron": "* * * * * * * *"}, "cron", "too many fields"),
        ({"cron": "*/5 * * * *", "every": "5m"}, "cron", "exactly one"),
        ({}, "cron", "exactly one"),
        ({"every": "2x"}, "every", "'30s'"),
        ({"every": "0.5s"}, "every", "at least 1s"),
        ({"every": "2s", "overlap": "queue"}, "overlap", "skip"),
        ({"every": "2s", "memory": "lots"}, "resources.memory", ""),
        ({"every": "2s", "timeout": -1}, "timeout", ""),
        (
            {"every": "2s", "env": {"OFFLOAD_SCHEDULED_AT": "x"}},
            "env.OFFLOAD_SCHEDULED_AT",
            "scheduler",
        ),
        ({"every": "2s", "inputs": {"a": "/no/such/file"}}, "inputs.a", "no such file"),
        ({"every": "2s", "after": ["x"]}, "after", "not an option"),
        ({"every": "2s", "priority": 12}, "priority", ""),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field(
    schedules: Schedules, kwargs: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(SpecError) as err:
        schedules.add("nightly", "offload/base", ["true"], **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field, err.value
    assert words in str(err.value)
    assert schedules.ls() == []
    assert not schedules.client.broker.redis.exists(keys.schedule_state("nightly"))


def test_bad_names_and_duplicates_are_refused(schedules: Schedules) -> None:
    for bad in ("", "has space", "a/b", "-x"):
        with pytest.raises(SpecError, match="name"):
            schedules.add(bad, "offload/base", every="2s")
    schedules.add("ok", "offload/base", every="2s")
    with pytest.raises(SpecError, match="exists"):
        schedules.add("ok", "offload/base", every="3s")
    assert schedules.get("ok").schedule.timing.every == 2.0


def test_cron_next_fire_time_is_utc(schedules: Schedules) -> None:
    schedules.add("five", "offload/base", cron="*/5 * * * *", now=T0 + 61)
    assert iso(schedules.state("five").next_at) == "2027-01-15T08:05:00Z"
    schedules.add("daily", "offload/base", cron="@daily", now=T0)
    assert iso(schedules.state("daily").next_at) == "2027-01-16T00:00:00Z"


def test_local_inputs_are_uploaded_once_at_add(
    schedules: Schedules, client: Client, tmp_path: Path
) -> None:
    f = tmp_path / "data.txt"
    f.write_text("hello")
    s = schedules.add("with-input", "offload/base", every="2s", inputs={"data": f}, now=T0)
    oid = s.options["inputs"]["data"]
    assert oid.startswith("sha256:") and client.read(oid) == b"hello"
    f.unlink()  # runs use the stored copy
    fired = scheduler(client).tick(T0 + 2)
    assert spec_of(client, fired[0].job_id).inputs == {"data": oid}


# -- firing ------------------------------------------------------------------------------------


def test_every_fires_a_named_job_with_its_scheduled_time(
    schedules: Schedules, client: Client
) -> None:
    schedules.add("tick", "offload/base", ["echo", "hi"], every="2s", priority=3,
                  env={"A": "1"}, now=T0)  # fmt: skip
    s = scheduler(client)
    assert s.tick(T0 + 1.9) == []
    [fired] = s.tick(T0 + 2.1)
    assert (fired.at, fired.outcome) == (T0 + 2, "submitted")
    rec = client.broker.records.get(fired.job_id)
    assert rec.spec.name == "tick" and rec.spec.command == ("echo", "hi")
    assert rec.spec.env == {"A": "1", "OFFLOAD_SCHEDULED_AT": "2027-01-15T08:00:02Z"}
    assert rec.spec.labels == {"schedule": "tick"}
    assert rec.spec.priority == 3
    assert s.tick(T0 + 3) == []
    state = schedules.state("tick")
    assert (state.next_at, state.last_job, state.last_outcome) == (
        T0 + 4,
        fired.job_id,
        "submitted",
    )


def test_overlap_skip_makes_no_run_while_the_last_is_unfinished(
    schedules: Schedules, client: Client
) -> None:
    schedules.add("slow", "offload/base", every="2s", now=T0)
    s = scheduler(client)
    [first] = s.tick(T0 + 2)
    [skipped] = s.tick(T0 + 4)  # the first is still queued (no worker)
    assert skipped.job_id is None and skipped.outcome == f"skipped: run {first.job_id} is queued"
    info = schedules.get("slow")
    assert info.state.last_outcome.startswith("skipped") and info.last_status == "queued"
    assert info.state.last_job == first.job_id
    client.job(first.job_id).cancel()
    [second] = s.tick(T0 + 6)
    assert second.outcome == "submitted" and second.job_id != first.job_id


def test_overlap_allow_runs_anyway(schedules: Schedules, client: Client) -> None:
    schedules.add("eager", "offload/base", every="2s", overlap="allow", now=T0)
    s = scheduler(client)
    runs = [f for t in (2, 4, 6) for f in s.tick(T0 + t)]
    assert [f.outcome for f in runs] == ["submitted"] * 3
    assert len({f.job_id for f in runs}) == 3


def test_after_downtime_one_missed_run_is_made_up(schedules: Schedules, client: Client) -> None:
    schedules.add("catchup", "offload/base", every="2s", overlap="allow", now=T0)
    schedules.add("hourly", "offload/base", cron="0 * * * *", overlap="allow", now=T0)
    s = scheduler(client)
    fired = s.tick(T0 + 3 * 3600 + 101)  # down for three hours: 5400 every-2s times missed
    assert sorted((f.name, f.at) for f in fired) == [
        ("catchup", T0 + 3 * 3600 + 100),  # the latest missed time, once
        ("hourly", T0 + 3 * 3600),
    ]
    assert s.tick(T0 + 3 * 3600 + 101.5) == []
    assert schedules.state("catchup").next_at == T0 + 3 * 3600 + 102


def test_a_restarted_scheduler_never_runs_a_time_twice(
    schedules: Schedules, client: Client
) -> None:
    schedules.add("once", "offload/base", every="2s", overlap="allow", now=T0)
    a = scheduler(client)
    [fired] = a.tick(T0 + 2.5)
    client.broker.redis.delete(keys.SCHEDULER_LOCK)  # a dies; its lock expires
    b = scheduler(client)
    assert b.tick(T0 + 2.5) == []  # the same moment: T0+2 is handled
    state = schedules.state("once")
    b.schedules.client.broker.redis.hset(
        keys.schedule_state("once"), "next_at", repr(T0 + 2)
    )  # stale next_at
    assert b.tick(T0 + 3) == []  # still refused by the claim (last_at)
    assert schedules.state("once").last_job == state.last_job == fired.job_id
    [later] = b.tick(T0 + 4)
    assert later.at == T0 + 4


def test_a_scheduler_dying_between_claim_and_submit_loses_that_run_only(
    schedules: Schedules, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedules.add("fragile", "offload/base", every="2s", now=T0)
    a = scheduler(client)

    def die(*_: object, **__: object) -> None:
        raise KeyboardInterrupt  # the process stops between claim and submit

    monkeypatch.setattr(a.schedules.client, "submit", die)
    with pytest.raises(KeyboardInterrupt):
        a.tick(T0 + 2)
    client.broker.redis.delete(keys.SCHEDULER_LOCK)
    b = scheduler(client)
    assert b.tick(T0 + 2.5) == []
    assert schedules.state("fragile").last_outcome == "submitting"
    [next_run] = b.tick(T0 + 4)
    assert next_run.outcome == "submitted"


def test_one_active_scheduler_and_a_stale_one_is_fenced(
    schedules: Schedules, client: Client
) -> None:
    schedules.add("solo", "offload/base", every="2s", overlap="allow", now=T0)
    a, b = scheduler(client), scheduler(client)
    assert len(a.tick(T0 + 2)) == 1
    assert b.tick(T0 + 4) == []  # standing by: a holds the lock
    assert len(a.tick(T0 + 4)) == 1
    client.broker.redis.delete(keys.SCHEDULER_LOCK)  # a's lock expired (a paused)
    assert len(b.tick(T0 + 6)) == 1  # b took over
    sched, state = a.schedules.all()[0]
    assert a.schedules.fire(sched, state, T0 + 8, a.lock.token) is None  # a's claim refused
    assert a.tick(T0 + 8) == []
    assert [f.at for f in b.tick(T0 + 8)] == [T0 + 8]


def test_pause_resume_run_now_and_rm(schedules: Schedules, client: Client) -> None:
    schedules.add("ctl", "offload/base", every="2s", overlap="allow", now=T0)
    s = scheduler(client)
    schedules.pause("ctl")
    assert s.tick(T0 + 10) == [] and schedules.get("ctl").state.paused
    job = schedules.run("ctl", now=T0 + 11)  # run-now works while paused
    spec = spec_of(client, job.id)
    assert spec.env["OFFLOAD_SCHEDULED_AT"] == iso(T0 + 11) and spec.name == "ctl"
    assert schedules.state("ctl").last_job == job.id
    schedules.resume("ctl", now=T0 + 11)  # times missed while paused are not made up
    assert schedules.state("ctl").next_at == T0 + 12
    assert s.tick(T0 + 11.5) == []
    assert [f.at for f in s.tick(T0 + 12)] == [T0 + 12]
    schedules.rm("ctl")
    assert schedules.ls() == [] and not client.broker.redis.exists(keys.schedule_state("ctl"))
    assert s.tick(T0 + 20) == []
    for op in (schedules.rm, schedules.pause, schedules.resume, schedules.run):
        with pytest.raises(SpecError, match="no schedule named 'ctl'"):
            op("ctl")


# -- schedules that submit maps -----------------------------------------------------------------


def test_a_map_schedule_makes_an_array_each_run(
    schedules: Schedules, client: Client, tmp_path: Path
) -> None:
    f = tmp_path / "photo.jpg"
    f.write_text("pixels")
    each = [{"params": {"n": i}} for i in range(3)] + [{"inputs": {"photo": str(f)}}]
    s = schedules.add("thumbs", "offload/base", ["true"], every="2s", each=each, batch=2,
                      params={"size": 128}, now=T0)  # fmt: skip
    oid = s.each[3]["inputs"]["photo"]  # type: ignore[index]
    assert oid.startswith("sha256:") and client.read(oid) == b"pixels"  # uploaded once, now
    f.unlink()
    sch = scheduler(client)
    [first] = sch.tick(T0 + 2)
    assert first.outcome == "submitted" and first.job_id is not None
    array = client.array(first.job_id)
    assert len(array) == 4 and array.info.batch == 2 and array.info.name == "thumbs"
    rec = array[3].record()  # not fed yet (no worker): read from the array's table
    assert rec.spec.inputs == {"photo": oid} and rec.spec.params == {"size": 128}
    assert rec.spec.labels == {"schedule": "thumbs"}
    assert rec.spec.env["OFFLOAD_SCHEDULED_AT"] == "2027-01-15T08:00:02Z"
    assert array[1].record().spec.params == {"size": 128, "n": 1}
    [skipped] = sch.tick(T0 + 4)  # its items are still queued: overlap skip
    assert skipped.outcome == f"skipped: run {array.id} is running (0/4 items ended)"
    assert schedules.get("thumbs").last_status == "running 0/4"
    array.cancel()
    [second] = sch.tick(T0 + 6)
    assert second.outcome == "submitted" and second.job_id != array.id
    run_now = schedules.run("thumbs", now=T0 + 7)
    assert run_now.id != second.job_id and len(run_now) == 4  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"each": [{"params": {"n": 1}}, {"memory": "lots"}]}, "each[1].resources.memory"),
        ({"each": [{"after": ["x"]}]}, "each[0].after"),
        ({"each": [{"inputs": {"a": "/no/such/file"}}]}, "each[0].inputs.a"),
        ({"each": []}, "each"),
        ({"batch": 2}, "batch"),
        ({"each": [{}], "batch": 0}, "batch"),
    ],
)
def test_a_bad_map_schedule_is_refused_naming_the_item(
    schedules: Schedules, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(SpecError) as err:
        schedules.add("bad", "offload/base", ["true"], every="2s", **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field, err.value
    assert schedules.ls() == []
