"""Forwards a container's output into the job's Redis log stream, line by line.

The stream is capped in bytes for the whole job (:mod:`offload.broker.logs`); once Redis says
the log is truncated, the rest of this attempt's output is read and dropped here, unsent.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque

from offload.broker.records import JobRecords
from offload.errors import BrokerError

# A longer line is split into entries of this size: 64 bytes under 16 KiB, so one entry and its
# listpack header fit the allocator's 16 KiB class (Redis holds ~1.03x the bytes, not 1.27x).
MAX_LINE = 16 * 1024 - 64
TAIL = 50  # last lines kept in memory: the journal records them when Redis is away


class LogForwarder:
    """Splits raw output into lines per stream and appends them in batches."""

    def __init__(self, records: JobRecords, job_id: str) -> None:
        self.records = records
        self.job_id = job_id
        self._partial: dict[str, bytes] = {"out": b"", "err": b""}
        self._lock = threading.Lock()
        self._tail: deque[tuple[str, str]] = deque(maxlen=TAIL)
        self.truncated = False  # the job's log reached its byte cap: drop the rest

    def tail(self) -> list[tuple[str, str]]:
        """The last lines of output (for the journal, when Redis cannot take them)."""
        with self._lock:
            return list(self._tail)

    def write(self, stream: str, data: bytes) -> None:
        if self.truncated:
            return
        with self._lock:
            buf = self._partial[stream] + data
            *lines, rest = buf.split(b"\n")
            while len(rest) > MAX_LINE:
                lines.append(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            self._partial[stream] = rest
        if lines:
            self._send([(stream, line.decode("utf-8", "replace")) for line in lines])

    def flush(self) -> None:
        with self._lock:
            pending = [(s, b) for s, b in self._partial.items() if b]
            self._partial = {"out": b"", "err": b""}
        if pending:
            self._send([(s, b.decode("utf-8", "replace")) for s, b in pending])

    def _send(self, lines: list[tuple[str, str]]) -> None:
        if self.truncated:
            return
        with self._lock:
            self._tail.extend(lines)
        # Redis away: the job runs on; its last lines go to the journal
        with contextlib.suppress(BrokerError):
            if self.records.append_logs(self.job_id, lines):
                self.truncated = True
