"""Resource classes: which queue a job lands in, through the real broker, and refusals.

No worker runs here, so every published message stays in its Redis list (kombu keeps each
queue as a list named after it) where the test can read it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from offload.broker.status import JobStatus
from offload.config import load_settings
from offload.errors import ConfigError, SpecError, UnschedulableError
from offload.spec import DEFAULT_CLASSES, GiB, ResourceClass, Resources, resolve_class

from .conftest import Platform, make_platform, ready_messages

CLASS_NAMES = ("cpu-small", "cpu-large", "gpu-large")
ABSENT_ID = "sha256:" + "0123456789abcdef" * 4


def res(cpu: float = 1, memory: int | str = "512m", gpus: int = 0) -> Resources:
    return Resources(cpu=cpu, memory=memory, gpus=gpus)


# -- resolution ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (res(), "cpu-small"),
        (res(cpu=1, memory=2 * GiB), "cpu-small"),  # exactly on the boundary
        (res(cpu=0.01, memory="6m"), "cpu-small"),
        (res(cpu=1.5), "cpu-large"),
        (res(cpu=1.001), "cpu-large"),
        (res(memory="3GiB"), "cpu-large"),
        (res(memory=2 * GiB + 1), "cpu-large"),
        (res(cpu=8, memory="32g"), "cpu-large"),  # exactly on the boundary
        (res(gpus=1), "gpu-large"),
        (res(cpu=32, memory="256g", gpus=8), "gpu-large"),  # exactly on the boundary
        (res(cpu=9, gpus=1), "gpu-large"),
    ],
)
def test_the_smallest_fitting_class_is_chosen(resources: Resources, expected: str) -> None:
    assert resolve_class(resources, DEFAULT_CLASSES).name == expected


@pytest.mark.parametrize(
    "resources",
    [
        res(cpu=64),
        res(cpu=8.5),  # more than cpu-large and no GPU asked for
        res(memory="100g"),
        res(memory=32 * GiB + 1),
        res(gpus=9),
        res(cpu=33, gpus=1),
        res(memory="257g", gpus=1),
    ],
)
def test_no_fitting_class_is_unschedulable_naming_the_classes(resources: Resources) -> None:
    with pytest.raises(UnschedulableError) as info:
        resolve_class(resources, DEFAULT_CLASSES)
    err = info.value
    assert isinstance(err, SpecError) and err.exit_code == 3
    assert err.field == "resources"
    assert "no resource class can take" in err.message
    assert "cpu-small (<= 1 CPU, <= 2GiB)" in err.message
    assert "cpu-large (<= 8 CPU, <= 32GiB)" in err.message
    assert "gpu-large (<= 32 CPU, <= 256GiB, 1-8 GPU)" in err.message


@given(
    st.floats(0.01, 64),
    st.integers(6 * 1024**2, 300 * GiB),
    st.integers(0, 10),
)
def test_resolution_matches_the_documented_classes(cpu: float, memory: int, gpus: int) -> None:
    r = res(cpu=cpu, memory=memory, gpus=gpus)
    if gpus == 0 and cpu <= 1 and memory <= 2 * GiB:
        expected: str | None = "cpu-small"
    elif gpus == 0 and cpu <= 8 and memory <= 32 * GiB:
        expected = "cpu-large"
    elif 1 <= gpus <= 8 and cpu <= 32 and memory <= 256 * GiB:
        expected = "gpu-large"
    else:
        expected = None
    if expected is None:
        with pytest.raises(UnschedulableError):
            resolve_class(r, DEFAULT_CLASSES)
    else:
        assert resolve_class(r, DEFAULT_CLASSES).name == expected


CUSTOM = [
    {"name": "mem-huge", "max_cpu": 4, "max_memory": "512g"},
    {"name": "tiny", "max_cpu": 0.5, "max_memory": "256m"},
    {"name": "gpu-one", "max_cpu": 8, "max_memory": "64g", "min_gpus": 1, "max_gpus": 1},
]


def test_custom_classes_from_offload_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_CLASSES", json.dumps(CUSTOM))
    classes = load_settings().classes
    assert [c.name for c in classes] == ["mem-huge", "tiny", "gpu-one"]
    assert classes[0].max_memory == 512 * GiB
    assert resolve_class(res(cpu=0.5, memory="256m"), classes).name == "tiny"
    assert resolve_class(res(cpu=0.5, memory="257m"), classes).name == "mem-huge"
    assert resolve_class(res(memory="100g"), classes).name == "mem-huge"
    assert resolve_class(res(gpus=1), classes).name == "gpu-one"
    with pytest.raises(UnschedulableError) as info:
        resolve_class(res(cpu=5), classes)
    assert "mem-huge" in str(info.value) and "tiny" in str(info.value)
    assert "cpu-small" not in str(info.value)
    with pytest.raises(UnschedulableError):
        resolve_class(res(gpus=2), classes)


@pytest.mark.parametrize(
    "value",
    [
        json.dumps([{"name": "x", "max_cpu": 1, "max_memory": "12zz"}]),
        json.dumps([{"name": "Bad Name", "max_cpu": 1, "max_memory": "1g"}]),
        json.dumps([{"name": "x", "max_cpu": 0, "max_memory": "1g"}]),
        json.dumps([{"name": "x", "max_cpu": 1, "max_memory": "1g", "colour": "red"}]),
    ],
)
def test_bad_offload_classes_are_a_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OFFLOAD_CLASSES", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "classes" in str(info.value)


def test_a_class_describes_itself() -> None:
    assert ResourceClass(name="x", max_cpu=2.5, max_memory="1536m").describe() == (
        "x (<= 2.5 CPU, <= 1536MiB)"
    )


# -- through the real broker -----------------------------------------------------------------


@pytest.fixture(scope="module")
def queued_platform(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """A platform with no worker: its own Redis database, shared by this module's tests.

    One database for the module (not ``private_platform`` per test): the session has only
    15 databases to hand out.
    """
    p = make_platform(redis_server, tmp_path_factory.mktemp("routing-home"))
    p.settings.home.mkdir(parents=True, exist_ok=True)
    yield p


@pytest.fixture
def broker(queued_platform: Platform) -> Iterator[redis.Redis]:
    """The platform's Redis database, emptied before each test but for kombu's bindings.

    (A producer process declares its queues once, so it would not bind them again after a
    FLUSHDB, and its messages would be dropped.)
    """
    r = redis.Redis.from_url(queued_platform.settings.redis_url, decode_responses=True)
    stale = [k for k in r.keys("*") if not k.startswith("_kombu.binding")]
    if stale:
        r.delete(*stale)
    shutil.rmtree(queued_platform.settings.store_dir, ignore_errors=True)
    yield r
    r.close()


def snapshot(r: redis.Redis) -> dict[str, Any]:
    """Every key in the database, and the length of every list (queue)."""
    keys = sorted(r.keys("*"))
    return {k: r.llen(k) if r.type(k) == "list" else r.type(k) for k in keys}


def stored_files(platform: Platform) -> list[Path]:
    """Every file in the platform's content store folder (what an upload would leave)."""
    return sorted(p for p in platform.settings.store_dir.rglob("*") if p.is_file())


def queue_lengths(r: redis.Redis) -> dict[str, int]:
    return {name: len(ready_messages(r, name)) for name in CLASS_NAMES}


def messages(r: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in ready_messages(r, queue)]


def body(message: dict[str, Any]) -> Any:
    assert message["content-type"] == "application/json"
    raw = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        raw = base64.b64decode(raw)
    return json.loads(raw)


def test_each_job_waits_in_the_queue_of_its_class(
    queued_platform: Platform, broker: redis.Redis
) -> None:
    client = queued_platform.client
    small = client.submit("offload/base", cpu=1, memory="2GiB")
    large_cpu = client.submit("offload/base", cpu=1.5)
    large_mem = client.submit("offload/base", memory="3GiB")
    gpu = client.submit("offload/base", gpus=1)

    assert queue_lengths(broker) == {"cpu-small": 1, "cpu-large": 2, "gpu-large": 1}
    queued_ids = {
        name: [m["headers"]["id"] for m in messages(broker, name)] for name in CLASS_NAMES
    }
    # kombu's Redis transport LPUSHes and consumers BRPOP: the oldest is last in the list
    assert queued_ids == {
        "cpu-small": [small.id],
        "cpu-large": [large_mem.id, large_cpu.id],
        "gpu-large": [gpu.id],
    }
    for job, cls in [(small, "cpu-small"), (large_cpu, "cpu-large"),
                     (large_mem, "cpu-large"), (gpu, "gpu-large")]:  # fmt: skip
        rec = client.job(job.id).record()
        assert (rec.status, rec.resource_class) == (JobStatus.QUEUED, cls)
        assert rec.attempt == 0
        assert job.status() is JobStatus.QUEUED
    listed = {rec.id: rec.resource_class for rec in client.jobs(10)}
    assert listed == {small.id: "cpu-small", large_cpu.id: "cpu-large",
                      large_mem.id: "cpu-large", gpu.id: "gpu-large"}  # fmt: skip


def test_the_message_is_json_naming_the_task_and_the_job(
    queued_platform: Platform, broker: redis.Redis
) -> None:
    job = queued_platform.client.submit(
        "offload/thumbnail",
        ["resize"],
        params={"size": 256},
        secrets={"token": "hunter2-S3CRET"},
        env={"MODE": "fast"},
        name="thumbs",
    )
    [raw] = ready_messages(broker, "cpu-small")
    message = json.loads(raw)
    headers = message["headers"]
    assert headers["task"] == "offload.run_job"
    assert headers["id"] == job.id
    assert headers["shadow"] == "thumbs"
    assert headers["argsrepr"] == "offload/thumbnail size=256 token=***"
    args, kwargs, _embed = body(message)
    assert (args, kwargs) == ([job.id], {})
    assert message["properties"]["delivery_info"]["routing_key"] == "cpu-small"
    # the broker's message carries only the job id: a secret never travels in it
    assert "hunter2-S3CRET" not in raw
    rec = job.record()
    assert rec.view["params"] == {"size": 256, "token": "***"}
    # the record holds the secret sealed for this job: only a worker with the key opens it
    assert rec.spec.params["token"] == "***" and rec.spec.seal is not None
    assert "hunter2-S3CRET" not in json.dumps(broker.hgetall(f"offload:job:{job.id}"))


@pytest.mark.parametrize(
    "resources",
    [{"cpu": 64}, {"memory": "100g"}, {"cpu": 8.5}, {"gpus": 9}, {"cpu": 40, "gpus": 1}],
)
def test_an_unschedulable_job_leaves_nothing_behind(
    queued_platform: Platform, broker: redis.Redis, tmp_path: Path, resources: dict[str, Any]
) -> None:
    client = queued_platform.client
    client.submit("offload/base")  # the queues exist and hold one job
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 not really a jpeg")
    before = snapshot(broker)
    files = stored_files(queued_platform)

    with pytest.raises(UnschedulableError) as info:
        client.submit("offload/base", inputs={"photo": photo}, **resources)
    assert info.value.field == "resources"
    for name in CLASS_NAMES:
        assert name in info.value.message

    assert snapshot(broker) == before
    assert queue_lengths(broker) == {"cpu-small": 1, "cpu-large": 0, "gpu-large": 0}
    assert len(broker.keys("offload:job:*")) == 2  # the one earlier job and its timeline
    assert stored_files(queued_platform) == files  # the input was not uploaded


def bad_submits(tmp_path: Path) -> list[tuple[dict[str, Any], str, str]]:
    """(submit kwargs, field named, words in the message)."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"a photo")
    return [
        ({"memory": "12zz"}, "resources.memory", "512m, 4g or 2GiB"),
        ({"memory": "12zz", "inputs": {"photo": photo}}, "resources.memory", "512m"),
        ({"cpu": 0}, "resources.cpu", "greater than 0"),
        ({"inputs": {"photo": "/no/such/file.jpg"}}, "inputs.photo", "no such file"),
        ({"inputs": {"photo": tmp_path}}, "inputs.photo", "regular file"),
        ({"inputs": {"photo": "sha256:abc"}}, "inputs.photo", "sha256:<64 hex digits>"),
        ({"inputs": {"photo": "sha256:" + "AB" * 32}}, "inputs.photo", "64 hex digits"),
        ({"inputs": {"photo": ABSENT_ID}}, "inputs.photo", "not in the store"),
        ({"inputs": {"a/b": photo}}, "inputs", "plain file name"),
        ({"timeout": 601}, "timeout", "at most 600s"),
        ({"timeout": 0}, "timeout", "greater than 0"),
        ({"env": {"OFFLOAD_JOB_ID": "x"}}, "env", "reserved"),
        ({"retries": 11}, "retries", "less than or equal to 10"),
        ({"params": {"bad-name": 1}}, "params", "OFFLOAD_PARAM_<NAME>"),
    ]


def test_a_bad_spec_is_refused_naming_the_field_and_nothing_is_queued(
    queued_platform: Platform, broker: redis.Redis, tmp_path: Path
) -> None:
    client = queued_platform.client
    client.submit("offload/base")
    before = snapshot(broker)
    client.store.has(ABSENT_ID)  # the store is open: its own bookkeeping files exist
    files = stored_files(queued_platform)
    for kwargs, field, words in bad_submits(tmp_path):
        with pytest.raises(SpecError) as info:
            client.submit("offload/base", **kwargs)
        err = info.value
        assert not isinstance(err, UnschedulableError)
        assert err.field == field, (kwargs, str(err))
        assert words in err.message, (kwargs, str(err))
        assert snapshot(broker) == before, kwargs
        assert stored_files(queued_platform) == files, kwargs  # checked before reading inputs
    with pytest.raises(SpecError) as info:
        client.submit("Not An Image")
    assert info.value.field == "image"
    assert snapshot(broker) == before


def test_a_custom_class_is_its_own_queue(queued_platform: Platform, broker: redis.Redis) -> None:
    env = {**queued_platform.env, "OFFLOAD_CLASSES": json.dumps(CUSTOM)}
    custom = dataclasses.replace(queued_platform, env=env)

    run = custom.cli("submit", "offload/base", "--memory", "48g")
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    assert len(ready_messages(broker, "mem-huge")) == 1
    assert queue_lengths(broker) == {"cpu-small": 0, "cpu-large": 0, "gpu-large": 0}
    assert json.loads(ready_messages(broker, "mem-huge")[0])["headers"]["id"] == job_id
    assert queued_platform.client.job(job_id).record().resource_class == "mem-huge"

    before = snapshot(broker)
    refused = custom.cli("submit", "offload/base", "--cpu", "6")
    assert refused.returncode == 3, refused.stderr
    assert "mem-huge" in refused.stderr and "tiny" in refused.stderr
    assert snapshot(broker) == before


# -- the command, as a user types it ---------------------------------------------------------


def test_the_cli_queues_a_good_job_and_refuses_bad_ones(
    queued_platform: Platform, broker: redis.Redis
) -> None:
    ok = queued_platform.cli("submit", "offload/base", "--cpu", "2", "--", "echo", "hi")
    assert ok.returncode == 0, ok.stderr
    job_id = ok.stdout.strip()
    assert len(job_id) == 32 and ok.stderr == ""
    assert queue_lengths(broker) == {"cpu-small": 0, "cpu-large": 1, "gpu-large": 0}
    assert queued_platform.client.job(job_id).record().spec.command == ("echo", "hi")
    before = snapshot(broker)

    memory = queued_platform.cli("submit", "offload/base", "--memory", "12zz")
    assert memory.returncode == 2, memory.stderr
    assert "error:" in memory.stderr and "resources.memory" in memory.stderr
    assert "12zz" in memory.stderr and "Traceback" not in memory.stderr
    assert memory.stdout == ""

    cpu = queued_platform.cli("submit", "offload/base", "--cpu", "64")
    assert cpu.returncode == 3, cpu.stderr
    assert "no resource class can take 64 CPU" in cpu.stderr
    for name in CLASS_NAMES:
        assert name in cpu.stderr
    assert cpu.stdout == ""

    photo = queued_platform.cli("submit", "offload/base", "--input", "photo=/no/such")
    assert photo.returncode == 2, photo.stderr
    assert "inputs.photo" in photo.stderr and "/no/such" in photo.stderr
    assert photo.stdout == ""

    assert snapshot(broker) == before
