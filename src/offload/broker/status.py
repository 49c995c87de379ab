"""The job state machine: states, failure reasons and the one table of allowed transitions.

::

    waiting ──▶ queued ──▶ staging ──▶ running ──▶ uploading ──▶ succeeded
       │          ▲  │        │  │        │  │         │  │
       │          │  │        │  └────────┼──┴─────────┼──┴──▶ failed | timed_out | cancelled
       │          │  └──▶ cancelled       │            │
       │          └───────────────────────┴────────────┘  (retry, node or engine lost, handed back)
       └──▶ failed (upstream_failed) | cancelled

Every write of a job's status goes through :meth:`offload.broker.records.JobRecords.transition`
(or ``begin_attempt``), which checks the move against :data:`TRANSITIONS` inside the same Lua
script that makes it; the scripts get their sets from here, never from literals.

* ``waiting``: has unfinished parents, or is over a concurrency limit, or its class is held,
  or an identical job is in flight; the record's ``wait`` field says which
  (``parents`` when empty). Published when released.
* ``queued``: its message is on a queue (a class queue or a node queue).
* ``staging`` / ``running`` / ``uploading``: an attempt holds it under a lease its worker renews
  (the *active* states). A delivery of an active job never starts a second attempt: when the
  attempt's worker dies, its lease expires and the sweeper puts the job back to ``queued``.
* ``succeeded`` / ``failed`` / ``timed_out`` / ``cancelled``: terminal; nothing follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class JobStatus(StrEnum):
    WAITING = "waiting"
    QUEUED = "queued"
    STAGING = "staging"
    RUNNING = "running"
    UPLOADING = "uploading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        return self in ACTIVE


TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED}
)
ACTIVE = frozenset({JobStatus.STAGING, JobStatus.RUNNING, JobStatus.UPLOADING})
PENDING = frozenset({JobStatus.WAITING, JobStatus.QUEUED})  # no attempt holds the job

_ENDINGS = frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED})

# Which state may follow which. ``begin_attempt`` is the one way into ``staging``;
# everything else is ``transition``.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.WAITING: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.STAGING, JobStatus.FAILED, JobStatus.CANCELLED}),
    # staging → waiting: the attempt found it must wait (a concurrency limit, a held class, an
    # identical job in flight) and gives its slot back; the job says what it waits for.
    JobStatus.STAGING: frozenset(
        {JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.WAITING, JobStatus.SUCCEEDED} | _ENDINGS
    ),
    JobStatus.RUNNING: frozenset({JobStatus.UPLOADING, JobStatus.QUEUED} | _ENDINGS),
    JobStatus.UPLOADING: frozenset({JobStatus.SUCCEEDED, JobStatus.QUEUED} | _ENDINGS),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def sources(to: JobStatus) -> frozenset[JobStatus]:
    """The states a job may be in for a move to ``to``."""
    return frozenset(s for s, targets in TRANSITIONS.items() if to in targets)


def allowed(frm: JobStatus, to: JobStatus) -> bool:
    return to in TRANSITIONS[frm]


def wire(states: frozenset[JobStatus]) -> str:
    """A set of states as the Lua scripts receive it: ``,queued,staging,`` (sorted)."""
    return "," + ",".join(sorted(s.value for s in states)) + ","


class Reason(StrEnum):
    """Why a job did not succeed, or why it went back to the queue — each one actionable."""

    EXIT_CODE = "exit_code"  # the container exited non-zero
    OOM_KILLED = "oom_killed"  # the kernel killed it for exceeding its memory limit
    TIMEOUT = "timeout"  # it ran past spec.timeout and was killed
    IMAGE_NOT_FOUND = "image_not_found"  # not present locally and no registry had it
    INPUT_MISSING = "input_missing"  # an input id is not in the store
    OUTPUT_REJECTED = "output_rejected"  # a symlink, special file or escaping path in /offload/out
    GPU_UNAVAILABLE = "gpu_unavailable"  # GPUs asked for, no GPU runtime (or no free GPU)
    UNSCHEDULABLE = "unschedulable"  # the node cannot give what the job asks for
    NO_ROOM = "no_room"  # its node's machine had no free room for it for a while; queued again
    START_FAILED = "start_failed"  # the engine refused to create or start the container
    CANCELLED = "cancelled"  # someone cancelled it
    WORKER_ERROR = "worker_error"  # an unexpected error in the worker (a bug: report it)
    NODE_LOST = "node_lost"  # its node or worker process died; the job was queued again
    # its node's container engine stopped, restarted or hung under it (the container was
    # stopped by the engine, not by its own program), or could not start it: queued again,
    # spending no retry; after OFFLOAD_MAX_NODE_LOSSES such losses the job ends failed
    ENGINE_LOST = "engine_lost"
    HANDED_BACK = "handed_back"  # its worker was stopped (offload down --force); queued again
    UPSTREAM_FAILED = "upstream_failed"  # a parent job failed, timed out or was cancelled
    # its record is unsigned, altered, or replayed under another id: refused, never run (a
    # sign that someone without the cluster key writes to Redis; see docs/security.md)
    FORGED = "forged"


__all__ = [
    "ACTIVE",
    "PENDING",
    "TERMINAL",
    "TRANSITIONS",
    "JobStatus",
    "Reason",
    "allowed",
    "sources",
    "wire",
]
