"""Every option of a job, typed, once: :class:`JobOptions`.

``Client.submit(image, command, **options)``, each item of ``Client.map`` (merged over the
map's common options), a schedule's stored options and the CLI's job flags all become one
``JobOptions``. A new option is one field here (and its flag in :mod:`offload.cli.common`);
:meth:`offload.producer.client.Client.draft` turns the options into a spec, where each value
is validated (``resources.memory: expected a size such as 512m …``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from offload.errors import SpecError
from offload.producer.items import InputRef
from offload.spec import RetryPolicy


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """What a job needs besides its image and command.

    Mappings (``inputs``, ``params``, ``secrets``, ``env``, ``labels``) are merged key by key
    when an item's options go over a map's common ones (:meth:`merged`); the other fields are
    replaced.
    """

    inputs: Mapping[str, InputRef] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, Any] = field(default_factory=dict)  # params never shown
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu: float = 1.0
    memory: int | str = "512m"
    gpus: int = 0
    timeout: float | None = None  # None: OFFLOAD_DEFAULT_TIMEOUT
    retries: int = 0
    retry: RetryPolicy | Mapping[str, Any] | None = None  # over OFFLOAD_RETRY_POLICY
    priority: int = 0
    network: bool | str = False
    cache: bool = True
    name: str | None = None
    after: Sequence[str] = ()  # job ids (or Job handles) that must succeed first
    task: tuple[int, int] | None = None  # (index, count) of a fan-out; set by ``map``
    deliver: str | None = None  # where outputs go after a success (offload.spec.deliver)

    MERGED: ClassVar[tuple[str, ...]] = ("inputs", "params", "secrets", "env", "labels")

    def __post_init__(self) -> None:
        for name in self.MERGED:
            value = getattr(self, name)
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise SpecError(name, f"expected a mapping, got {value!r}")
            object.__setattr__(self, name, dict(value))
        after = self.after
        if isinstance(after, str) or not isinstance(after, Iterable):
            raise SpecError("after", f"expected a list of jobs or job ids, got {after!r}")
        object.__setattr__(self, "after", tuple(getattr(j, "id", j) for j in after))

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def of(
        cls, options: JobOptions | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> JobOptions:
        """Options from another ``JobOptions`` or a mapping, with ``fields`` over them; an
        unknown name raises :class:`SpecError` naming it."""
        base = options if isinstance(options, JobOptions) else cls()
        given = {} if isinstance(options, JobOptions) or options is None else dict(options)
        return base.replace(**given, **fields)

    def replace(self, **fields: Any) -> JobOptions:
        check_names(fields, self.names(), "a job")
        return dataclasses.replace(self, **fields)

    def merged(self, item: JobOptions | Mapping[str, Any]) -> JobOptions:
        """``item``'s options over these: its mappings merged into ours, the rest replacing
        ours (``map``'s items over its common options)."""
        given = item.explicit() if isinstance(item, JobOptions) else dict(item)
        unknown = sorted(set(map(str, given)) - (self.names() - {"task"}))
        if unknown:  # the item as a whole is wrong: each[<i>]
            raise SpecError("", f"unknown keys {unknown}")
        changes = dict(given)
        for name in self.MERGED:
            if name in given:
                mine = getattr(self, name)
                value = given[name]
                if not isinstance(value, Mapping):
                    raise SpecError(name, f"expected a mapping, got {value!r}")
                changes[name] = {**mine, **value}
        return dataclasses.replace(self, **changes)

    # -- reading -----------------------------------------------------------------------------

    def explicit(self) -> dict[str, Any]:
        """The fields that differ from the defaults (what was asked for)."""
        default = JobOptions()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }

    def to_json(self) -> dict[str, Any]:
        """The explicit fields in JSON form (a schedule stores them); :meth:`of` reads it."""
        out: dict[str, Any] = {}
        for name, value in self.explicit().items():
            if isinstance(value, RetryPolicy):
                value = value.model_dump(mode="json")
            elif name == "inputs":
                value = {k: str(v) for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        return out


def check_names(given: Iterable[str], known: frozenset[str], what: str) -> None:
    """Refuse names that are not options (:class:`SpecError` naming the first)."""
    unknown = sorted(set(map(str, given)) - known)
    if unknown:
        raise SpecError(unknown[0], f"not an option of {what}; known: {sorted(known)}")
