"""A machine's room: the CPUs, memory and GPUs its running attempts hold, taken atomically.

Keys: ``offload:room:<machine>`` and ``offload:room:<machine>:waiting``, described in
:mod:`offload.broker.keys`. Every node naming the same machine (the embedded worker and the
local provider's nodes, on one host) shares one room, so together they never give out more
than the machine has; each pool process of each node takes room through the one Lua script
below, so two of them never both take the last of it.

* **Atomic**: :meth:`Room.admit` sums what the machine's attempts hold, compares it plus the
  new job with the allocatable room it is given, and takes the job's share — all in one
  script. A second call of the same attempt is a no-op (it holds it already).
* **Crash-safe without a sweeper of its own**: an entry names its node, pool process and
  attempt; it is live only while the node's owners hash (``offload:node:<n>:owners``, written by
  the job's own transitions) still names that process and attempt. Every script that reads the
  room first drops the entries that are no longer live, so the room of an attempt whose pool
  process died comes back once the process reaper or the sweeper has queued its job again
  (the transition that removes it from ``:owners``), and no reader ever counts it after that.
* **No starvation**: a job that finds no room is noted in ``:waiting`` with when it first found
  none. Once the oldest such job has waited ``starvation`` seconds, no other job is admitted
  unless it fits *beside* that job's needs: the room the big job needs is kept for it as the
  running jobs end. Among starved jobs the oldest goes first. An entry not refreshed for
  ``ttl`` seconds (the job went elsewhere, or was cancelled) is dropped.

CPUs are counted in milli-CPUs (integers), memory in bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from offload.broker import keys
from offload.broker.connection import broker_error
from offload.spec.sizes import format_size

# KEYS: 1 room, 2 waiting.  ARGV: 1 owners key pattern (%s = node), then for 'admit':
# 2 job id, 3 entry "<node> <pid> <attempt> <mcpu> <memory> <gpus>", 4-6 allocatable mcpu,
# memory, gpus, 7 starvation seconds, 8 waiting ttl seconds.
# Returns {admitted, used mcpu, used memory, used gpus, jobs, starved job or '', waited s}.
_LIVE = """
local function split(s)
  local out = {}
  for w in string.gmatch(s, '%S+') do out[#out + 1] = w end
  return out
end
local used = {0, 0, 0}
local live = {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local f = split(flat[i + 1])
  local owner = redis.call('HGET', string.format(ARGV[1], f[1]), flat[i])
  if owner ~= (f[2] .. ':' .. f[3]) then
    redis.call('HDEL', KEYS[1], flat[i])
  else
    used[1] = used[1] + tonumber(f[4])
    used[2] = used[2] + tonumber(f[5])
    used[3] = used[3] + tonumber(f[6])
    live[#live + 1] = flat[i]
    live[#live + 1] = flat[i + 1]
  end
end
"""

_READ = _LIVE + "return live\n"

_ADMIT = (
    _LIVE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local me = ARGV[2]
local n = #live / 2
if redis.call('HGET', KEYS[1], me) == ARGV[3] then
  return {1, used[1], used[2], used[3], n, '', '0'}
end
local need = split(ARGV[3])
local nc, nm, ng = tonumber(need[4]), tonumber(need[5]), tonumber(need[6])
local ac, am, ag = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local starve, ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
local oldest, first_at, oc, om, og = nil, nil, 0, 0, 0
local w = redis.call('HGETALL', KEYS[2])
for i = 1, #w, 2 do
  local f = split(w[i + 1])
  local first, last = tonumber(f[1]), tonumber(f[2])
  if now - last > ttl then
    redis.call('HDEL', KEYS[2], w[i])
  elseif w[i] ~= me and now - first >= starve and (first_at == nil or first < first_at) then
    oldest, first_at = w[i], first
    oc, om, og = tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
  end
end
local fits = used[1] + nc <= ac and used[2] + nm <= am and used[3] + ng <= ag
local kept = ''
if fits and oldest then
  if used[1] + nc + oc > ac or used[2] + nm + om > am or used[3] + ng + og > ag then
    fits, kept = false, oldest
  end
end
if fits then
  redis.call('HSET', KEYS[1], me, ARGV[3])
  redis.call('HDEL', KEYS[2], me)
  return {1, used[1], used[2], used[3], n, '', '0'}
end
local prev = redis.call('HGET', KEYS[2], me)
local first = now
if prev then first = tonumber(split(prev)[1]) end
redis.call('HSET', KEYS[2], me,
  string.format('%.3f %.3f %d %d %d', first, now, nc, nm, ng))
return {0, used[1], used[2], used[3], n, kept, string.format('%.3f', now - first)}
"""
)

# KEYS: 1 room, 2 waiting.  ARGV: 1 job id, 2 its entry, 3 '1' to forget its waiting note.
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
if ARGV[3] == '1' then redis.call('HDEL', KEYS[2], ARGV[1]) end
return 1
"""


@dataclass(frozen=True)
class Share:
    """CPUs, memory and GPUs: what a job needs, what a machine has, or what is held of it."""

    cpus: float = 0.0
    memory: int = 0
    gpus: int = 0

    @property
    def mcpu(self) -> int:
        return round(self.cpus * 1000)

    def __add__(self, other: Share) -> Share:
        return Share(self.cpus + other.cpus, self.memory + other.memory, self.gpus + other.gpus)

    def __sub__(self, other: Share) -> Share:
        return Share(self.cpus - other.cpus, self.memory - other.memory, self.gpus - other.gpus)

    def covers(self, need: Share) -> bool:
        return self.mcpu >= need.mcpu and self.memory >= need.memory and self.gpus >= need.gpus

    def describe(self) -> str:
        gpus = f" / {self.gpus} GPU" if self.gpus else ""
        return f"{self.cpus:g} CPU / {format_size(max(0, self.memory))}{gpus}"


@dataclass(frozen=True)
class Held:
    """One live entry of a room: the attempt of a job holding part of it."""

    node: str
    pid: int
    attempt: int
    share: Share


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    used: Share  # what the machine's other attempts hold
    jobs: int  # how many attempts hold room
    kept_for: str = ""  # the starved job whose room is kept (why a fitting job waits)
    waited: float = 0.0  # seconds since the job first found no room here


def entry(node: str, pid: int, attempt: int, need: Share) -> str:
    return f"{node} {pid} {attempt} {need.mcpu} {need.memory} {need.gpus}"


class Room:
    """The machines' rooms (one Redis client; every method one round trip)."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._admit = client.register_script(_ADMIT)
        self._read = client.register_script(_READ)
        self._release = client.register_script(_RELEASE)

    def admit(
        self,
        machine: str,
        job_id: str,
        held: str,
        need: Share,
        allocatable: Share,
        *,
        starvation: float,
        ttl: float,
    ) -> Verdict:
        """Take ``need`` of ``machine``'s room for ``held`` (:func:`entry`), if it fits."""
        try:
            ok, c, m, g, n, kept, waited = self._admit(
                keys=[keys.room(machine), keys.room_waiting(machine)],
                args=[
                    keys.node_owners("%s"),
                    job_id,
                    held,
                    allocatable.mcpu,
                    allocatable.memory,
                    allocatable.gpus,
                    starvation,
                    ttl,
                ],
            )
        except redis.RedisError as exc:
            raise broker_error(exc) from exc
        used = Share(int(c) / 1000, int(m), int(g))
        return Verdict(bool(int(ok)), used, int(n), _str(kept), float(_str(waited)))

    def release(self, machine: str, job_id: str, held: str, *, forget_wait: bool = True) -> None:
        """Give back what ``held`` holds (only that entry: a later attempt's is left alone)."""
        try:
            self._release(
                keys=[keys.room(machine), keys.room_waiting(machine)],
                args=[job_id, held, "1" if forget_wait else "0"],
            )
        except redis.RedisError as exc:
            raise broker_error(exc) from exc

    def holders(self, machine: str) -> dict[str, Held]:
        """Job id -> what its live attempt holds of ``machine``'s room (dead ones dropped)."""
        try:
            flat = self._read(
                keys=[keys.room(machine), keys.room_waiting(machine)],
                args=[keys.node_owners("%s")],
            )
        except redis.RedisError as exc:
            raise broker_error(exc) from exc
        out = {}
        for job_id, value in zip(flat[::2], flat[1::2], strict=True):
            node, pid, attempt, mcpu, memory, gpus = _str(value).split()
            share = Share(int(mcpu) / 1000, int(memory), int(gpus))
            out[_str(job_id)] = Held(node, int(pid), int(attempt), share)
        return out

    def used(self, machine: str) -> Share:
        return total(self.holders(machine).values())

    def used_by_node(self, machine: str) -> dict[str, Share]:
        per: dict[str, Share] = {}
        for h in self.holders(machine).values():
            per[h.node] = per.get(h.node, Share()) + h.share
        return per

    def waiting(self, machine: str) -> Mapping[str, str]:
        """Job id -> its waiting note (for people and tests)."""
        return {_str(k): _str(v) for k, v in self.r.hgetall(keys.room_waiting(machine)).items()}


def total(held: Iterable[Held]) -> Share:
    out = Share()
    for h in held:
        out = out + h.share
    return out


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
