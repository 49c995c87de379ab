"""Queues, routing, job records and log streams on Redis (key schema: :mod:`.keys`)."""

from offload.broker.records import Event, JobRecord, JobRecords
from offload.broker.status import JobStatus, Reason

__all__ = ["Event", "JobRecord", "JobRecords", "JobStatus", "Reason"]
