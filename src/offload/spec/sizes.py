"""Sizes with Docker's binary units: parsing and rendering (no I/O)."""

from __future__ import annotations

import math
import re

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
MIN_MEMORY = 6 * MiB  # Docker refuses smaller memory limits
MAX_MEMORY = 4 * TiB

_UNITS = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*\Z", re.IGNORECASE | re.ASCII)


def parse_memory(value: int | float | str) -> int:
    """Parse a memory size with Docker's binary units (``512m``, ``4g``, ``2GiB``) to bytes."""
    size = parse_size(value)
    if size < MIN_MEMORY:
        raise ValueError(f"must be at least 6m (Docker's minimum), got {value!r}")
    return size


def parse_size(value: int | float | str) -> int:
    """Parse a size in bytes with binary units (``512m``, ``10MiB``, ``4096``), at most 4t."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a size such as 512m, 4g or 2GiB, got {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _MEMORY_RE.match(value)
        if not match:
            raise ValueError(
                f"expected a size such as 512m, 4g or 2GiB (units b, k, m, g, t), got {value!r}"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    if math.isnan(number):
        raise ValueError(f"expected a size such as 512m, 4g or 2GiB, got {value!r}")
    if number * _UNITS[unit] > MAX_MEMORY:  # also catches inf, before int() would overflow
        raise ValueError(f"must be at most 4t, got {value!r}")
    return int(number * _UNITS[unit])


def format_memory(size: int) -> str:
    """Render bytes with the largest exact binary unit, e.g. ``2147483648`` -> ``2GiB``."""
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def format_size(size: int) -> str:
    """Bytes for people: ``200.0 KiB``, ``10 MiB`` (no decimals when exact)."""
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if size % factor == 0 else f"{value:.1f} {unit}"
    return f"{size} B"
