"""What an attempt needs from its node, and how an attempt's steps end early."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.broker.inflight import InFlight
from offload.broker.limits import Limits
from offload.broker.nodes import NodeRegistry
from offload.broker.records import JobRecords
from offload.broker.room import Room
from offload.broker.status import JobStatus, Reason
from offload.cache.actions import ActionCache, Memo
from offload.cache.fetch import Fetcher
from offload.cache.keys import ClusterKey
from offload.cache.store import Store
from offload.spec import JobSpec, ResourceClass
from offload.worker.capacity import Capacity
from offload.worker.deliver import Deliverer
from offload.worker.gpus import GpuAllocator
from offload.worker.journal import Journal
from offload.worker.runtime import Runtime


@dataclass(frozen=True)
class AdmissionPolicy:
    """How long a job waits for room on its node, and when room is kept for it
    (:mod:`offload.worker.admission`)."""

    wait: float = 30.0  # polling for room; then back to the queue, no retry spent
    starvation: float = 60.0  # waited longer: smaller jobs stop taking the room it needs
    poll: float = 0.25

    @property
    def ttl(self) -> float:
        """How long a waiting job's note lives unrefreshed: past a hand-back's round trip."""
        return self.wait + 15.0


@dataclass
class Node:
    """What an executor needs from the node it runs on."""

    name: str
    capacity: Capacity
    records: JobRecords
    store: Store
    runtime: Runtime
    work_dir: Path
    user: str
    pids_limit: int
    tmpfs_size: str
    requeue: Callable[[str, JobSpec, int], None]
    memo: ActionCache | None = None
    registry: NodeRegistry | None = None  # the node registry: running set, live attempts
    gpus: GpuAllocator | None = None  # gives each attempt GPUs of its own
    journal: Journal | None = None  # outcomes reached while Redis is away
    cluster: str = ""  # the cluster's id, a label on every container (see LocalReaper)
    classes: Sequence[ResourceClass] = ()  # where an OOM-killed job may grow into
    limits: Limits | None = None  # concurrency limits and held classes (check_limits)
    key: ClusterKey | None = None  # checks jobs' signatures, opens their secrets (required)
    inflight: InFlight | None = None  # identical jobs in flight run once (with ``memo``)
    on_done: Callable[[str], object] = lambda job_id: None  # release/fail its dependents
    room: Room | None = None  # admission by resources (None: every job fits)
    machine: str = ""  # whose room this node shares ("" = its own name)
    admission: AdmissionPolicy = AdmissionPolicy()
    fetcher: Fetcher | None = None  # input URIs fetched into the store (worker/fetching.py)
    deliverer: Deliverer | None = None  # outputs delivered where spec.deliver says
    max_losses: int = 3  # engine losses (engine_lost requeues) before the job ends failed
    # a job (or chunk) ended here, a slot freed: feed the arrays waiting (broker/feeder.py)
    after_item: Callable[[str], object] = lambda job_id: 0


class CacheHit(Exception):
    """An earlier identical job's outputs are still fetchable: no container needed."""

    def __init__(self, memo: Memo) -> None:
        super().__init__(memo.job_id)
        self.memo = memo


class Parked(Exception):
    """The job waits (a full concurrency limit, a held class, an identical job in flight):
    its slot is given back."""


class Superseded(Exception):
    """This attempt is no longer the job's current one (fenced): stop and write nothing."""


class HandBack(Exception):
    """This node cannot run the job now (no room, no free GPU, its engine lost the
    container): back to the queue, no retry used."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class Outcome(Exception):
    """Ends an attempt early with a terminal status and reason."""

    def __init__(
        self, status: JobStatus, reason: Reason, message: str, exit_code: int | None = None
    ):
        super().__init__(message)
        self.status, self.reason, self.message, self.exit_code = status, reason, message, exit_code
