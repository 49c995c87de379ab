"""Where schedules live in Redis, and the one-active-scheduler lock.

Definitions are opaque strings here (:class:`offload.producer.schedules.Schedule` encodes
them); this module owns their keys (:mod:`offload.broker.keys`: ``offload:schedules``,
``offload:schedule:<name>:state``, ``offload:scheduler:lock``) and the scripts that make a
fire time handled once.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import redis

from offload.broker import keys, scripts
from offload.broker.connection import broker_error

# Claim fire time ARGV[2] of schedule ARGV[1]: only while it exists, is not paused, the caller
# is the active scheduler (ARGV[5] its lock token) and the time was not handled yet.
CLAIM = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 'gone' end
if redis.call('GET', KEYS[3]) ~= ARGV[5] then return 'not_active' end
if redis.call('HGET', KEYS[2], 'paused') == '1' then return 'paused' end
local last = tonumber(redis.call('HGET', KEYS[2], 'last_at') or '-1')
if last >= tonumber(ARGV[2]) then return 'handled' end
redis.call('HSET', KEYS[2], 'last_at', ARGV[2], 'next_at', ARGV[3], 'last_outcome', ARGV[4])
return 'claimed'
"""
# Record a run (ARGV[2]: job id, may be empty) and, when ARGV[1] is still the last fire time
# handled, that time's outcome. Nothing once the schedule is gone.
RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'last_job', ARGV[2], 'last_run_at', ARGV[1])
end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'last_at') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'last_outcome', ARGV[3])
end
return 1
"""
# Keep the lock while it is ours: extend it, or take it when free.
HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ScheduleStore:
    """Schedule definitions and states; every Redis failure a :class:`BrokerError`."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise broker_error(exc) from exc

    def add(self, name: str, definition: str, state: dict[str, str]) -> bool:
        """Store a new schedule with its first state; False when the name is taken."""
        if not self._run(self.r.hsetnx, keys.SCHEDULES, name, definition):
            return False
        fields: dict[str | bytes, str] = {k: v for k, v in state.items()}
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(keys.schedule_state(name))
        pipe.hset(keys.schedule_state(name), mapping=fields)
        self._run(pipe.execute)
        return True

    def definition(self, name: str) -> str | None:
        raw = self._run(self.r.hget, keys.SCHEDULES, name)
        return None if raw is None else _text(raw)

    def definitions(self) -> dict[str, str]:
        raw = self._run(self.r.hgetall, keys.SCHEDULES)
        return {_text(k): _text(v) for k, v in raw.items()}

    def state(self, name: str) -> dict[str, str]:
        raw = self._run(self.r.hgetall, keys.schedule_state(name))
        return {_text(k): _text(v) for k, v in raw.items()}

    def set_state(self, name: str, fields: dict[str, str]) -> None:
        mapping: dict[str | bytes, str] = {k: v for k, v in fields.items()}
        self._run(self.r.hset, keys.schedule_state(name), mapping=mapping)

    def remove(self, name: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(keys.SCHEDULES, name)
        pipe.delete(keys.schedule_state(name))
        removed, _ = self._run(pipe.execute)
        return bool(removed)

    def claim(self, name: str, at: str, next_at: str, outcome: str, token: str) -> str:
        """Claim fire time ``at`` for the active scheduler ``token``: ``claimed``, or why not
        (``gone``, ``not_active``, ``paused``, ``handled``)."""
        got = self._run(
            self.r.eval,
            CLAIM,
            3,
            keys.SCHEDULES,
            keys.schedule_state(name),
            keys.SCHEDULER_LOCK,
            name,
            at,
            next_at,
            outcome,
            token,
        )
        return _text(got)

    def record(self, name: str, at: str, job_id: str, outcome: str) -> None:
        self._run(self.r.eval, RECORD, 1, keys.schedule_state(name), at, job_id, outcome)

    def count_fire(self, outcome: str, missed: bool) -> None:
        """Count a fire for the metrics (:func:`offload.broker.stats.count_fire`)."""
        from offload.broker.stats import count_fire

        self._run(count_fire, self.r, outcome, missed)

    # -- the scheduler's lock ------------------------------------------------------------------

    @staticmethod
    def new_token() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def hold(self, token: str, ttl: float) -> bool:
        """Extend the lock if ``token`` holds it, take it if free; whether it is ``token``'s."""
        return bool(self._run(self.r.eval, HOLD, 1, keys.SCHEDULER_LOCK, token, int(ttl * 1000)))

    def release(self, token: str) -> None:
        self._run(self.r.eval, scripts.RELEASE_LOCK, 1, keys.SCHEDULER_LOCK, token)

    def active(self) -> str | None:
        """The token (host:pid:…) of the active scheduler; None when none runs."""
        value = self._run(self.r.get, keys.SCHEDULER_LOCK)
        return None if value is None else _text(value)
