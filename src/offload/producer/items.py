"""Checking a job's input references before anything is queued (no writes)."""

from __future__ import annotations

import os
from pathlib import Path

from offload.errors import SpecError
from offload.spec import OBJECT_ID_RE, OutputRef, parse_output_ref
from offload.spec.deliver import INPUT_PARTS, escape
from offload.spec.uris import is_uri, parse_uri

InputRef = str | os.PathLike[str] | OutputRef


def within(prefix: str, exc: SpecError) -> SpecError:
    """``exc`` (same class) with its field named under ``prefix``: ``each[2].env.X``."""
    field = f"{prefix}.{exc.field}" if exc.field else prefix
    return type(exc)(field, exc.message)


def output_ref(name: str, ref: InputRef) -> OutputRef | None:
    """The other job's output ``ref`` names, if it names one (``job.output(...)`` or
    ``output:<job id>/<name>``)."""
    if isinstance(ref, OutputRef):
        return ref
    if isinstance(ref, str) and ref.startswith("output:"):
        try:
            parsed = parse_output_ref(ref)
        except ValueError as exc:
            raise SpecError(f"inputs.{name}", str(exc)) from None
        if parsed is None:
            raise SpecError(
                f"inputs.{name}", f"expected 'output:<job id>/<output name>', got {ref!r}"
            )
        return parsed
    return None


def check_ref(name: str, ref: InputRef) -> None:
    """An input reference's form, and for a local file that it is one (no reading)."""
    if output_ref(name, ref) is not None:
        return
    if isinstance(ref, str) and ref.startswith("sha256:"):
        if not OBJECT_ID_RE.match(ref):
            raise SpecError(f"inputs.{name}", f"expected 'sha256:<64 hex digits>', got {ref!r}")
        return
    if isinstance(ref, str) and is_uri(ref):
        try:
            parse_uri(ref)  # fetched by the node that runs the job: nothing is read here
        except ValueError as exc:
            raise SpecError(f"inputs.{name}", str(exc)) from None
        return
    if not isinstance(ref, (str, os.PathLike)):
        raise SpecError(
            f"inputs.{name}", f"expected a content id, a URI or a local path, got {ref!r}"
        )
    path = Path(ref)
    if not path.exists():
        raise SpecError(f"inputs.{name}", f"no such file: {str(path)!r}")
    if not path.is_file():
        raise SpecError(f"inputs.{name}", f"expected a regular file, got {str(path)!r}")


def fill_inputs(template: str, refs: dict[str, InputRef]) -> str:
    """``template`` with its ``{input.<name>[.stem|.suffix]}`` fields filled in from the
    inputs' file names (a local file's, a URI's last path part); the node's fields left."""
    import string

    out = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SpecError("deliver", f"malformed template {template!r}: {exc}") from None
    for literal, field, spec, conversion in parsed:
        out.append(escape(literal))
        if field is None:
            continue
        if not field.startswith("input."):
            out.append("{" + field + (f"!{conversion}" if conversion else "")
                       + (f":{spec}" if spec else "") + "}")  # fmt: skip
            continue
        out.append(escape(_input_part(field, refs)))
    return "".join(out)


def _input_part(field: str, refs: dict[str, InputRef]) -> str:
    from urllib.parse import unquote, urlsplit

    _, _, rest = field.partition(".")
    name, _, part = rest.partition(".")
    if name not in refs:
        raise SpecError("deliver", f"{{{field}}}: the job has no input {name!r}")
    if part not in ("", *INPUT_PARTS):
        raise SpecError("deliver", f"{{{field}}}: expected .stem or .suffix after the input name")
    ref = refs[name]
    if output_ref(name, ref) is not None or (isinstance(ref, str) and ref.startswith("sha256:")):
        raise SpecError(
            "deliver", f"{{{field}}}: input {name!r} has no file name (not a file or URI)"
        )
    text = str(ref)
    base = Path(unquote(urlsplit(text).path)).name if is_uri(text) else Path(text).name
    if not base:
        raise SpecError("deliver", f"{{{field}}}: input {name!r} has no file name")
    p = Path(base)
    return {"": base, "name": base, "stem": p.stem, "suffix": p.suffix}[part]
