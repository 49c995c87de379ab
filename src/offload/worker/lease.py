"""Keeping an attempt's lease: a thread that renews it while the attempt runs.

The lease (:meth:`offload.broker.records.JobRecords.renew`) is what says the attempt is alive.
Renewed every quarter of its length; a renewal that fails because Redis is away is tried again
at the next tick (an outage is not a death: the sweeper extends every lease once the broker is
back). A renewal refused because the attempt no longer holds the job — the sweeper gave it to
another attempt while this worker was cut off — sets :attr:`lost`, and the attempt stops
without writing anything.
"""

from __future__ import annotations

import logging
import threading

from offload.broker.records import JobRecords
from offload.errors import BrokerError

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, records: JobRecords, job_id: str, attempt: int) -> None:
        self.records, self.job_id, self.attempt = records, job_id, attempt
        self.interval = max(0.5, records.lease_ttl / 4)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.records.renew(self.job_id, self.attempt):
                    if not self._stop.is_set():
                        log.warning(
                            "job %s attempt %d: lease lost to another attempt",
                            self.job_id,
                            self.attempt,
                        )
                        self.lost.set()
                    return
            except BrokerError as exc:
                log.warning("job %s: cannot renew the lease now (%s)", self.job_id, exc)
