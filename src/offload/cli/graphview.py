"""A job's place in its pipeline, as ``offload status`` shows it: its parents and children,
and for a waiting job what it waits for (a parent, or an identical job in flight)."""

from __future__ import annotations

from typing import Any

from offload.broker.arrays import Arrays
from offload.broker.core import Broker
from offload.broker.inflight import TWIN
from offload.broker.records import JobRecord, JobRecords
from offload.broker.status import JobStatus
from offload.errors import JobNotFound


def _brief(records: JobRecords, job_id: str) -> dict[str, Any]:
    if len(job_id) == 24 and records.unfed is not None:  # a whole array (array.output)
        return _array_brief(records.unfed, job_id)
    try:
        rec = records.get(job_id)
    except JobNotFound:
        return {"id": job_id, "name": None, "status": None}
    return {"id": job_id, "name": rec.name, "status": rec.status.value}


def _array_brief(arrays: Arrays, array_id: str) -> dict[str, Any]:
    """An array as a parent: every item, ``ended`` once each has."""
    try:
        info = arrays.get(array_id)
    except JobNotFound:
        return {"id": array_id, "name": None, "status": None}
    ended = arrays.counts(info).settled
    name = f"array {info.name}: {ended:,} of {info.count:,} items ended"
    return {"id": array_id, "name": name, "status": "ended" if ended >= info.count else "running"}


def graph(broker: Broker, rec: JobRecord) -> dict[str, Any]:
    """``parents`` and ``children`` (each ``{id, name, status}``, status None once expired),
    ``waiting_for`` (the parents a waiting job still waits for, or the identical job it waits
    for) and ``identical_waiting`` (identical jobs waiting for this one's outputs)."""
    pipeline = broker.pipeline
    records = broker.records
    waiting_for: list[dict[str, Any]] = []
    if rec.status is JobStatus.WAITING:
        if rec.wait.startswith(TWIN):
            waiting_for = [{**_brief(records, rec.wait.removeprefix(TWIN)), "as": "identical job"}]
        elif not rec.wait:
            waiting_for = [
                {**_brief(records, p), "as": "parent"} for p in pipeline.waiting_for(rec.id)
            ]
    return {
        "parents": [_brief(records, p) for p in pipeline.parents(rec.id)],
        "children": [_brief(records, c) for c in pipeline.children(rec.id)],
        "waiting_for": waiting_for,
        "identical_waiting": [_brief(records, t) for t in pipeline.twins(rec.id)],
    }


def _line(job: dict[str, Any]) -> str:
    if job["status"] is None:
        return f"{job['id']} (record expired)"
    return f"{job['id']}  {job['name']}  ({job['status']})"


def graph_lines(g: dict[str, Any]) -> list[str]:
    """The graph as ``offload status`` prints it (nothing for a job on its own)."""
    lines = []
    for title, key in (("parent", "parents"), ("child", "children")):
        lines += [f"{title}: {_line(j)}" for j in g[key]]
    for j in g["waiting_for"]:
        lines.append(f"waiting for {j['as']}: {_line(j)}")
    if g["waiting_for"] and g["waiting_for"][0]["as"] == "identical job":
        lines.append(
            "  (it runs the same image, command, params and inputs: its outputs are reused)"
        )
    lines += [f"identical job waiting for its outputs: {_line(j)}" for j in g["identical_waiting"]]
    return lines
