"""What this node can run: CPUs and memory (psutil), GPUs (NVML via nvidia-smi), classes."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

import psutil

from offload.config import Settings
from offload.errors import ConfigError
from offload.spec import ResourceClass, Resources, format_memory


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
                f"asks for {format_memory(res.memory)} memory, "
                f"this node has {format_memory(self.memory)}"
            )
        if res.gpus > len(self.gpus):
            return f"asks for {res.gpus} GPU(s), this node has {len(self.gpus)}"
        return None

    def serves(self, cls: ResourceClass) -> bool:
        """A node serves a class when every job of that class fits it."""
        if cls.min_gpus > len(self.gpus):
            return False
        if cls.max_gpus == 0 and cls.min_gpus == 0:
            return cls.max_cpu <= self.cpus and cls.max_memory <= self.memory
        return True


def discover_gpus() -> tuple[Gpu, ...]:
    """GPUs visible through ``nvidia-smi`` (the NVML command line); none when it is absent."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,uuid,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return parse_nvidia_smi(out)


def parse_nvidia_smi(out: str) -> tuple[Gpu, ...]:
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        index, name, uuid, mem_mib = parts
        gpus.append(Gpu(int(index), name, uuid, int(float(mem_mib)) * 1024 * 1024))
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
    works on a laptop; jobs it cannot fit fail as ``unschedulable`` with the reason.
    """
    if settings.worker_classes:
        return [settings.resource_class(name) for name in settings.worker_classes]
    chosen = [c for c in settings.classes if cap.serves(c)]
    if not chosen:
        cpu_classes = [c for c in settings.classes if c.min_gpus == 0]
        if not cpu_classes:
            raise ConfigError("no resource class fits this node; set OFFLOAD_WORKER_CLASSES")
        chosen = [min(cpu_classes, key=lambda c: (c.max_cpu, c.max_memory))]
    return chosen


def slots(settings: Settings, cap: Capacity) -> int:
    """Concurrent jobs on this node: configured, else one per CPU."""
    return settings.worker_slots or max(1, int(cap.cpus))
