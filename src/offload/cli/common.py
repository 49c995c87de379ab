"""Shared pieces of the job commands: the client with upload progress, option parsing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from offload.cli import settings_of
from offload.errors import SpecError
from offload.producer.client import Client
from offload.producer.options import JobOptions
from offload.spec import JOB_ID_RE, OutputRef

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID  # imported where used: not by status, ls


class UploadProgress:
    """A progress bar on stderr for files over 32 MiB while they are sealed and stored."""

    THRESHOLD = 32 * 1024 * 1024

    def __init__(self) -> None:
        self.bars: dict[Path, tuple[Progress, TaskID]] = {}

    def __call__(self, path: Path, done: int, total: int) -> None:
        if total < self.THRESHOLD:
            return
        if path not in self.bars:
            from rich.progress import DownloadColumn, Progress

            bar = Progress(
                *Progress.get_default_columns(), DownloadColumn(), console=Console(stderr=True)
            )
            bar.start()
            self.bars[path] = (bar, bar.add_task(f"upload {path.name}", total=total))
        bar, task = self.bars[path]
        bar.update(task, completed=done)
        if done >= total:
            bar.stop()


def client_of(ctx: click.Context) -> Client:
    return Client(settings_of(ctx), progress=UploadProgress())


def pairs(option: str, values: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(option, f"expected KEY=VALUE, got {item!r}")
        out.append((key, value))
    return out


# ``--input NAME=JOB_ID:OUTPUT``: a value that starts with 32 hex digits and a colon names
# another job's output; anything else is a content id, an s3:// URI or a local path.
JOB_OUTPUT_RE = re.compile(r"^([0-9a-f]{32}|[0-9a-f]{24}):(.*)\Z", re.DOTALL)
INPUT_HELP = (
    "An input, mounted at /offload/in/NAME: NAME=PATH (a local file, uploaded), "
    "NAME=sha256:<id> (a stored object), NAME=https://host/path, NAME=http://…, "
    "NAME=s3://bucket/key (fetched by the node that runs the job; pin the content with "
    "#sha256=<hex>), or NAME=JOB_ID:OUTPUT — "
    "another job's output OUTPUT (its path under /offload/out), where JOB_ID is the 32 "
    "hex digits `offload submit` printed; the job then waits until that job succeeds. "
    "NAME=ARRAY:OUTPUT (ARRAY: the 24 hex digits `offload map` printed) is the output "
    "OUTPUT of every item of the array, one input: a folder, /offload/in/NAME/<index><suffix>, "
    "once every item succeeded. A value that starts with 32 (or 24) hex digits and ':' is "
    "always read so: write such a local file as ./PATH. Repeatable."
)


def parse_inputs(values: tuple[str, ...]) -> dict[str, str | OutputRef]:
    """``--input`` values: ``JOB_ID:OUTPUT`` becomes a reference to that job's output."""
    out: dict[str, str | OutputRef] = {}
    for name, value in pairs("--input", values):
        match = JOB_OUTPUT_RE.match(value)
        if match is None:
            out[name] = value
            continue
        try:
            out[name] = OutputRef(match.group(1), match.group(2))
        except ValueError as exc:
            raise SpecError(f"--input {name}", f"JOB_ID:OUTPUT {value!r}: {exc}") from None
    return out


def parse_after(values: tuple[str, ...]) -> list[str]:
    for value in values:
        if not JOB_ID_RE.match(value):
            raise SpecError("--after", f"expected a job id (32 hex digits), got {value!r}")
    return list(values)


def parse_params(values: tuple[str, ...], option: str = "--param") -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in pairs(option, values):
        if key.endswith(":"):
            try:
                params[key[:-1]] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise SpecError(f"{option} {key[:-1]}", f"K:=VALUE needs JSON: {exc}") from None
        else:
            params[key] = value
    return params


def retry_policy(
    on: str | None,
    never: str | None,
    always: str | None,
    backoff: str | None,
    memory_factor: float | None,
) -> dict[str, Any]:
    """The ``retry`` fields the retry options set (the rest come from the cluster default)."""
    policy: dict[str, Any] = {}
    if on is not None:
        policy["on"] = [r.strip() for r in on.split(",") if r.strip()]
    for option, key, value in (
        ("--retry-never", "never_exit_codes", never),
        ("--retry-always", "always_exit_codes", always),
    ):
        if value is not None:
            policy[key] = _numbers(option, value, int)
    if backoff is not None:
        parts = _numbers("--backoff", backoff, float)
        if not 1 <= len(parts) <= 3:
            raise SpecError("--backoff", f"expected INITIAL[,FACTOR[,MAX]], got {backoff!r}")
        names = ("backoff_initial", "backoff_factor", "backoff_max")
        policy.update(zip(names, parts, strict=False))
    if memory_factor is not None:
        policy["memory_factor"] = memory_factor
    return policy


def _numbers(option: str, value: str, kind: type[Any]) -> list[Any]:
    try:
        return [kind(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise SpecError(option, f"expected comma-separated numbers, got {value!r}") from None


# -- the options every job-making command takes (submit, schedule add) ------------------------

_JOB_OPTIONS = [
    click.option("--cpu", type=float, default=1.0, show_default=True, help="CPUs (fractional)."),
    click.option("--memory", default="512m", show_default=True, help="Memory: 512m, 4g, 2GiB."),
    click.option("--gpus", type=int, default=0, show_default=True),
    click.option("--param", "params", multiple=True, metavar="K=V | K:=JSON"),
    click.option("--secret", "secrets", multiple=True, metavar="K=V", help="A param never shown."),
    click.option("--env", "env", multiple=True, metavar="K=V"),
    click.option("--timeout", type=float, default=None, help="Seconds before the job is killed."),
    click.option("--retries", type=int, default=0, show_default=True, help="Retries at most."),
    click.option(
        "--retry-on",
        default=None,
        metavar="REASON,…",
        help="Failures retried (default exit_code,oom_killed,timeout,start_failed).",
    ),
    click.option("--retry-never", default=None, metavar="CODE,…", help="Exit codes never retried."),
    click.option(
        "--retry-always", default=None, metavar="CODE,…", help="Exit codes always retried."
    ),
    click.option(
        "--backoff",
        default=None,
        metavar="INITIAL[,FACTOR[,MAX]]",
        help="Seconds before retry n: min(MAX, INITIAL*FACTOR^(n-1)) (default 1,2,300).",
    ),
    click.option(
        "--memory-factor", type=float, default=None, help="Memory times this after oom_killed (2)."
    ),
    click.option("--priority", type=int, default=0, show_default=True, help="0-9, 9 first."),
    click.option(
        "--network",
        is_flag=False,
        flag_value="*",
        default=None,
        metavar="[NAME]",
        help="Network access: alone, any; with NAME, only that Docker network "
        "(one OFFLOAD_JOB_NETWORKS allows).",
    ),
    click.option(
        "--no-cache",
        is_flag=True,
        help="Run even if an identical job succeeded before or runs now.",
    ),
    click.option("--label", "labels", multiple=True, metavar="K=V"),
    click.option(
        "--deliver",
        default=None,
        metavar="TEMPLATE",
        help="After a success, write each output there (plaintext), e.g. "
        "s3://bucket/thumbs/{job_id}/ or s3://bucket/{input.photo.stem}-{output}; fields "
        "{job_id} {index} {name} {output} {input.NAME[.stem|.suffix]}.",
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


def job_options(fn: F) -> F:
    """Add the job options (resources, params, env, retries, priority, …) to a command; its
    function receives them as ``**options`` for :func:`parse_job_options`."""
    for option in reversed(_JOB_OPTIONS):
        fn = option(fn)
    return fn


# How a flag's value becomes a JobOptions field, where it is not the value itself under the
# same name; a flag named like its field (--cpu, --timeout, --priority, …) needs no entry.
_CONVERT: dict[str, Callable[[Any], dict[str, Any]]] = {
    "params": lambda v: {"params": parse_params(v)},
    "secrets": lambda v: {"secrets": parse_params(v, "--secret")},
    "env": lambda v: {"env": dict(pairs("--env", v))},
    "labels": lambda v: {"labels": dict(pairs("--label", v))},
    "network": lambda v: {"network": True if v == "*" else (v or False)},
    "no_cache": lambda v: {"cache": not v},
}
_RETRY_FLAGS = ("retry_on", "retry_never", "retry_always", "backoff", "memory_factor")


def parse_job_options(**values: Any) -> JobOptions:
    """The :class:`JobOptions` the job flags (and ``--name``, ``--input``, ``--after`` where a
    command has them, already parsed) stand for."""
    fields: dict[str, Any] = {}
    for name, value in values.items():
        if name in _RETRY_FLAGS:
            continue
        fields.update(_CONVERT[name](value) if name in _CONVERT else {name: value})
    fields["retry"] = retry_policy(*(values.get(name) for name in _RETRY_FLAGS))
    return JobOptions.of(**fields)
