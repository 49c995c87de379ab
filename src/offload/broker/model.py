"""A job's record and timeline entries as read from Redis (schema: :mod:`offload.broker.keys`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from offload.broker.status import JobStatus, Reason
from offload.spec import JobSpec


@dataclass(frozen=True)
class Event:
    """One entry of a job's status timeline."""

    status: JobStatus
    at: float
    node: str
    attempt: int
    reason: Reason | None = None
    message: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """A job's record as stored in Redis, parsed."""

    id: str
    spec: JobSpec
    view: dict[str, Any]
    resource_class: str
    status: JobStatus
    created_at: float
    updated_at: float
    attempt: int = 0
    node: str | None = None
    container: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: Reason | None = None
    message: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    cancel_requested: bool = False
    cache_hit: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    pid: int = 0
    gpus: tuple[str, ...] = ()
    wait: str = ""  # what a waiting job waits for: "" (its parents), "limit:…", "held:…", …
    retry_at: float | None = None  # when a queued job's delayed retry is due (Redis time)
    routed_to: str = ""  # the node whose queue the last publication went to ("": its class's)
    route_why: str = ""  # why it went there, for people ("": not decided by routing)
    outputs_sig: str = ""  # the cluster key's signature of ``outputs`` (cache.jobseal)
    fetched: dict[str, str] = field(default_factory=dict)  # input URI's name -> content id
    delivered: dict[str, str] = field(default_factory=dict)  # output -> where it was delivered
    deliver_error: str = ""  # what could not be delivered ("" when all were, or none asked)

    @property
    def name(self) -> str:
        return self.spec.display_name()


OUTPUTS_SIG = "outputs_sig"  # the record field; written by the worker (cache.jobseal.OUTPUTS_SIG)


def _num(value: str | None) -> float | None:
    return float(value) if value else None


def record_fields(
    job_id: str,
    spec: JobSpec,
    cls: str,
    status: JobStatus,
    now: float | None = None,
    wait: str = "",
) -> dict[str, str]:
    """A new job record's fields (:meth:`offload.broker.records.JobRecords.create_many`; an
    array's item not fed yet, :meth:`offload.broker.arrays.Arrays.unfed_record`)."""
    at = str(time.time() if now is None else now)
    fields = {
        "id": job_id,
        "spec": spec.encode(),
        "view": json.dumps(spec.redacted()),
        "name": spec.display_name(),
        "image": spec.image,
        "class": cls,
        "status": status.value,
        "created_at": at,
        "updated_at": at,
        "attempt": "0",
    }
    if wait:
        fields["wait"] = wait
    return fields


def parse_record(job_id: str, h: dict[str, str], spec: JobSpec | None = None) -> JobRecord:
    """The record ``h`` of ``job_id``; ``spec``: its spec already decoded (a record just
    written from it), else decoded from ``h``."""
    return JobRecord(
        id=job_id,
        spec=JobSpec.decode(h["spec"]) if spec is None else spec,
        view=json.loads(h.get("view") or "{}"),
        resource_class=h.get("class", ""),
        status=JobStatus(h["status"]),
        created_at=float(h.get("created_at") or 0),
        updated_at=float(h.get("updated_at") or 0),
        attempt=int(h.get("attempt") or 0),
        node=h.get("node") or None,
        container=h.get("container") or None,
        started_at=_num(h.get("started_at")),
        finished_at=_num(h.get("finished_at")),
        exit_code=int(h["exit_code"]) if h.get("exit_code") else None,
        reason=Reason(h["reason"]) if h.get("reason") else None,
        message=h.get("message") or None,
        outputs=json.loads(h.get("outputs") or "{}"),
        cancel_requested=h.get("cancel") == "1",
        cache_hit=h.get("cache_hit") or None,
        timings=json.loads(h.get("timings") or "{}"),
        pid=int(h.get("pid") or 0),
        gpus=tuple(g for g in (h.get("gpus") or "").split(",") if g),
        wait=h.get("wait") or "",
        retry_at=_num(h.get("retry_at")),
        routed_to=h.get("routed_to") or "",
        route_why=h.get("route_why") or "",
        outputs_sig=h.get(OUTPUTS_SIG) or "",
        fetched=json.loads(h.get("fetched") or "{}"),
        delivered=json.loads(h.get("delivered") or "{}"),
        deliver_error=h.get("deliver_error") or "",
    )
