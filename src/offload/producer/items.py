"""Checking a job's input references before anything is queued (no writes)."""

from __future__ import annotations

import os
from pathlib import Path

from offload.errors import SpecError
from offload.spec import OBJECT_ID_RE, OutputRef, parse_output_ref

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
    if isinstance(ref, str) and ref.startswith("s3://"):
        return
    if not isinstance(ref, (str, os.PathLike)):
        raise SpecError(f"inputs.{name}", f"expected a content id, s3:// URI or path, got {ref!r}")
    path = Path(ref)
    if not path.exists():
        raise SpecError(f"inputs.{name}", f"no such file: {str(path)!r}")
    if not path.is_file():
        raise SpecError(f"inputs.{name}", f"expected a regular file, got {str(path)!r}")
