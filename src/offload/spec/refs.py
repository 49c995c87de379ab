"""References to another job's output that does not exist yet (no I/O).

``output:<job id>/<output name>`` stands wherever a content id may, in a spec's inputs;
:meth:`offload.producer.job.Job.output` makes one. When the producing job succeeds, the
platform replaces each reference with the content id of that output and queues the job.
A reference can only name a job that exists when it is made, so a graph of jobs can never
hold a cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
OUTPUT_REF_RE = re.compile(r"^output:([0-9a-f]{32})/(.+)\Z", re.DOTALL)


@dataclass(frozen=True)
class OutputRef:
    """The output ``name`` of job ``job_id`` — usable as an input before it exists."""

    job_id: str
    name: str

    def __post_init__(self) -> None:
        if not JOB_ID_RE.match(self.job_id):
            raise ValueError(f"expected a job id (32 hex digits), got {self.job_id!r}")
        check_output_name(self.name)

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
