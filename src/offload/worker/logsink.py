"""Forwards a container's output into the job's Redis log stream, line by line."""

from __future__ import annotations

import threading

from offload.broker.records import JobRecords

MAX_LINE = 16 * 1024


class LogForwarder:
    """Splits raw output into lines per stream and appends them in batches."""

    def __init__(self, records: JobRecords, job_id: str) -> None:
        self.records = records
        self.job_id = job_id
        self._partial: dict[str, bytes] = {"out": b"", "err": b""}
        self._lock = threading.Lock()

    def write(self, stream: str, data: bytes) -> None:
        with self._lock:
            buf = self._partial[stream] + data
            *lines, rest = buf.split(b"\n")
            while len(rest) > MAX_LINE:
                lines.append(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            self._partial[stream] = rest
        if lines:
            self.records.append_logs(
                self.job_id, [(stream, line.decode("utf-8", "replace")) for line in lines]
            )

    def flush(self) -> None:
        with self._lock:
            pending = [(s, b) for s, b in self._partial.items() if b]
            self._partial = {"out": b"", "err": b""}
        if pending:
            self.records.append_logs(
                self.job_id, [(s, b.decode("utf-8", "replace")) for s, b in pending]
            )
