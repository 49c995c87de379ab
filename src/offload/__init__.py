"""offload: run compute-heavy batch jobs in containers with one call.

>>> from offload import Client
>>> job = Client().submit("offload/fingerprint", inputs={"photo": "cat.jpg"})  # doctest: +SKIP
>>> job.result(timeout=60).outputs  # doctest: +SKIP
{'fingerprint.json': 'sha256:…'}
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from offload.producer.array import ArrayStatus, JobArray
    from offload.producer.options import JobOptions
    from offload.producer.schedules import Schedules
    from offload.spec import JobSpec, OutputRef, Resources, RetryPolicy

# Imported on first use (PEP 562), so ``offload --help`` and other quick commands do not pay
# for Celery, boto3 and every model before they start.
_WHERE = {
    **dict.fromkeys(["JobStatus", "Reason"], "offload.broker.status"),
    **dict.fromkeys(["Settings", "load_settings"], "offload.config"),
    **dict.fromkeys(
        [
            "BrokerError",
            "CacheError",
            "CapacityError",
            "ConfigError",
            "JobError",
            "JobFailed",
            "JobNotFound",
            "JobTimeout",
            "OffloadError",
            "SpecError",
            "StoreUnavailable",
            "UnschedulableError",
        ],
        "offload.errors",
    ),
    **dict.fromkeys(["Client", "Job", "JobResult", "LogLine"], "offload.producer"),
    "JobOptions": "offload.producer.options",
    **dict.fromkeys(["ArrayStatus", "JobArray"], "offload.producer.array"),
    "Schedules": "offload.producer.schedules",
    **dict.fromkeys(["JobSpec", "OutputRef", "Resources", "RetryPolicy"], "offload.spec"),
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'offload' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "ArrayStatus",
    "BrokerError",
    "CacheError",
    "CapacityError",
    "Client",
    "ConfigError",
    "Job",
    "JobArray",
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
