"""References to another job's output that does not exist yet (no I/O).

``output:<job id>/<output name>`` stands wherever a content id may, in a spec's inputs;
:meth:`offload.producer.job.Job.output` makes one. When the producing job succeeds, the
platform replaces each reference with the content id of that output and queues the job.
A reference can only name a job that exists when it is made, so a graph of jobs can never
hold a cycle.

``output:<array id>/<output name>`` (an array's id: 24 hex digits;
:meth:`offload.producer.array.JobArray.output`) names that output of *every* item of an
array: one input, whatever the array's size. The job waits for the whole array, and sees
the outputs as a folder, ``/offload/in/<input>/<index><suffix of the output's name>``, one
file per item (:mod:`offload.worker.fanin`). It is never replaced by content ids: the
worker reads each item's signed outputs when it stages the job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
ARRAY_REF_ID_RE = re.compile(r"^[0-9a-f]{24}\Z")
OUTPUT_REF_RE = re.compile(r"^output:([0-9a-f]{32}|[0-9a-f]{24})/(.+)\Z", re.DOTALL)


@dataclass(frozen=True)
class OutputRef:
    """The output ``name`` of job ``job_id`` — usable as an input before it exists; of every
    item of an array when ``job_id`` is an array's id (:attr:`array`)."""

    job_id: str
    name: str

    def __post_init__(self) -> None:
        if not JOB_ID_RE.match(self.job_id) and not ARRAY_REF_ID_RE.match(self.job_id):
            raise ValueError(
                f"expected a job id (32 hex digits) or an array id (24), got {self.job_id!r}"
            )
        check_output_name(self.name)

    @property
    def array(self) -> bool:
        """Whether it names the output of every item of an array (one input, a folder)."""
        return len(self.job_id) == 24

    def __str__(self) -> str:
        return f"output:{self.job_id}/{self.name}"


def check_output_name(name: str) -> None:
    """An output is named by its path relative to ``/offload/out``."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"expected an output name, a relative path under /offload/out, got {name!r}"
        )
    if "\x00" in name or len(name) > 1024:
        raise ValueError(f"output name {name[:40]!r}… is not a valid path")


def parse_output_ref(value: str) -> OutputRef | None:
    """The reference ``value`` spells, or None when it is not one."""
    match = OUTPUT_REF_RE.match(value)
    if match is None:
        return None
    return OutputRef(match.group(1), match.group(2))
