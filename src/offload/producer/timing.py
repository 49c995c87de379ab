"""When a schedule fires: a cron expression (croniter) or a fixed period, in UTC.

Fire times are unix seconds. ``every`` fires at ``anchor + k * every`` (k >= 1; the anchor is
when the schedule was added); ``cron`` at the expression's times, evaluated in UTC.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import CroniterError, croniter

from offload.errors import SpecError

MIN_EVERY = 1.0  # seconds; the scheduler ticks about once a second
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
CRON_FORMS = (
    "5 fields 'minute hour day-of-month month day-of-week' (UTC), an optional 6th field "
    "for seconds, or @hourly / @daily / @weekly / @monthly / @yearly"
)


def parse_every(value: str | float | timedelta) -> float:
    """Seconds of a period: ``2s``, ``90``, ``1h30m``, ``1.5d``, a number or a timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise SpecError("every", f"expected a duration like '30s', '5m' or '1h', got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and _PART.sub("", text) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            raise SpecError(
                "every", f"expected a duration like '30s', '5m', '1h30m' or '1d', got {value!r}"
            )
    else:
        raise SpecError("every", f"expected a duration like '30s', '5m' or '1h', got {value!r}")
    if not math.isfinite(seconds) or seconds < MIN_EVERY:
        raise SpecError("every", f"must be at least {MIN_EVERY:g}s, got {value!r}")
    return seconds


def check_cron(expr: object) -> str:
    """``expr`` if croniter accepts it; otherwise a :class:`SpecError` naming ``cron``."""
    if not isinstance(expr, str) or not expr.strip():
        raise SpecError("cron", f"expected a cron expression ({CRON_FORMS}), got {expr!r}")
    expr = " ".join(expr.split())
    if len(expr.split()) > 6:
        raise SpecError("cron", f"{expr!r} has too many fields; expected {CRON_FORMS}")
    try:
        croniter(expr, 0.0).get_next(float)
    except (CroniterError, ValueError, KeyError) as exc:
        raise SpecError(
            "cron", f"invalid cron expression {expr!r}: {exc}; expected {CRON_FORMS}"
        ) from None
    return expr


@dataclass(frozen=True)
class Timing:
    """A schedule's fire times: exactly one of ``cron`` and ``every``."""

    cron: str | None = None
    every: float | None = None
    anchor: float = 0.0  # every: fire times are anchor + k * every, k >= 1

    @classmethod
    def of(cls, cron: str | None, every: str | float | timedelta | None, anchor: float) -> Timing:
        if (cron is None) == (every is None):
            raise SpecError("cron", "give exactly one of cron (--cron) and every (--every)")
        if cron is not None:
            return cls(cron=check_cron(cron), anchor=anchor)
        assert every is not None
        return cls(every=parse_every(every), anchor=round(anchor, 3))

    def next_after(self, t: float) -> float:
        """The first fire time strictly after ``t``."""
        if self.cron is not None:
            return float(croniter(self.cron, max(t, self.anchor)).get_next(float))
        assert self.every is not None
        k = max(1, math.floor((t - self.anchor) / self.every + 1e-9) + 1)
        return round(self.anchor + k * self.every, 3)

    def latest_at_or_before(self, t: float) -> float | None:
        """The last fire time at or before ``t`` (after the anchor); None if there is none."""
        if self.cron is not None:
            at = float(croniter(self.cron, t + 0.001).get_prev(float))
            return at if at > self.anchor else None
        assert self.every is not None
        k = math.floor((t - self.anchor) / self.every + 1e-9)
        return round(self.anchor + k * self.every, 3) if k >= 1 else None

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron}"
        assert self.every is not None
        return f"every {format_seconds(self.every)}"


def format_seconds(seconds: float) -> str:
    """``90`` -> ``1m30s``; ``2`` -> ``2s``; ``0.5`` -> ``0.5s``."""
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    out, left = "", int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            out += f"{left // size}{unit}"
            left %= size
    return out


def iso(t: float | None) -> str:
    """Unix seconds as ISO 8601 UTC (``2024-05-01T12:00:00Z``), milliseconds when not whole."""
    if t is None:
        return "-"
    dt = datetime.fromtimestamp(t, UTC)
    spec = "seconds" if dt.microsecond == 0 else "milliseconds"
    return dt.isoformat(timespec=spec).replace("+00:00", "Z")
