"""A real worker refuses an array item that Redis changed: its fed record, its row of the item
table, or its array's common spec (the item signed once over its array: cache/jobseal.py)."""

from __future__ import annotations

import json

from offload.broker import keys
from offload.broker.arrays import pack
from offload.broker.status import JobStatus, Reason

from .conftest import Platform, wait_for


def test_a_worker_refuses_items_whose_record_or_table_row_was_altered(
    private_platform: Platform,
) -> None:
    p = private_platform
    c = p.client
    r = c.broker.redis
    each = [{"params": {"n": i}} for i in range(4)]
    # no worker yet: the submit feeds two items (a class with no node), the rest stay in the table
    array = c.map("offload/base", ["true"], each=each, cache=False, secrets={"token": "t"})
    assert array.not_fed() == (2, False)

    # item 1's record: the command changed in its spec (its fields and MAC kept)
    spec = json.loads(str(r.hget(keys.job(array[1].id), "spec")))
    spec["command"] = ["sh", "-c", "echo pwned"]
    r.hset(keys.job(array[1].id), "spec", json.dumps(spec))
    # item 3's row of the table: its fields changed, its MAC kept
    rows = c.broker.arrays.table(array.id, 0)
    cls, _, sig = rows[3]
    rows[3] = (cls, json.dumps({"params": {"n": 99}}, separators=(",", ":")), sig)
    r.set(keys.array_table(array.id, 0), pack(rows))

    p.start_worker()
    results = array.wait(timeout=120)
    assert [res.ok for res in results] == [True, False, True, False], results
    got = [(j.record().status, j.record().reason) for j in array]
    assert got[1] == (JobStatus.FAILED, Reason.FORGED), got
    assert got[3] == (JobStatus.FAILED, Reason.FORGED), got
    assert "not its array's common spec" in (array[1].record().message or "")
    assert "not what a key holder signed" in (array[3].record().message or "")


def test_a_worker_refuses_items_of_an_array_whose_common_spec_was_altered(
    private_platform: Platform,
) -> None:
    p = private_platform
    c = p.client
    r = c.broker.redis
    array = c.map("offload/base", ["true"], each=[{"params": {"n": i}} for i in range(3)],
                  cache=False)  # fmt: skip
    common = json.loads(str(r.hget(keys.array(array.id), "spec")))
    common["command"] = ["sh", "-c", "echo pwned"]
    r.hset(keys.array(array.id), "spec", json.dumps(common))
    p.start_worker()
    wait_for(lambda: array.status().done, 120, "every item to end")
    for job in array:
        rec = job.record()
        assert (rec.status, rec.reason) == (JobStatus.FAILED, Reason.FORGED), rec
