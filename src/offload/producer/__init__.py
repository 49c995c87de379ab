"""Submitting jobs and following them: :class:`Client` and the :class:`Job` handle."""

from offload.producer.client import Client
from offload.producer.job import Job, JobResult, LogLine

__all__ = ["Client", "Job", "JobResult", "LogLine"]
