"""A spec's validation problems as one :class:`~offload.errors.SpecError` naming the field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from offload.errors import SpecError


class FieldProblem(ValueError):
    """A validator's error about one part of a field (``path`` is appended to its location)."""

    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


def check_utf8(value: Any, path: tuple[str, ...] = ()) -> None:
    """Refuse text that cannot be written as UTF-8 (lone surrogates), anywhere in ``value``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FieldProblem(path, f"{value!r} is not valid Unicode text") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_utf8(k, path)
            check_utf8(v, (*path, str(k)))
    elif isinstance(value, list | tuple | set | frozenset):
        for i, v in enumerate(value):
            check_utf8(v, (*path, str(i)))


def spec_error(exc: ValidationError) -> SpecError:
    """Turn pydantic's error list into one SpecError naming the first bad field."""
    errors = exc.errors()
    first = errors[0]
    problem = first.get("ctx", {}).get("error")
    loc = (*first["loc"], *(problem.path if isinstance(problem, FieldProblem) else ()))
    field = ".".join(str(p) for p in loc) or "spec"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return SpecError(field, message + more)
