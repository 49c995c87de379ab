"""Appending to a job's log stream, capped in bytes across every writer of the job.

A job's output goes to ``offload:logs:<id>`` (schema: :mod:`offload.broker.keys`). Its size
is bounded twice: by entries (``MAXLEN ~ log_max_entries``) and by bytes (``log_max_bytes``,
all attempts and pool processes together). The byte count lives in the job record
(``log_bytes``) and is checked and advanced in the same Lua call as the ``XADD``, so writers
racing on one job cannot pass the cap together. The line that crosses the cap is cut at it (on
a UTF-8 character boundary), followed by one marker entry ``s=sys``
(``[offload] log truncated at 10 MiB …``); later output is dropped without reaching the stream.
A record whose ``log_bytes`` is above the cap has been truncated (the marker counts too).
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from offload.broker import keys
from offload.spec import format_size

SYS = "sys"  # the stream name of entries offload writes itself

# KEYS: 1 job record, 2 log stream
# ARGV: 1 byte cap, 2 maxlen (entries), 3 marker's stream, 4 marker line, then stream/line pairs
# Returns 1 once the log is truncated (now or before), 0 otherwise; a job without a record
# gets nothing written (its record expired or was never made) and 1.
APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
local cap = tonumber(ARGV[1])
local used = tonumber(redis.call('HGET', KEYS[1], 'log_bytes') or '0')
if used > cap then return 1 end
local truncated = 0
for i = 5, #ARGV, 2 do
  local line = ARGV[i + 1]
  if used + #line <= cap then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 's', ARGV[i], 'l', line)
    used = used + #line
  else
    local keep = cap - used
    -- never cut inside a UTF-8 character: back off while the first byte left out continues one
    while keep > 0 do
      local b = string.byte(line, keep + 1)
      if b < 128 or b >= 192 then break end
      keep = keep - 1
    end
    if keep > 0 then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 's', ARGV[i], 'l',
                 string.sub(line, 1, keep))
    end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 's', ARGV[3], 'l', ARGV[4])
    used = math.max(used + keep + #ARGV[4], cap + 1)
    truncated = 1
    break
  end
end
redis.call('HSET', KEYS[1], 'log_bytes', used)
return truncated
"""


def marker(max_bytes: int) -> str:
    """The line that ends a truncated log."""
    return (
        f"[offload] log truncated at {format_size(max_bytes)} (OFFLOAD_LOG_MAX_BYTES); "
        "later output of this job is dropped — write large output to /offload/out instead"
    )


class LogStreams:
    """Writes log lines to job streams under the byte cap; one per Redis client."""

    def __init__(self, client: redis.Redis, *, max_bytes: int, max_entries: int) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._marker = marker(max_bytes)
        self._append = client.register_script(APPEND)

    def append(self, job_id: str, lines: Iterable[tuple[str, str]]) -> bool:
        """Append (stream, line) pairs in order; True once the job's log is truncated.

        A caller seeing True may drop the job's later output without sending it. Raises
        :class:`redis.RedisError` as the client does.
        """
        args: list[str | int] = [self.max_bytes, self.max_entries, SYS, self._marker]
        for stream, line in lines:
            args += [stream, line]
        if len(args) == 4:
            return False
        return bool(self._append(keys=[keys.job(job_id), keys.logs(job_id)], args=args))
