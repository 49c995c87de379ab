"""An array's items are its common spec with each item's own signed fields over it
(offload.producer.arraybuild): the fast path and the full path give the spec a full build
gives, item for item, and a worker refuses an item whose spec, fields or array was altered."""

from __future__ import annotations

import json
import time
import uuid
import zlib
from typing import Any

import pytest

from offload import JobOptions, SpecError
from offload.broker.arrays import ArrayInfo, unpack
from offload.cache import jobseal
from offload.errors import ForgedJob
from offload.producer.arraybuild import ArrayBuilder
from offload.producer.client import Client
from offload.spec import JobSpec, resolve_class
from offload.spec.arrays import item_id, item_spec

from .conftest import Platform

COMMON: dict[str, Any] = {
    "params": {"size": 128, "mode": "fit"},
    "secrets": {"token": "s3cr3t"},
    "env": {"COMMON": "1"},
    "labels": {"team": "photos"},
    "memory": "64m",
    "cpu": 1,
}

# (item, whether the fast path takes it)
ITEMS: list[tuple[Any, bool]] = [
    ({"params": {"photo": "img-1.jpg"}}, True),
    ({"params": {"photo": "img-2.jpg", "size": 64, "deep": {"a": [1, 2.5, None]}}}, True),
    ({"env": {"X": "1"}, "labels": {"k": "v"}, "name": "item three"}, True),
    ({"inputs": {"photo.jpg": "https://example.com/p/4.jpg"}}, True),
    ({"params": {"text": "naïve ☃"}}, True),
    ({}, True),
    ({"memory": "128m"}, False),  # another option: built in full
    ({"cpu": 2, "params": {"photo": "big.jpg"}}, False),  # another class
    ({"secrets": {"other": "x"}}, False),  # its own secret: its own box
    ({"params": {"token": "not secret"}}, False),  # over a common secret
    ({"params": {"SIZE": 1}}, None),  # clashes with "size": bad, named by the full path
    ({"inputs": {"f": "https://user:pw@example.com/x"}}, False),  # credentials: boxed
    ({"params": {"x": (1, 2)}, "labels": {"a": "b"}}, True),
    (JobOptions(params={"photo": "opts.jpg"}), False),
    ({"params": {"nul": "a\x00b"}}, None),  # bad: refused by the full path
]


def full_spec(client: Client, base: JobOptions, item: Any, i: int, n: int) -> JobSpec:
    opts = base.merged(item).replace(task=(i, n))
    return client._build(client.draft("offload/base", ["true"], opts))


def test_fast_and_full_items_make_the_spec_a_full_build_makes(
    private_platform: Platform,
) -> None:
    client = private_platform.client
    base = JobOptions.of(**COMMON)
    items = [item for item, ok in ITEMS if ok is not None]
    builder = ArrayBuilder(client, "offload/base", ["true"], base, len(items), 0)
    for item, fast in ITEMS:  # a bad item is never taken by the fast path
        assert (builder.fast(item) is not None) is bool(fast), item
    info, parts = builder.build(items)
    common = JobSpec.decode(info.spec)
    rows = unpack(parts[0])
    assert len(rows) == len(items)
    for i, item in enumerate(items):
        cls, own, sig = rows[i]
        job_id = item_id(info.id, i)
        spec = item_spec(common, own, i, sig)
        opened = jobseal.open_job(client.key, job_id, spec, lambda a: common)
        want = full_spec(client, base, item, i, len(items))
        assert opened.model_dump(exclude={"seal"}) == want.model_dump(exclude={"seal"}), item
        assert (cls or info.cls) == resolve_class(want.resources, client.settings.classes).name
    # the common secret is boxed once for the array, not in any fast item's fields
    assert common.params["token"] == jobseal.HIDDEN
    assert "s3cr3t" not in json.dumps([list(r) for r in rows])


def test_a_bad_item_is_named_by_the_full_path(private_platform: Platform) -> None:
    client = private_platform.client
    each: list[dict[str, Any]] = [{"params": {"p": i}} for i in range(5)]
    each[3] = {"params": {"nul": "a\x00b"}}
    with pytest.raises(SpecError) as info:
        client.map("offload/base", ["true"], each=each, **COMMON)
    assert info.value.field == "each[3].params.nul", info.value
    assert client.broker.redis.dbsize() == 0


@pytest.fixture
def fed(private_platform: Platform) -> tuple[Client, str, JobSpec, list[Any]]:
    """A three-item array: its id, common spec and table rows."""
    client = private_platform.client
    base = JobOptions.of(**COMMON)
    each = [{"params": {"photo": f"{i}.jpg"}} for i in range(3)]
    info, parts = ArrayBuilder(client, "offload/base", ["true"], base, 3, 0).build(each)
    return client, info.id, JobSpec.decode(info.spec), unpack(parts[0])


def test_an_altered_item_is_refused(fed: tuple[Client, str, JobSpec, list[Any]]) -> None:
    client, array_id, common, rows = fed
    key = client.key
    good = item_spec(common, rows[1][1], 1, rows[1][2])
    job = item_id(array_id, 1)
    assert jobseal.open_job(key, job, good, lambda a: common).params["token"] == "s3cr3t"

    def refused(spec: JobSpec, job_id: str = job, base: JobSpec = common) -> str:
        with pytest.raises(ForgedJob) as info:
            jobseal.open_job(key, job_id, spec, lambda a: base)
        return str(info.value)

    # the record's spec changed, its fields and MAC kept
    assert "not its array's common spec" in refused(good.model_copy(update={"image": "evil/x"}))
    # the fields changed (as if the table was), the MAC kept
    evil = json.dumps({"params": {"photo": "evil.jpg"}}, separators=(",", ":"))
    assert "not what a key holder signed" in refused(item_spec(common, evil, 1, rows[1][2]))
    # another item's fields and MAC moved onto this one
    assert "not what a key holder signed" in refused(item_spec(common, rows[0][1], 1, rows[0][2]))
    # the array's common spec changed
    base = common.model_copy(update={"command": ("sh", "-c", "evil")})
    assert "common spec is not what a key holder signed" in refused(
        item_spec(base, rows[1][1], 1, rows[1][2]), base=base
    )
    # no array to check it against
    with pytest.raises(ForgedJob, match="which is gone"):
        jobseal.open_job(key, job, good, lambda a: None)
    # the MAC dropped: not signed at all
    assert good.seal is not None
    unsigned = good.model_copy(update={"seal": good.seal.model_copy(update={"item_sig": ""})})
    assert "not signed" in refused(unsigned)


def test_a_table_part_holds_tens_of_bytes_an_item(private_platform: Platform) -> None:
    client = private_platform.client
    base = JobOptions.of(**COMMON)
    each = [{"params": {"photo": f"img-{i:07d}.jpg"}} for i in range(1000)]
    _, parts = ArrayBuilder(client, "offload/base", ["true"], base, 1000, 0).build(each)
    assert len(parts) == 1
    assert len(parts[0]) / 1000 < 60, len(parts[0])
    assert len(unpack(parts[0])) == 1000


def test_an_array_written_before_common_specs_is_still_fed(private_platform: Platform) -> None:
    """A table of (class, whole sealed spec) rows, as main wrote them before common specs
    (an array in flight across an upgrade): fed, read and checked as it was."""
    client = private_platform.client
    b = client.broker
    array_id = uuid.uuid4().hex[:24]
    specs = [
        jobseal.seal_job(
            client.key,
            item_id(array_id, i),
            JobSpec.create(image="offload/base", command=["true"], params={"n": i}, task=(i, 3)),
        )
        for i in range(3)
    ]
    rows = [["cpu-small", spec.encode()] for spec in specs]
    part = zlib.compress(json.dumps(rows, separators=(",", ":")).encode())
    info = ArrayInfo(id=array_id, count=3, name="old", image="offload/base",
                     created_at=time.time(), cls="cpu-small")  # fmt: skip
    b.submit_array(info, [part])
    assert b.records.get(item_id(array_id, 2)).spec.params == {"n": 2}  # read from the table
    b.feeder.feed(array_id, everything=True)
    for i in range(3):
        rec = b.records.get(item_id(array_id, i))
        assert rec.spec.params == {"n": i} and rec.spec.seal is not None and rec.spec.seal.sig
        assert jobseal.open_job(client.key, rec.id, rec.spec).params == {"n": i}
