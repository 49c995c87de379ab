"""The container runtime seam: what a worker needs from a container engine, and its errors.

Implementations raise only the exceptions defined here (the executor turns them into job
outcomes), :class:`EngineUnavailable` from any method when the engine does not answer within
its timeout: no call blocks forever. :mod:`offload.worker.docker_runtime` is the Docker one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LogSink = Callable[[str, bytes], None]
"""Receives (``"out"`` | ``"err"``, raw bytes) as the container writes them."""


class RuntimeFailure(Exception):
    """The engine could not do what a job needs (a job outcome, not a worker error)."""


class ImageMissing(RuntimeFailure):
    """The image is not on this node and no registry provided it."""


class StartFailed(RuntimeFailure):
    """The engine refused to create or start the container; ``gpu`` tells a missing GPU
    runtime (the job asked for GPUs the engine cannot give)."""

    def __init__(self, message: str, *, gpu: bool = False) -> None:
        super().__init__(message)
        self.gpu = gpu


class EngineUnavailable(RuntimeFailure):
    """The engine did not answer (stopped, restarting, or hung past the engine timeout): the
    platform's fault, never the job's — the attempt goes back to the queue (``engine_lost``)."""


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerRequest:
    """One container to run, with its limits and sandbox."""

    job_id: str
    attempt: int
    image: str
    command: tuple[str, ...] | None
    env: dict[str, str]
    mounts: tuple[Mount, ...]
    cpu: float
    memory: int
    gpus: tuple[str, ...] = ()
    """The GPUs (UUIDs, as ``nvidia-smi`` names them) given to this container alone."""
    network: bool | str = False
    """False: none; True: Docker's bridge; a name: only that (allowed) Docker network."""
    user: str = "65534:65534"
    pids_limit: int = 512
    tmpfs_size: str = "64m"
    labels: dict[str, str] = field(default_factory=dict)
    node: str = ""
    """The node whose attempt this is (a label: reaped once the attempt is dead)."""
    cluster: str = ""
    """The cluster's id (a label: a node reaps only its own cluster's containers)."""
    entrypoint: tuple[str, ...] | None = None
    """Replaces the image's entrypoint (None: the image's own). Job containers keep theirs; a
    warm container (:mod:`offload.worker.warm`) runs offload's agent instead."""
    init: bool = True
    """Docker's init as PID 1 (a warm container's agent is its own init)."""
    stdin: bool = False
    """Keep the container's stdin open until the first client attached to it goes away."""
    name: str = ""
    """The container's name ("": ``offload-<job>-<attempt>``)."""


@dataclass(frozen=True)
class Exit:
    code: int
    oom_killed: bool
    engine_lost: str = ""
    """Non-empty when the engine, not the container's own program, ended it (an engine
    shutdown stopped it): why, in words. The attempt is the platform's loss, not the job's."""


class Runtime(ABC):
    """Creates, runs and removes job containers. One instance per worker process."""

    @abstractmethod
    def responsive(self) -> bool:
        """Whether the engine answers now (a ping on a new connection, bounded by the engine
        timeout)."""

    @abstractmethod
    def ensure_image(self, image: str) -> str:
        """Make the image available and return its digest (image id); raise
        :class:`ImageMissing` when no source has it."""

    @abstractmethod
    def create(self, req: ContainerRequest) -> str:
        """Create (not start) the container; returns its id. Raises :class:`StartFailed`
        when the engine refuses it."""

    @abstractmethod
    def start(self, container: str, sink: LogSink) -> None:
        """Start it and stream its output to ``sink`` from a background thread. Raises
        :class:`StartFailed` (``gpu=True`` when the engine has no GPU runtime)."""

    @abstractmethod
    def wait(self, container: str, timeout: float) -> Exit | None:
        """Wait up to ``timeout`` seconds; ``None`` while it still runs."""

    @abstractmethod
    def kill(self, container: str) -> None:
        """Kill it now (no-op when it already exited)."""

    @abstractmethod
    def finish_logs(self, container: str, timeout: float) -> None:
        """Wait for the log stream of an exited container to drain."""

    @abstractmethod
    def remove(self, container: str) -> None:
        """Remove it, forcefully; no error when it is already gone."""

    @abstractmethod
    def remove_job_containers(self, job_id: str) -> list[str]:
        """Remove every container labelled with ``job_id`` (orphans of dead attempts)."""

    @abstractmethod
    def job_containers(self, cluster: str) -> list[tuple[str, str, str, int]]:
        """``(container id, node, job id, attempt)`` of every job container of ``cluster`` on
        this engine, running or not, whichever node made it."""

    @abstractmethod
    def gpus_in_use(self) -> set[str]:
        """UUIDs of the GPUs given to job containers running now, whoever started them (a
        container may outlive the worker process that started it)."""
