"""The container runtime seam: what a worker needs from a container engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LogSink = Callable[[str, bytes], None]
"""Receives (``"out"`` | ``"err"``, raw bytes) as the container writes them."""


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
    gpus: int = 0
    network: bool = False
    user: str = "65534:65534"
    pids_limit: int = 512
    tmpfs_size: str = "64m"
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Exit:
    code: int
    oom_killed: bool


class Runtime(ABC):
    """Creates, runs and removes job containers. One instance per worker process."""

    @abstractmethod
    def ensure_image(self, image: str) -> str:
        """Make the image available and return its digest (image id); raise ImageMissing
        when no source has it."""

    @abstractmethod
    def create(self, req: ContainerRequest) -> str:
        """Create (not start) the container; returns its id."""

    @abstractmethod
    def start(self, container: str, sink: LogSink) -> None:
        """Start it and stream its output to ``sink`` from a background thread."""

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
