"""The Lua scripts that move jobs: each checks and makes one move atomically in Redis.

They hold no state names of their own: the caller passes the sets from
:mod:`offload.broker.status` (as ``,a,b,`` strings) and the node-key templates from
:mod:`offload.broker.keys` (``offload:node:%s:running``), so the table and the key schema are
each written once. A job's running-on-node facts (the node's running set and owner entry), its
lease and its place in the queued index are written in the same call as the transition that
causes them, so they cannot disagree after a crash. Lease times are Redis server time
(``TIME``): liveness never depends on the clocks of the machines.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: job, events, logs, leases, queued, waiting index, parents, waiting-on, children, retries,
#       finished counters (metrics), ended index (the archiver's), the array record, its live
#       set, its ended-badly index (for an array's item; a key that never exists otherwise)
# ARGV: 1 to, 2 now, 3 allowed-from set, 4 ttl (>0: terminal), 5 log maxlen,
#       6 fencing attempt ('' = any), 7 active set, 8 running-key template,
#       9 owners-key template, 10 job id, 11 queued state, 12 waiting state, 13 succeeded
#       state, 14 seconds an array's item is archived sooner than a job (it enters the ended
#       index that much in the past), then field/value pairs
# Returns {1, previous} when moved; {0, current} when the table refuses; {-1, current} fenced.
TRANSITION = (
    _NOW
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if not string.find(ARGV[3], ',' .. cur .. ',', 1, true) then return {0, cur} end
local na = redis.call('HMGET', KEYS[1], 'node', 'attempt')
if ARGV[6] ~= '' and (na[2] or '0') ~= ARGV[6] then return {-1, cur} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2])
local reason, message = nil, nil
for i = 15, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if ARGV[i] == 'reason' then reason = ARGV[i + 1] end
  if ARGV[i] == 'message' then message = ARGV[i + 1] end
end
local ev = {'status', ARGV[1], 'at', ARGV[2], 'node', na[1] or '', 'attempt', na[2] or '0'}
if reason and reason ~= '' then table.insert(ev, 'reason'); table.insert(ev, reason) end
if message and message ~= '' then table.insert(ev, 'message'); table.insert(ev, message) end
redis.call('XADD', KEYS[2], '*', unpack(ev))
if not string.find(ARGV[7], ',' .. ARGV[1] .. ',', 1, true) then
  redis.call('ZREM', KEYS[4], ARGV[10])
  if na[1] and na[1] ~= '' then
    redis.call('SREM', string.format(ARGV[8], na[1]), ARGV[10])
    redis.call('HDEL', string.format(ARGV[9], na[1]), ARGV[10])
  end
end
if ARGV[1] == ARGV[11] then
  redis.call('ZADD', KEYS[5], now, ARGV[10])
else
  redis.call('ZREM', KEYS[5], ARGV[10])
  redis.call('ZREM', KEYS[10], ARGV[10])
end
if ARGV[1] == ARGV[12] then
  redis.call('ZADD', KEYS[6], now, ARGV[10])
elseif cur == ARGV[12] then
  redis.call('ZREM', KEYS[6], ARGV[10])
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'eof', ARGV[1])
  for _, i in ipairs({1, 2, 3, 7, 8, 9}) do redis.call('EXPIRE', KEYS[i], ttl) end
  local cls = redis.call('HGET', KEYS[1], 'class') or ''
  redis.call('HINCRBY', KEYS[11], cls .. '|' .. ARGV[1] .. '|' .. (reason or ''), 1)
  local item = redis.call('EXISTS', KEYS[13]) == 1
  redis.call('ZADD', KEYS[12], item and now - tonumber(ARGV[14]) or now, ARGV[10])
  if item then
    redis.call('HINCRBY', KEYS[13], 'n:' .. ARGV[1], 1)
    redis.call('SREM', KEYS[14], ARGV[10])
    if ARGV[1] ~= ARGV[13] then
      redis.call('ZADD', KEYS[15], tonumber(string.sub(ARGV[10], 25), 16), ARGV[10])
      if redis.call('TTL', KEYS[15]) < 0 then
        local at = redis.call('TTL', KEYS[13])
        redis.call('EXPIRE', KEYS[15], at > 0 and at or ttl)
      end
    end
  end
end
return {1, cur}
"""
)

# KEYS: job, events, logs, leases, queued, retries
# ARGV: 1 node, 2 now, 3 log maxlen, 4 startable-from set, 5 lease seconds, 6 pid,
#       7 running-key template, 8 owners-key template, 9 job id, 10 the attempt's first state
# Returns {previous status, new attempt}; {status, attempt} unchanged when not startable;
# {'', 0} when there is no record.
BEGIN_ATTEMPT = (
    _NOW
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'', 0} end
if not string.find(ARGV[4], ',' .. cur .. ',', 1, true) then
  return {cur, tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')}
end
local a = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', ARGV[10], 'node', ARGV[1], 'pid', ARGV[6],
           'updated_at', ARGV[2], 'started_at', '', 'container', '', 'exit_code', '',
           'reason', '', 'message', '', 'gpus', '', 'retry_at', '')
redis.call('SADD', string.format(ARGV[7], ARGV[1]), ARGV[9])
redis.call('HSET', string.format(ARGV[8], ARGV[1]), ARGV[9], ARGV[6] .. ':' .. a)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[9])
redis.call('ZREM', KEYS[5], ARGV[9])
redis.call('ZREM', KEYS[6], ARGV[9])
redis.call('XADD', KEYS[2], '*', 'status', ARGV[10], 'at', ARGV[2], 'node', ARGV[1], 'attempt', a)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'a', a)
return {cur, a}
"""
)

# KEYS: job, leases.  ARGV: 1 attempt, 2 lease seconds, 3 active set.
# Returns 1 when renewed; 0 when the attempt no longer holds the job (fenced or ended).
RENEW = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not h[1] or h[2] ~= ARGV[1] then return 0 end
if not string.find(ARGV[3], ',' .. h[1] .. ',', 1, true) then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), redis.call('HGET', KEYS[1], 'id'))
return 1
"""
)

# KEYS: job, leases.  ARGV: 1 active set (flagged), 2 job id.
# Returns {status, attempt, lease expired (1/0)}; {'', 0, 0} when there is no record.
CANCEL = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not h[1] then return {'', 0, 0} end
local expired = 0
if string.find(ARGV[1], ',' .. h[1] .. ',', 1, true) then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  local lease = redis.call('ZSCORE', KEYS[2], ARGV[2])
  if not lease or tonumber(lease) < now then expired = 1 end
end
return {h[1], tonumber(h[2] or '0'), expired}
"""
)

# KEYS: leases.  ARGV: 1 lease seconds.  Every lease is extended to at least now + ARGV[1]
# (after a broker outage, so that no live attempt is taken for dead). Returns how many.
EXTEND_ALL = (
    _NOW
    + """
local floor = now + tonumber(ARGV[1])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', floor)
for _, m in ipairs(members) do redis.call('ZADD', KEYS[1], floor, m) end
return #members
"""
)

# KEYS: job, retries, queued.  ARGV: 1 seconds, 2 job id, 3 queued state.
# A queued job's message is sent only once the delay is over (by the sweeper). Returns the
# due time, or 0 when the job is not queued.
DELAY = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[3] then return '0' end
local due = now + tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], due, ARGV[2])
redis.call('ZADD', KEYS[3], due, ARGV[2])
redis.call('HSET', KEYS[1], 'retry_at', tostring(due))
return tostring(due)
"""
)

# KEYS: a lock.  ARGV: 1 the holder's token.  Delete the lock only if this holder still holds
# it (a lock that expired and was taken by another is left alone). Returns 1 when deleted.
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
