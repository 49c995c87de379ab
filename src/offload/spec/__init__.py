"""The job spec: what a job is, validated before anything is queued.

A :class:`JobSpec` is a frozen pydantic model with a JSON wire form
(:meth:`JobSpec.encode` / :meth:`JobSpec.decode`). Validation errors are raised as
:class:`~offload.errors.SpecError` naming the field and what was expected. This module
does no I/O: local input paths are resolved and uploaded by the producer, which then
builds the spec with content ids only.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from offload.spec.classes import (
    DEFAULT_CLASSES,
    ResourceClass,
    Resources,
    resolve_class,
)
from offload.spec.deliver import check_template
from offload.spec.names import (
    ENV_RE,
    IMAGE_RE,
    NAME_RE,
    NETWORK_RE,
    OBJECT_ID_RE,
    PLATFORM_ENV,
)
from offload.spec.problems import FieldProblem, check_utf8, spec_error
from offload.spec.refs import JOB_ID_RE, OUTPUT_REF_RE, OutputRef, parse_output_ref
from offload.spec.retry import RetryPolicy
from offload.spec.sizes import (
    MAX_MEMORY,
    MIN_MEMORY,
    GiB,
    KiB,
    MiB,
    TiB,
    format_memory,
    format_size,
    parse_memory,
    parse_size,
)
from offload.spec.uris import InputURI, is_uri, parse_uri, redact

MAX_RETRIES = 10
# The command, parameters and environment together: they travel in every job record and the
# environment reaches the container's exec (Linux refuses one string over 128 KiB and the
# whole over ~2 MiB). Large data belongs in inputs.
MAX_SPEC_VALUES = 64 * KiB
# A parameter also becomes OFFLOAD_PARAM_<NAME> only up to this size (its JSON or text);
# a larger one reaches the job through /offload/params.json only.
MAX_ENV_PARAM = 16 * KiB


def param_text(value: Any) -> str:
    """A parameter as the job sees it in ``OFFLOAD_PARAM_<NAME>``: text as is, else JSON."""
    return value if isinstance(value, str) else json.dumps(value)


JSONValue = Any


class Seal(BaseModel):
    """How the producer sealed and signed a job (:mod:`offload.cache.jobseal`).

    ``box``: the secret params' and env's values, encrypted under a key only the cluster key
    gives (the spec holds ``***`` in their place); ``sig``: the job's signature, over the job
    id and the spec as submitted; ``refs``: the inputs resolved at release, by name, with the
    output reference the signature covers.

    An array's item (:func:`offload.spec.arrays.item_spec`) is signed otherwise: ``item`` holds
    its own fields (JSON, as the producer wrote them in the array's item table) and
    ``item_sig`` their signature; the rest of its spec is the array's common spec, signed once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    box: str = ""
    sig: str = ""
    refs: dict[str, str] = Field(default_factory=dict)
    item: str = ""
    item_sig: str = ""


class JobSpec(BaseModel):
    """Everything that defines one job.

    Inputs are content ids, URIs the node that runs the job fetches (``https://``,
    ``http://``, ``s3://``, optionally pinned ``#sha256=<hex>``: :mod:`offload.spec.uris`), or
    references to another job's output (``output:<job>/<name>``) that the platform resolves
    to content ids before the job runs; ``after`` names jobs that must succeed first without
    passing data. ``deliver`` says where the node writes the outputs after a success
    (:mod:`offload.spec.deliver`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: str
    command: tuple[str, ...] | None = None
    params: dict[str, JSONValue] = Field(default_factory=dict)
    secret: frozenset[str] = frozenset()
    resources: Resources = Field(default_factory=Resources)
    inputs: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    priority: int = Field(default=0, ge=0, le=9)  # 9 first; through kombu's priority lists
    env: dict[str, str] = Field(default_factory=dict)
    # False: no network; True: full access (Docker's bridge); a name: only that Docker network,
    # which the cluster must allow (OFFLOAD_JOB_NETWORKS), checked at submit and on the worker
    network: bool | str = False
    cache: bool = True
    name: str | None = Field(default=None, min_length=1, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict)
    task: tuple[int, int] | None = None  # (index, count) of a fan-out made by Client.map
    after: tuple[str, ...] = ()  # ids of jobs that must succeed first (no data passed)
    deliver: str | None = Field(default=None, min_length=1, max_length=2048)
    seal: Seal | None = None  # sealed secrets and signature, set by the producer

    @field_validator("network")
    @classmethod
    def _network(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and (
            not NETWORK_RE.match(value) or value in ("host", "none", "bridge", "default")
        ):
            raise ValueError(
                f"expected true, false or the name of a user-defined Docker network, got {value!r}"
            )
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        expected = (
            "expected a Docker image reference like 'offload/fingerprint' or "
            f"'registry.example.com/team/tool:1.2', got {value!r}"
        )
        if len(value) > 255 or not IMAGE_RE.match(value):
            raise ValueError(expected)
        # Like Docker, the first part is a registry host only with '.', ':' or 'localhost';
        # otherwise it is part of the repository name, which must be lower case.
        first, slash, _ = value.partition("/")
        is_host = "." in first or ":" in first or first == "localhost"
        if slash and not is_host and first != first.lower():
            raise ValueError(f"{expected} (repository names are lower case)")
        return value

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = shlex.split(value)
        if value is not None and len(value) == 0:
            return None
        return value

    @field_validator("command")
    @classmethod
    def _command_args(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for i, arg in enumerate(value or ()):
            if "\x00" in arg:
                raise FieldProblem((str(i),), "must not contain NUL characters")
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        seen: dict[str, str] = {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not ENV_RE.match(key):
                raise ValueError(
                    f"parameter name {key!r} must be letters, digits and '_' "
                    "(it becomes OFFLOAD_PARAM_<NAME>)"
                )
            if key.upper() in seen:
                raise FieldProblem(
                    (key,),
                    f"clashes with {seen[key.upper()]!r}: both become OFFLOAD_PARAM_{key.upper()}",
                )
            seen[key.upper()] = key
            try:  # the wire form is JSON: keep only what survives it unchanged
                out[key] = json.loads(json.dumps(item, allow_nan=False))
            except (TypeError, ValueError):
                raise FieldProblem(
                    (key,), "expected a JSON value (str, number, bool, null, list, dict)"
                ) from None
            if isinstance(item, str) and "\x00" in item:
                raise FieldProblem((key,), "must not contain NUL characters")
        return out

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ref in value.items():
            if not NAME_RE.match(name) or name in (".", ".."):
                raise ValueError(
                    f"input name {name!r} must be a plain file name "
                    "(letters, digits, '.', '_', '-'; no '/')"
                )
            if OBJECT_ID_RE.match(ref):
                continue
            if is_uri(ref):
                try:
                    parse_uri(ref)
                except ValueError as exc:
                    raise FieldProblem((name,), str(exc)) from None
                continue
            try:
                if parse_output_ref(ref) is not None:
                    continue
            except ValueError as exc:
                raise FieldProblem((name,), str(exc)) from None
            raise FieldProblem(
                (name,),
                "expected a content id 'sha256:<64 hex digits>', a URI (https://, http://, "
                f"s3://) or another job's output 'output:<job id>/<name>', got {ref!r}",
            )
        return value

    @field_validator("after")
    @classmethod
    def _after(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, job_id in enumerate(value):
            if not JOB_ID_RE.match(job_id):
                raise FieldProblem((str(i),), f"expected a job id (32 hex digits), got {job_id!r}")
        return tuple(dict.fromkeys(value))

    # -- dependencies ------------------------------------------------------------------------

    def refs(self) -> dict[str, OutputRef]:
        """The inputs that name another job's output, by input name."""
        out = {}
        for name, ref in self.inputs.items():
            parsed = parse_output_ref(ref)
            if parsed is not None:
                out[name] = parsed
        return out

    def uris(self) -> dict[str, InputURI]:
        """The inputs given by location (fetched by the node that runs the job), by name."""
        return {name: parse_uri(ref) for name, ref in self.inputs.items() if is_uri(ref)}

    def parents(self) -> tuple[str, ...]:
        """Every job this one waits for: those its inputs name, then ``after``, once each."""
        return tuple(dict.fromkeys([r.job_id for r in self.refs().values()] + list(self.after)))

    def resolved(self, outputs: dict[str, str]) -> JobSpec:
        """This spec with each output reference replaced by ``outputs[str(ref)]``."""
        inputs = {name: outputs.get(ref, ref) for name, ref in self.inputs.items()}
        if self.seal is None:
            return self.model_copy(update={"inputs": inputs})
        # the signature covers the references: keep them beside the ids they resolved to
        done = {name: ref for name, ref in self.inputs.items() if ref in outputs}
        seal = self.seal.model_copy(update={"refs": {**self.seal.refs, **done}})
        return self.model_copy(update={"inputs": inputs, "seal": seal})

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not ENV_RE.match(key):
                raise ValueError(f"environment name {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
            if key.upper().startswith("OFFLOAD_") and key not in PLATFORM_ENV:
                raise ValueError(f"environment name {key!r}: the OFFLOAD_ prefix is reserved")
            if "\x00" in value[key]:
                raise FieldProblem((key,), "must not contain NUL characters")
        return value

    @field_validator("command", "params", "inputs", "env", "name", "labels")
    @classmethod
    def _utf8(cls, value: Any) -> Any:
        check_utf8(value)  # the wire form is UTF-8 JSON
        return value

    @field_validator("task")
    @classmethod
    def _task(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not (value[1] >= 1 and 0 <= value[0] < value[1]):
            raise ValueError(f"expected (index, count) with 0 <= index < count, got {value}")
        return value

    @model_validator(mode="after")
    def _size(self) -> JobSpec:
        """Command, params and env together under MAX_SPEC_VALUES, naming the largest part."""
        parts: list[tuple[int, tuple[str, ...]]] = [
            (len(arg.encode()) + 1, ("command", str(i))) for i, arg in enumerate(self.command or ())
        ]
        parts += [
            (len(k) + len(param_text(v).encode()), ("params", k)) for k, v in self.params.items()
        ]
        parts += [(len(k) + len(v.encode()), ("env", k)) for k, v in self.env.items()]
        total = sum(n for n, _ in parts)
        if total > MAX_SPEC_VALUES:
            size, path = max(parts)
            raise FieldProblem(
                path,
                f"is {format_size(size)}; the command, parameters and environment together "
                f"are {format_size(total)}, over the limit of {format_size(MAX_SPEC_VALUES)}. "
                "Large data belongs in inputs: pass it as an input (a file, content id or URI) "
                "and read it from /offload/in/<name>",
            )
        return self

    @model_validator(mode="after")
    def _deliver(self) -> JobSpec:
        if self.deliver is not None:
            try:
                check_template(self.deliver, has_index=self.task is not None)
            except ValueError as exc:
                raise FieldProblem(("deliver",), str(exc)) from None
        return self

    @model_validator(mode="after")
    def _secret_names(self) -> JobSpec:
        unknown = sorted(self.secret - set(self.params) - set(self.env))
        if unknown:
            raise FieldProblem(("secret",), f"secret names {unknown} are neither params nor env")
        return self

    # -- wire form -------------------------------------------------------------------------

    def encode(self) -> str:
        return self.model_dump_json()

    @classmethod
    def decode(cls, data: str | bytes) -> JobSpec:
        return build_spec(cls.model_validate_json, data)

    @classmethod
    def create(cls, **fields: Any) -> JobSpec:
        """Validate keyword fields into a spec, raising :class:`SpecError` on bad input."""
        return build_spec(cls.model_validate, fields)

    # -- views -----------------------------------------------------------------------------

    def display_name(self) -> str:
        return self.name or self.image

    def summary(self) -> str:
        """One line for monitors (Flower): image and params, secrets masked."""
        params = self.redacted()["params"]
        return " ".join([self.image, *(f"{k}={v}" for k, v in params.items())])

    def redacted(self) -> dict[str, Any]:
        """A JSON-able view with secret params and env values replaced by ``***``."""
        data = self.model_dump(mode="json")
        data["params"] = {k: ("***" if k in self.secret else v) for k, v in self.params.items()}
        data["env"] = {k: ("***" if k in self.secret else v) for k, v in self.env.items()}
        data["secret"] = sorted(self.secret)
        data["inputs"] = {k: redact(v) if is_uri(v) else v for k, v in self.inputs.items()}
        data.pop("seal", None)
        return data


def build_spec(validate: Any, data: Any) -> JobSpec:
    try:
        spec = validate(data)
    except ValidationError as exc:
        raise spec_error(exc) from None
    assert isinstance(spec, JobSpec)
    return spec


__all__ = [
    "DEFAULT_CLASSES",
    "JOB_ID_RE",
    "MAX_ENV_PARAM",
    "MAX_MEMORY",
    "MAX_SPEC_VALUES",
    "MIN_MEMORY",
    "OBJECT_ID_RE",
    "OUTPUT_REF_RE",
    "GiB",
    "JobSpec",
    "KiB",
    "MiB",
    "OutputRef",
    "ResourceClass",
    "Resources",
    "RetryPolicy",
    "Seal",
    "TiB",
    "build_spec",
    "format_memory",
    "format_size",
    "param_text",
    "parse_memory",
    "parse_output_ref",
    "parse_size",
    "resolve_class",
    "spec_error",
]
