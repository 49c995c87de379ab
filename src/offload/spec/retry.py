"""How a job is retried: which failures, how many times, how soon, with how much memory.

A frozen model inside :class:`~offload.spec.JobSpec` (``spec.retry``; the count stays
``spec.retries``). The delay before retry ``n`` (1-based) is
``min(backoff_max, backoff_initial * backoff_factor ** (n - 1))``, less up to ``jitter`` of
it at random (full jitter would make the first retry instant; a fraction keeps the order of
magnitude). An ``oom_killed`` attempt runs again with its memory times ``memory_factor``,
moving to the next resource class when it no longer fits its own. No I/O here.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Reasons a failed attempt may be retried for (the rest are never worth running again:
# a missing image, a rejected output, an unschedulable job, a cancel).
RETRYABLE_REASONS = frozenset({"exit_code", "oom_killed", "timeout", "start_failed"})
DEFAULT_RETRY_ON = RETRYABLE_REASONS


class RetryPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    on: frozenset[str] = DEFAULT_RETRY_ON
    never_exit_codes: frozenset[int] = frozenset()
    always_exit_codes: frozenset[int] = frozenset()
    backoff_initial: float = Field(default=1.0, ge=0, le=3600, allow_inf_nan=False)
    backoff_factor: float = Field(default=2.0, ge=1, le=10, allow_inf_nan=False)
    backoff_max: float = Field(default=300.0, ge=0, le=86400, allow_inf_nan=False)
    jitter: float = Field(default=0.2, ge=0, le=1, allow_inf_nan=False)
    memory_factor: float = Field(default=2.0, ge=1, le=16, allow_inf_nan=False)

    @field_validator("on")
    @classmethod
    def _on(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(value - RETRYABLE_REASONS)
        if unknown:
            raise ValueError(
                f"cannot retry on {unknown}: expected some of {sorted(RETRYABLE_REASONS)}"
            )
        return value

    @field_validator("never_exit_codes", "always_exit_codes")
    @classmethod
    def _codes(cls, value: frozenset[int]) -> frozenset[int]:
        bad = sorted(c for c in value if not 0 < c < 256)
        if bad:
            raise ValueError(f"exit codes are 1-255, got {bad}")
        return value

    def retries(self, reason: str, exit_code: int | None) -> bool:
        """Whether a failure with ``reason`` (and ``exit_code``) is worth another attempt."""
        if reason == "exit_code" and exit_code is not None:
            if exit_code in self.never_exit_codes:
                return False
            if exit_code in self.always_exit_codes:
                return True
        return reason in self.on

    def delay(self, n: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``n`` (1-based)."""
        base = min(self.backoff_max, self.backoff_initial * self.backoff_factor ** max(0, n - 1))
        return base * (1 - self.jitter * (rng or random).random())
