"""The Lua scripts of the invocation queue's fenced protocol, one atomic step each.

Every script that writes starts with the `#!lua` shebang, so Redis refuses it whole (before any
write) while it is out of memory or a read-only replica: a step is applied completely or not at all.
Time is always Redis's own (`TIME`), never a worker's clock, so hosts whose clocks drift agree on
when a lease lapsed.

Processing entries are `<queue>\\t<job id>\\t<claim token>`. The token makes each claim unique: a
worker whose jobs were handed back (its lease lapsed) can no longer acknowledge, complete or
quarantine them, even if it later claims the same job again, because its old entry is gone.

No script spells a key, so `broker.keys` stays the one place the layout is written: fixed keys come
in KEYS, and every script's ARGV begins with the same key layout (`queue.SCRIPT_LAYOUT`: the
prefixes of the keys built from a name, rq's queues and jobs and the wake lists). The prelude sets
the script's own arguments, which follow, aside as `args`; "ARGV:" in the comments below lists those.

Every script works on one function, in one Redis Cluster slot: its KEYS are that function's keys, and
the keys it builds from what it reads (a queue from an entry, a job hash from a popped id, a
processing list from a worker id, a reply key from the arguments) carry the same `{<function>}` hash
tag by construction (`broker.keys`), so they hash to that slot too. Redis Cluster refuses a script
that strays into another slot, so a mistake here fails loudly, never silently.
"""

from __future__ import annotations

# Shared Lua helpers: entry parsing, waking a queue's workers, Redis's clock and the outage grace.
PRELUDE = """#!lua
-- ARGV starts with the key layout (`queue.SCRIPT_LAYOUT`, built from broker/keys.py): the prefixes
-- of rq's queue and job keys and of the wake lists. A script's own arguments follow, in `args`.
local QUEUE_PREFIX, JOB_PREFIX, WAKE_PREFIX = ARGV[1], ARGV[2], ARGV[3]
local args = {}
for i = 4, #ARGV do args[i - 3] = ARGV[i] end
local function split(entry)
  local queue, id = string.match(entry, '^([^\\t]*)\\t([^\\t]*)')
  return queue, id
end
local function wake(queue)
  redis.call('LPUSH', WAKE_PREFIX .. queue, '1')
  redis.call('LTRIM', WAKE_PREFIX .. queue, 0, 63)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- If nobody has touched the lease table for longer than outage_ms, Redis itself (or every worker)
-- was away: every lease lapsed for a reason that says nothing about its worker, so each one gets a
-- fresh grace period to renew before anyone recovers its jobs.
local function observe_clock(workers, clock, now, outage_ms, grace_ms)
  local last = tonumber(redis.call('GET', clock) or '0')
  redis.call('SET', clock, now)
  if last > 0 and now - last > outage_ms then
    local members = redis.call('ZRANGEBYSCORE', workers, '-inf', now + grace_ms)
    for _, member in ipairs(members) do
      redis.call('ZADD', workers, now + grace_ms, member)
    end
    return #members
  end
  return 0
end
local function hand_back(processing)
  local entries = redis.call('LRANGE', processing, 0, -1)
  for i = #entries, 1, -1 do
    local queue, id = split(entries[i])
    if queue and id then
      redis.call('LPUSH', QUEUE_PREFIX .. queue, id)
      wake(queue)
    end
  end
  redis.call('DEL', processing)
  return #entries
end
-- A job written from args starting at i: queue, job id, delay (seconds on Redis's clock, '' = none),
-- n, n field/value pairs; a delayed one goes to the schedule, the others to their queue (rq's
-- registry of queues is global, so the caller adds the queue there, outside the slot). Returns the
-- index after it.
local function write_job(i, schedule)
  local queue, id, delay, n = args[i], args[i + 1], args[i + 2], tonumber(args[i + 3])
  local key = JOB_PREFIX .. id
  for f = 0, n - 1 do
    redis.call('HSET', key, args[i + 4 + 2 * f], args[i + 5 + 2 * f])
  end
  if delay == '' then
    redis.call('RPUSH', QUEUE_PREFIX .. queue, id)
    wake(queue)
  else
    redis.call('ZADD', schedule, now_ms() / 1000 + tonumber(delay), queue .. '\\t' .. id)
  end
  return i + 4 + 2 * n
end
-- Followups from args starting at i: 'job' records (see write_job) and 'reply' records (key, value, ttl),
-- all of the script's function (the caller checks it), so in its slot.
local function write_followups(i, schedule)
  while i <= #args do
    if args[i] == 'job' then
      i = write_job(i + 1, schedule)
    else
      redis.call('RPUSH', args[i + 1], args[i + 2])
      redis.call('EXPIRE', args[i + 1], tonumber(args[i + 3]))
      i = i + 4
    end
  end
end
-- Marks the entry's job started once per claim (idempotent for a retried commit); returns the count.
local function mark_started(entry)
  local _, id = split(entry)
  local key = JOB_PREFIX .. id
  local seen = redis.call('HMGET', key, 'headwater_start_token', 'headwater_starts')
  if seen[1] == entry then return tonumber(seen[2] or '1') end
  local starts = tonumber(seen[2] or '0') + 1
  redis.call('HSET', key, 'headwater_start_token', entry, 'headwater_starts', starts)
  return starts
end
"""

# KEYS[1] the function's schedule. ARGV: followups only ('job' records). Used by producers: one
# atomic write per invocation.
ENQUEUE = (
    PRELUDE
    + """
write_followups(1, KEYS[1])
return 1
"""
)

# KEYS[1] the worker's processing list of the function, KEYS[2] the function's workers zset,
# KEYS[3] its quarantine hash. ARGV: worker id, max jobs, claim token, queue name.
# Returns {status, quarantined, entry, data, starts, ...}: status -1 when the worker holds no live
# lease for the function (it must renew first: its jobs may have been handed back); quarantined
# counts the jobs set aside because their hash was missing. Only the first job is marked started
# when `mark_first` is '1' (the worker's first claim of a round); the rest are prefetched.
CLAIM = (
    PRELUDE
    + """
local worker, max, token, queue, mark_first = args[1], tonumber(args[2]), args[3], args[4], args[5] == '1'
local now = now_ms()
local lease = redis.call('ZSCORE', KEYS[2], worker)
if not lease or tonumber(lease) < now then return {-1, 0} end
local out, missing, entries = {0, 0}, 0, {}
while #out < 2 + 3 * max do
  local id = redis.call('LPOP', QUEUE_PREFIX .. queue)
  if not id then break end
  -- pcall: an id another tool pushed may hash to another slot, which a cluster refuses to read; an
  -- error would end the script with the ids popped so far in no list at all
  local data = redis.pcall('HGET', JOB_PREFIX .. id, 'data')
  if type(data) ~= 'string' then
    local why = 'the job has no data (its hash is missing)'
    if type(data) == 'table' and data.err then why = 'its hash is out of reach: ' .. data.err end
    redis.call('HSET', KEYS[3], id, cjson.encode({queue = queue, reason = why, at = now / 1000}))
    missing = missing + 1
  else
    local entry = queue .. '\\t' .. id .. '\\t' .. token
    table.insert(entries, entry)
    local starts = 0
    if #out == 2 and mark_first then starts = mark_started(entry) end
    table.insert(out, entry)
    table.insert(out, data)
    table.insert(out, starts)
  end
end
if #entries > 0 then redis.call('RPUSH', KEYS[1], unpack(entries)) end  -- one write for the whole claim
out[2] = missing
return out
"""
)

# KEYS[1] the worker's processing list of the function. ARGV: entry. Marks a prefetched job started
# (COMPLETE does it for the next job of the same function); returns its start count, -1 when the
# entry is no longer held.
START = (
    PRELUDE
    + """
if not redis.call('LPOS', KEYS[1], args[1]) then return -1 end
return mark_started(args[1])
"""
)

# KEYS[1] the worker's processing list of the function, KEYS[2] its schedule. ARGV: finished entry,
# next entry of the same function to mark started (or ''), then followups of the same function.
# Returns {applied, next_starts}: applied 0 means the claim was no longer ours (handed back, or this
# very commit was already applied): nothing is written. next_starts is -1 when the next entry is no longer held either.
COMPLETE = (
    PRELUDE
    + """
local applied = 0
if redis.call('LREM', KEYS[1], 1, args[1]) == 1 then
  applied = 1
  local _, id = split(args[1])
  redis.call('DEL', JOB_PREFIX .. id)
  write_followups(3, KEYS[2])
end
local next_starts = 0
if args[2] ~= '' then
  if redis.call('LPOS', KEYS[1], args[2]) then next_starts = mark_started(args[2]) else next_starts = -1 end
end
return {applied, next_starts}
"""
)

# KEYS[1] the worker's processing list of the function, KEYS[2] its quarantine hash. ARGV: entry, reason (JSON).
# Moves a held job that cannot be decoded aside, keeping its hash for a later requeue.
QUARANTINE = (
    PRELUDE
    + """
if redis.call('LREM', KEYS[1], 1, args[1]) == 0 then return 0 end
local _, id = split(args[1])
redis.call('HSET', KEYS[2], id, args[2])
return 1
"""
)

# KEYS[1] the function's quarantine hash. ARGV: job id. Puts a quarantined job back at the back of its queue.
REQUEUE = (
    PRELUDE
    + """
local reason = redis.call('HGET', KEYS[1], args[1])
if not reason then return 0 end
local queue = cjson.decode(reason)['queue']
redis.call('HDEL', KEYS[1], args[1])
redis.call('RPUSH', QUEUE_PREFIX .. queue, args[1])
wake(queue)
return 1
"""
)

# KEYS[1] the function's quarantine hash. ARGV: job id. Forgets a quarantined job and its hash.
DROP = (
    PRELUDE
    + """
if redis.call('HDEL', KEYS[1], args[1]) == 0 then return 0 end
redis.pcall('DEL', JOB_PREFIX .. args[1])  -- a foreign id's hash may lie in another slot (see CLAIM)
return 1
"""
)

# KEYS[1] the function's workers zset, KEYS[2] its clock. ARGV: worker id, ttl ms, outage ms.
# Renews the worker's lease for the function on Redis's clock. Returns {renewed, granted}: renewed 0
# means the worker held no lease (first beat, or its lease lapsed and its jobs of the function were
# handed back); granted counts the leases extended because Redis had been away.
HEARTBEAT = (
    PRELUDE
    + """
local now = now_ms()
local ttl = tonumber(args[2])
local granted = observe_clock(KEYS[1], KEYS[2], now, tonumber(args[3]), ttl)
local renewed = 1
if redis.call('ZADD', KEYS[1], now + ttl, args[1]) == 1 then renewed = 0 end
return {renewed, granted}
"""
)

# KEYS[1] the function's workers zset, KEYS[2] its clock. ARGV: the function's processing key prefix
# (`keys.processing_prefix`), outage ms, grace ms.
# One atomic step per call: forget every worker whose lease of the function lapsed and hand its jobs
# of the function back, so a recoverer that dies or is refused halfway strands nothing.
RECOVER = (
    PRELUDE
    + """
local now = now_ms()
if observe_clock(KEYS[1], KEYS[2], now, tonumber(args[2]), tonumber(args[3])) > 0 then return 0 end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 1, 'LIMIT', 0, 100)
local recovered = 0
for _, worker in ipairs(dead) do
  redis.call('ZREM', KEYS[1], worker)
  recovered = recovered + hand_back(args[1] .. worker)
end
return recovered
"""
)

# KEYS[1] the worker's processing list of a function. Puts every held entry back at the front of its
# queue, oldest first.
HAND_BACK = (
    PRELUDE
    + """
return hand_back(KEYS[1])
"""
)

# KEYS[1] the function's schedule. Moves due jobs (on Redis's clock) to the back of their queue.
PROMOTE = (
    PRELUDE
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms() / 1000, 'LIMIT', 0, 500)
for _, entry in ipairs(due) do
  local queue, id = split(entry)
  redis.call('ZREM', KEYS[1], entry)
  if queue and id then
    redis.call('RPUSH', QUEUE_PREFIX .. queue, id)
    wake(queue)
  end
end
return #due
"""
)
