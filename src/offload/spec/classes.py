"""Resources a job asks for, and the resource classes (queues) that take them (no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from offload.errors import UnschedulableError
from offload.spec.sizes import GiB, MiB, format_memory, parse_memory

MAX_CPU = 1024.0
MAX_GPUS = 64


class Resources(BaseModel):
    """What a job needs from a node: CPUs (fractional), memory in bytes, whole GPUs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: float = Field(default=1.0, gt=0, le=MAX_CPU, allow_inf_nan=False)
    memory: int = Field(default=512 * MiB)
    gpus: int = Field(default=0, ge=0, le=MAX_GPUS)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return parse_memory(value)

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: float) -> float:
        if value < 0.01:
            raise ValueError("must be at least 0.01 CPU")
        return value


class ResourceClass(BaseModel):
    """A named queue and the largest (and, for GPUs, smallest) job it takes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    max_cpu: float = Field(gt=0)
    max_memory: int
    min_gpus: int = Field(default=0, ge=0)
    max_gpus: int = Field(default=0, ge=0)

    @field_validator("max_memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return parse_memory(value)

    def fits(self, res: Resources) -> bool:
        return (
            res.cpu <= self.max_cpu
            and res.memory <= self.max_memory
            and self.min_gpus <= res.gpus <= self.max_gpus
        )

    def describe(self) -> str:
        gpus = f", {self.min_gpus}-{self.max_gpus} GPU" if self.max_gpus else ""
        return f"{self.name} (<= {self.max_cpu:g} CPU, <= {format_memory(self.max_memory)}{gpus})"


DEFAULT_CLASSES: tuple[ResourceClass, ...] = (
    ResourceClass(name="cpu-small", max_cpu=1, max_memory=2 * GiB),
    ResourceClass(name="cpu-large", max_cpu=8, max_memory=32 * GiB),
    ResourceClass(name="gpu-large", max_cpu=32, max_memory=256 * GiB, min_gpus=1, max_gpus=8),
)


def resolve_class(res: Resources, classes: Sequence[ResourceClass]) -> ResourceClass:
    """The smallest class that fits ``res``; :class:`UnschedulableError` when none does."""
    fitting = [c for c in classes if c.fits(res)]
    if not fitting:
        wanted = f"{res.cpu:g} CPU, {format_memory(res.memory)}, {res.gpus} GPU"
        names = "; ".join(c.describe() for c in classes)
        raise UnschedulableError(
            "resources", f"no resource class can take {wanted}; classes: {names}"
        )
    return min(fitting, key=lambda c: (c.max_gpus, c.max_cpu, c.max_memory))
