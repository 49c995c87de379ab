"""The outcome journal: what a worker could not record because Redis was away.

When an attempt ends while the broker is unreachable, its outcome (status, reason, message,
exit code, outputs, timings, and the last lines of output) is written here — one small JSON
file per attempt, written atomically and fsynced, mode 0600 — and the delivery is finished.
The worker's heartbeat thread replays the journal once Redis answers again: each entry is
recorded through the ordinary transition, fenced by its attempt (an attempt that lost its job
meanwhile records nothing), then removed. A node that restarts replays what its previous run
left.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from offload.broker.records import JobRecords
from offload.broker.status import JobStatus, Reason
from offload.errors import BrokerError

log = logging.getLogger(__name__)


@dataclass
class Entry:
    job_id: str
    attempt: int
    status: str
    fields: dict[str, Any] = field(default_factory=dict)
    logs: list[tuple[str, str]] = field(default_factory=list)


class Journal:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def write(self, entry: Entry) -> Path:
        path = self.folder / f"{entry.job_id}.{entry.attempt}.json"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(entry), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dfd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        log.warning(
            "job %s attempt %d ended %s while the broker was away: journaled in %s",
            entry.job_id,
            entry.attempt,
            entry.status,
            path,
        )
        return path

    def entries(self) -> list[tuple[Path, Entry]]:
        out = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
                raw["logs"] = [tuple(x) for x in raw.get("logs", [])]
                out.append((path, Entry(**raw)))
            except (OSError, ValueError, TypeError):
                log.exception("journal entry %s unreadable; set aside", path)
                path.rename(path.with_suffix(".bad"))
        return out

    def replay(self, records: JobRecords) -> int:
        """Record every journaled outcome Redis accepts now; returns how many were recorded."""
        done = 0
        for path, e in self.entries():
            try:
                recorded = record(records, e)
            except BrokerError:
                return done  # still away: try again at the next beat
            if not recorded:
                log.warning(
                    "job %s attempt %d: journaled outcome %s refused (the job moved on)",
                    e.job_id,
                    e.attempt,
                    e.status,
                )
            done += recorded
            path.unlink(missing_ok=True)
        return done


def record(records: JobRecords, e: Entry) -> bool:
    """Write one outcome, moving through ``uploading`` first if a success ended ``running``."""
    if e.logs:
        records.append_logs(e.job_id, e.logs)
    fields = dict(e.fields)
    if fields.get("reason"):
        fields["reason"] = Reason(fields["reason"])
    status = JobStatus(e.status)
    if status is JobStatus.SUCCEEDED and records.status(e.job_id) is JobStatus.RUNNING:
        records.transition(e.job_id, JobStatus.UPLOADING, attempt=e.attempt)
    return records.transition(e.job_id, status, attempt=e.attempt, **fields)
