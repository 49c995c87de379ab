"""The one error tree of offload.

Every error offload raises on purpose derives from :class:`OffloadError`, so callers can
catch the whole family with one clause. The CLI maps each branch to an exit code::

    OffloadError                      exit 1  (generic)
    ├── ConfigError                   exit 2  a setting or key file is wrong or missing
    │   └── WrongKey                  exit 2  an object was sealed under another cluster key
    ├── SpecError                     exit 2  a job spec was refused at submit (names the field)
    │   └── UnschedulableError        exit 3  no resource class can take the job
    ├── BrokerError                   exit 4  Redis / the queue cannot be reached or is inconsistent
    │   ├── JobNotFound               exit 4  no job record with that id
    │   └── CapacityError             exit 11 Redis is above its high-water mark: submits refused
    ├── CacheError                    exit 5  content store failures
    │   ├── ObjectNotFound            exit 5  no object with that id in the store
    │   ├── IntegrityError            exit 5  stored bytes do not match their id
    │   │   └── ForgedJob             exit 5  a job's record is unsigned, altered or replayed
    │   └── StoreUnavailable          exit 10 a remote tier (S3) cannot be reached now; retry later
    ├── RuntimeUnavailable            exit 6  the container engine (or a GPU runtime) is not usable
    ├── JobError                      exit 7  a job did not succeed
    │   ├── JobFailed                 exit 7  finished as failed / timed_out / cancelled
    │   └── JobTimeout                exit 8  waiting for the result took longer than asked
    └── ProviderError                 exit 9  a node provider could not act (autoscaler)
"""

from __future__ import annotations

from typing import Protocol


class _Outcome(Protocol):
    """What :class:`JobFailed` needs of a job's result (``offload.JobResult`` has it)."""

    @property
    def job_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def message(self) -> str | None: ...


class OffloadError(Exception):
    """Root of every error offload raises on purpose."""

    exit_code = 1


class ConfigError(OffloadError):
    """A setting, a config file or a key file is wrong or missing."""

    exit_code = 2


class WrongKey(ConfigError):
    """An object was sealed under a different cluster key than the one this process holds.

    A configuration problem (exit 2), not damage: the object is intact and is neither
    quarantined nor deleted; point ``key_file`` at the key it was sealed with.
    """

    def __init__(
        self,
        sealed_with: str,
        fingerprint: str,
        source: object = None,
        oid: str | None = None,
    ) -> None:
        self.sealed_with = sealed_with
        self.fingerprint = fingerprint
        what = f"object {oid}" if oid else "the object"
        where = f" (from {source})" if source else ""
        super().__init__(
            f"{what} was sealed with key {sealed_with} and this process has key "
            f"{fingerprint}{where}; every process of a cluster must use the same key file"
        )


class SpecError(OffloadError):
    """A job spec was refused; ``field`` names the offending field."""

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class UnschedulableError(SpecError):
    """No configured resource class can take the job's resource request."""

    exit_code = 3


class BrokerError(OffloadError):
    """The broker (Redis) cannot be reached or answered something unexpected."""

    exit_code = 4


class JobNotFound(BrokerError):
    """No job record exists for the given id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class CapacityError(BrokerError):
    """Redis is fuller than its high-water mark (``OFFLOAD_REDIS_HIGH_WATER`` of its
    ``maxmemory``): a submit is refused whole — nothing of it is queued — while workers, the
    sweeper and the archiver keep the room left to record what runs. Submits are accepted
    again by themselves once usage falls below the mark; the message says how full Redis is,
    what takes the room and which setting to raise."""

    exit_code = 11


class CacheError(OffloadError):
    """A content store failed."""

    exit_code = 5


class ObjectNotFound(CacheError):
    """No object with that id is in the store."""

    def __init__(self, object_id: str) -> None:
        self.object_id = object_id
        super().__init__(f"object {object_id} not found")


class IntegrityError(CacheError):
    """Stored bytes do not match the id they are stored under."""


class ForgedJob(IntegrityError):
    """A job's record is not signed with the cluster key, was altered after it was signed,
    or was signed for another job id: a worker refuses it, never runs it."""


class StoreUnavailable(CacheError):
    """A remote tier (S3) cannot be reached now; retrying later may succeed."""

    exit_code = 10


class RuntimeUnavailable(OffloadError):
    """The container engine, or a GPU runtime a job asked for, is not usable."""

    exit_code = 6


class JobError(OffloadError):
    """A job did not produce a successful result."""

    exit_code = 7


class JobFailed(JobError):
    """The job ended as failed, timed_out or cancelled; ``result`` says how."""

    def __init__(self, result: _Outcome) -> None:
        self.result = result
        detail = f" ({result.message})" if result.message else ""
        super().__init__(
            f"job {result.job_id} {result.status}: {result.reason or 'unknown'}{detail}"
        )


class JobTimeout(JobError):
    """Waiting for a job's result took longer than the caller allowed."""

    exit_code = 8


class ProviderError(OffloadError):
    """A node provider could not start, drain or stop a node."""

    exit_code = 9
