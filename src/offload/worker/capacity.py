"""What this node can run: CPUs and memory (psutil) less a reserve, GPUs (NVML via
nvidia-smi), classes, and how many jobs at once."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field

import psutil

from offload.config import Settings
from offload.errors import ConfigError
from offload.spec import ResourceClass, Resources, format_memory
from offload.spec.sizes import format_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    memory: int


@dataclass(frozen=True)
class Capacity:
    cpus: float
    memory: int
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)

    def can_run(self, res: Resources) -> str | None:
        """``None`` if a job of ``res`` fits this node, else why not."""
        if res.cpu > self.cpus:
            return f"asks for {res.cpu:g} CPU, this node has {self.cpus:g}"
        if res.memory > self.memory:
            return (
                f"asks for {format_memory(res.memory)} memory, this node gives jobs "
                f"{format_size(self.memory)} (its memory less OFFLOAD_NODE_MEMORY_RESERVE)"
            )
        if res.gpus > len(self.gpus):
            return f"asks for {res.gpus} GPU(s), this node has {len(self.gpus)}"
        return None

    def serves(self, cls: ResourceClass) -> bool:
        """A node serves a class when every job of that class fits it: the class's largest
        CPU, memory and GPU count, GPU classes included."""
        return (
            cls.max_cpu <= self.cpus
            and cls.max_memory <= self.memory
            and max(cls.min_gpus, cls.max_gpus) <= len(self.gpus)
        )


QUERY = "--query-gpu=index,uuid,memory.total,name"  # the name last: it may hold commas


def discover_gpus() -> tuple[Gpu, ...]:
    """GPUs visible through ``nvidia-smi`` (the NVML command line); none when it is absent."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, QUERY, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi is installed but failed (%s); this node offers no GPUs", exc)
        return ()
    return parse_nvidia_smi(out)


def parse_nvidia_smi(out: str) -> tuple[Gpu, ...]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,memory.total,name`` CSV (no header or units)."""
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",", 3)]
        try:
            index, uuid, mem_mib, name = parts
            gpus.append(Gpu(int(index), name, uuid, int(float(mem_mib)) * 1024 * 1024))
        except ValueError:
            log.warning("ignoring a line of nvidia-smi output: %r", line)
    return tuple(gpus)


def detect() -> Capacity:
    return Capacity(
        cpus=float(psutil.cpu_count(logical=True) or 1),
        memory=int(psutil.virtual_memory().total),
        gpus=discover_gpus(),
    )


def served_classes(settings: Settings, cap: Capacity) -> list[ResourceClass]:
    """Classes this node consumes: configured explicitly, else those its capacity serves.

    A node too small for every class still serves the smallest one, so the embedded default
    works on a laptop; likewise a node with GPUs too small for every GPU class serves the
    smallest GPU class it has enough GPUs for. Jobs such a node cannot fit fail as
    ``unschedulable`` with the reason.
    """
    if settings.worker_classes:
        return [settings.resource_class(name) for name in settings.worker_classes]
    chosen = [c for c in settings.classes if cap.serves(c)]
    if not chosen:
        cpu_classes = [c for c in settings.classes if c.min_gpus == 0]
        if not cpu_classes:
            raise ConfigError("no resource class fits this node; set OFFLOAD_WORKER_CLASSES")
        chosen = [min(cpu_classes, key=lambda c: (c.max_cpu, c.max_memory))]
    gpu_classes = [c for c in settings.classes if 0 < c.min_gpus <= len(cap.gpus)]
    if gpu_classes and not any(c.min_gpus > 0 for c in chosen):
        smallest = min(gpu_classes, key=lambda c: (c.max_gpus, c.max_cpu, c.max_memory))
        chosen = [c for c in settings.classes if c in chosen or c is smallest]
    return chosen


def allocatable(settings: Settings, machine: Capacity) -> Capacity:
    """What this node gives jobs: its machine's CPUs (``OFFLOAD_NODE_CPUS``, at most the
    machine's) and memory (``OFFLOAD_NODE_MEMORY``, likewise) less ``OFFLOAD_NODE_MEMORY_RESERVE``
    for the worker and the engine. CPU time is shared, so a job may ask for every CPU."""
    cpus, memory = machine.cpus, machine.memory
    if settings.node_cpus is not None:
        if settings.node_cpus > machine.cpus:
            raise ConfigError(
                f"OFFLOAD_NODE_CPUS={settings.node_cpus:g}: this machine has {machine.cpus:g}"
            )
        cpus = settings.node_cpus
    if settings.node_memory is not None:
        if settings.node_memory > machine.memory:
            raise ConfigError(
                f"OFFLOAD_NODE_MEMORY={format_memory(settings.node_memory)}: this machine has "
                f"{format_size(machine.memory)}"
            )
        memory = settings.node_memory
    left = memory - settings.node_memory_reserve
    if left < MIN_JOB_MEMORY:
        raise ConfigError(
            f"OFFLOAD_NODE_MEMORY_RESERVE={format_memory(settings.node_memory_reserve)} leaves "
            f"no memory for jobs on this node of {format_size(memory)}"
        )
    return Capacity(cpus=cpus, memory=left, gpus=machine.gpus)


MIN_JOB_MEMORY = 6 * 1024 * 1024  # Docker's smallest memory limit
MIN_SLOTS, MAX_SLOTS = 2, 64


def slots(settings: Settings, cap: Capacity) -> int:
    """The most jobs this node runs at once (its pool processes): configured, else two per
    CPU (2..64) — enough for jobs of half a CPU to fill the node. Admission by resources
    (:mod:`offload.worker.admission`) decides what runs; this only caps the count."""
    return settings.worker_slots or max(MIN_SLOTS, min(MAX_SLOTS, int(cap.cpus * 2)))
