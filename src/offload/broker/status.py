"""Job states and failure reasons."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """``queued → staging → running → uploading → succeeded | failed | timed_out | cancelled``."""

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


TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED}
)
ACTIVE = frozenset({JobStatus.STAGING, JobStatus.RUNNING, JobStatus.UPLOADING})


class Reason(StrEnum):
    """Why a job did not succeed — each one something a person can act on."""

    EXIT_CODE = "exit_code"  # the container exited non-zero
    OOM_KILLED = "oom_killed"  # the kernel killed it for exceeding its memory limit
    TIMEOUT = "timeout"  # it ran past spec.timeout and was killed
    IMAGE_NOT_FOUND = "image_not_found"  # not present locally and no registry had it
    INPUT_MISSING = "input_missing"  # an input id is not in the store
    OUTPUT_REJECTED = "output_rejected"  # a symlink, special file or escaping path in /offload/out
    GPU_UNAVAILABLE = "gpu_unavailable"  # GPUs asked for, no GPU runtime on the node
    UNSCHEDULABLE = "unschedulable"  # the node cannot give what the job asks for
    START_FAILED = "start_failed"  # the engine refused to create or start the container
    CANCELLED = "cancelled"  # someone cancelled it
    WORKER_ERROR = "worker_error"  # an unexpected error in the worker (a bug: report it)
    NODE_LOST = "node_lost"  # its node stopped heartbeating; the job was queued again
