"""offload: run compute-heavy batch jobs in containers with one call.

>>> from offload import Client
>>> job = Client().submit("offload/fingerprint", inputs={"photo": "cat.jpg"})  # doctest: +SKIP
>>> job.result(timeout=60).outputs  # doctest: +SKIP
{'fingerprint.json': 'sha256:…'}
"""

from offload.broker.status import JobStatus, Reason
from offload.config import Settings, load_settings
from offload.errors import (
    BrokerError,
    CacheError,
    CapacityError,
    ConfigError,
    JobError,
    JobFailed,
    JobNotFound,
    JobTimeout,
    OffloadError,
    SpecError,
    StoreUnavailable,
    UnschedulableError,
)
from offload.producer import Client, Job, JobResult, LogLine
from offload.producer.options import JobOptions
from offload.producer.schedules import Schedules
from offload.spec import JobSpec, OutputRef, Resources, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "CacheError",
    "CapacityError",
    "Client",
    "ConfigError",
    "Job",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobOptions",
    "JobResult",
    "JobSpec",
    "JobStatus",
    "JobTimeout",
    "LogLine",
    "OffloadError",
    "OutputRef",
    "Reason",
    "Resources",
    "RetryPolicy",
    "Schedules",
    "Settings",
    "SpecError",
    "StoreUnavailable",
    "UnschedulableError",
    "load_settings",
]
