"""Where a job's outputs are delivered: a template such as ``s3://team/thumbs/{name}/``.

Fields a node fills in after the job succeeded, per output: ``{job_id}``, ``{index}`` (the
job's ``OFFLOAD_TASK_INDEX``: only for jobs made by ``map``), ``{name}`` (the job's name, or
its id when it has none) and ``{output}`` (the output's path under ``/offload/out``). The
producer fills in ``{input.<name>}`` / ``{input.<name>.stem}`` / ``{input.<name>.suffix}``
at submit, from the input's file name (a local file, or the last part of a URI's path).
A template without ``{output}`` names a folder: each output goes under it at its path.
Only ``s3://bucket/prefix`` destinations are known today. No I/O here.
"""

from __future__ import annotations

import string
from urllib.parse import urlsplit

NODE_FIELDS = ("job_id", "index", "name", "output")
INPUT_PARTS = ("name", "stem", "suffix")
SCHEMES = ("s3",)


def fields_of(template: str) -> list[str]:
    """The field names of ``template``; ``ValueError`` for a malformed one."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed template {template!r}: {exc}") from None
    out = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"field {{{field}}}: no format spec or conversion is allowed")
        if not field:
            raise ValueError("an empty field {} names nothing; use {job_id}, {index}, …")
        out.append(field)
    return out


def check_template(template: str, has_index: bool) -> None:
    """A template the node can fill in (input fields already filled in by the producer)."""
    parts = urlsplit(template)
    if parts.scheme not in SCHEMES or not parts.netloc or "{" in parts.netloc:
        raise ValueError(
            "expected a destination like 's3://bucket/prefix/{job_id}/' "
            f"(a fixed bucket), got {template!r}"
        )
    for field in fields_of(template):
        if field.startswith("input."):
            raise ValueError(f"{{{field}}}: input fields are filled in at submit")
        if field not in NODE_FIELDS:
            raise ValueError(
                f"unknown field {{{field}}}; known: "
                + ", ".join(f"{{{f}}}" for f in NODE_FIELDS)
                + ", {input.<name>[.stem|.suffix]}"
            )
        if field == "index" and not has_index:
            raise ValueError("{index} is the job's OFFLOAD_TASK_INDEX: only jobs made by map")


def destination(template: str, values: dict[str, str]) -> str:
    """The URI of one output: the template filled in; a folder gets the output's path."""
    if "{output}" not in template:
        template = template.rstrip("/") + "/{output}"
    return template.format(**values)


def escape(value: str) -> str:
    """Text put into a template as a literal."""
    return value.replace("{", "{{").replace("}", "}}")
