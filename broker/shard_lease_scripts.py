"""The Lua scripts of the shard lease store (`broker.shard_leases`), one atomic step each.

A shard's lease is a hash (`keys.shard_lease`): `owner` (a poller replica id), `token` (a fencing
counter bumped on every change of owner), `deadline` (Redis ms), `checkpoint` (the last sequence
number whose batch reached its final outcome), `ended` ("1" once the checkpoint reached SHARD_END),
`parents` (space-separated shard ids), `start` ("position": the mapping's StartingPosition applies;
"trim_horizon": the shard appeared while the mapping ran, so it is read from its first record),
`wanted`/`wanted_at` (a replica below its fair share asked for it, and when) and `age_ms`/`age_at`
(its owner's last iterator age). As in `queue_scripts`, no script spells a key: fixed keys come in
KEYS, and shard keys are built from a prefix passed in ARGV (`keys.shard_lease_prefix`). Every key
of a mapping carries the hash tag `{<mapping uuid>}`, so the shard keys built from the prefix hash to
the slot of the declared ones, and each script stays in one Redis Cluster slot.

Time is Redis's own (`TIME`), as in `queue_scripts`: replicas whose clocks drift agree on when a
lease lapsed. An outage grace applies as there, but only when Redis itself was away: when nobody
balanced a mapping's leases for longer than the outage limit (its shard clock is stale), the gap is
Redis's only if Redis restarted meanwhile (its `run_id`, kept beside the shard clock, changed) or if
the workers of the mapping's function renewed no lease meanwhile either (their clock, `keys.clock`,
which every heartbeat advances, is stale too: the caller reads it just before, as it lives in the
function's slot, and passes it in). Then every lease gets a fresh period before anyone may take it
for a dead owner's, so a Redis restart does not shuffle every shard. A gap with Redis there means
the mapping's replicas were away (a lone replica killed and restarted): their leases lapse on time,
and the next replica takes them within one lease period of the last renewal. What this cannot see:
Redis frozen or cut off (not restarted) while a worker, not a poller replica, is first to reach it
again; then the lapsed leases are taken as a stalled replica's are (fenced; the batches out run
again).
"""

from __future__ import annotations

PRELUDE = """#!lua
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function take(key, me, now, ttl)
  redis.call('HSET', key, 'owner', me, 'deadline', now + ttl, 'taken_at', now)
  redis.call('HDEL', key, 'wanted', 'wanted_at', 'age_ms', 'age_at')
  return redis.call('HINCRBY', key, 'token', 1)
end
"""

# KEYS[1] shard set. ARGV[1] shard key prefix, then (shard id, parents) pairs. Shards already known
# keep what they have; shards found after the first discovery are read from their first record.
REGISTER = (
    PRELUDE
    + """
local first = redis.call('SCARD', KEYS[1]) == 0
local added = 0
for i = 2, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    local start = 'trim_horizon'
    if first then start = 'position' end
    redis.call('HSET', ARGV[1] .. ARGV[i], 'parents', ARGV[i + 1], 'start', start)
    added = added + 1
  end
end
return added
"""
)

# KEYS[1] shard set, KEYS[2] replicas zset, KEYS[3] the mapping's shard clock ("<ms> <run_id>" of
# its last balance).
# ARGV: prefix, replica id, ttl ms, outage ms, handoff ms, leaving ('1': take nothing, leave the
# replica set), the function's worker lease clock (Redis ms, read just before; '' when none), then
# (shard id, iterator age ms) pairs for the shards this replica reads.
# Returns {graced, live replicas, eligible shards, owned, handoffs, takes}: owned is a flat list of
# (shard, token, checkpoint, start), handoffs the owned shards another replica asked for (with the
# asker), takes (shard, how) with how in unowned | expired | forced.
BALANCE = (
    PRELUDE
    + """
local prefix, me = ARGV[1], ARGV[2]
local ttl, outage, handoff = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local leaving = ARGV[6] == '1'
local now = now_ms()
local shards = redis.call('SMEMBERS', KEYS[1])
local graced = 0
local last, last_run = string.match(redis.call('GET', KEYS[3]) or '', '^(%d+) ?(%x*)$')
last = tonumber(last or '0')
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''  -- new after every restart
redis.call('SET', KEYS[3], now .. ' ' .. run)
local function redis_was_away()
  if last_run ~= '' and last_run ~= run then return true end
  return now - (tonumber(ARGV[7]) or 0) > outage  -- none: no witness that Redis was there
end
if last > 0 and now - last > outage and redis_was_away() then
  for _, replica in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    redis.call('ZADD', KEYS[2], now + ttl, replica)
  end
  for _, shard in ipairs(shards) do
    if redis.call('HEXISTS', prefix .. shard, 'owner') == 1 then
      redis.call('HSET', prefix .. shard, 'deadline', now + ttl)
      graced = graced + 1
    end
  end
end
if leaving then redis.call('ZREM', KEYS[2], me) else redis.call('ZADD', KEYS[2], now + ttl, me) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 1)
local live = math.max(redis.call('ZCARD', KEYS[2]), 1)
for i = 8, #ARGV, 2 do
  if redis.call('HGET', prefix .. ARGV[i], 'owner') == me then
    redis.call('HSET', prefix .. ARGV[i], 'age_ms', ARGV[i + 1], 'age_at', now)
  end
end
local function ended(shard)
  return redis.call('SISMEMBER', KEYS[1], shard) == 0 or redis.call('HGET', prefix .. shard, 'ended') == '1'
end
local eligible, mine, free, by_owner, counts, asked = 0, {}, {}, {}, {}, 0
for _, shard in ipairs(shards) do
  local key = prefix .. shard
  local lease = redis.call('HMGET', key, 'owner', 'deadline', 'ended', 'parents', 'wanted')
  local ready = lease[3] ~= '1'
  if ready and lease[4] then
    for parent in string.gmatch(lease[4], '%S+') do
      if not ended(parent) then ready = false end
    end
  end
  if ready then
    eligible = eligible + 1
    local alive = lease[1] and tonumber(lease[2] or '0') >= now
    if alive and lease[1] == me then
      redis.call('HSET', key, 'deadline', now + ttl)
      table.insert(mine, shard)
    elseif alive then
      counts[lease[1]] = (counts[lease[1]] or 0) + 1
      by_owner[lease[1]] = by_owner[lease[1]] or {}
      table.insert(by_owner[lease[1]], shard)
      if lease[5] == me then asked = asked + 1 end
    else
      table.insert(free, shard)
    end
  end
end
local target = math.ceil(eligible / live)
local floor = math.floor(eligible / live)
local takes = {}
if not leaving then
  for _, shard in ipairs(free) do
    if #mine >= target then break end
    local how = 'unowned'
    if redis.call('HEXISTS', prefix .. shard, 'owner') == 1 then how = 'expired' end
    take(prefix .. shard, me, now, ttl)
    table.insert(mine, shard)
    table.insert(takes, shard)
    table.insert(takes, how)
  end
  for owner, owned in pairs(by_owner) do
    for _, shard in ipairs(owned) do
      local key = prefix .. shard
      local wanted = redis.call('HMGET', key, 'wanted', 'wanted_at')
      if wanted[1] == me and now - tonumber(wanted[2] or now) > handoff then
        take(key, me, now, ttl)
        table.insert(mine, shard)
        table.insert(takes, shard)
        table.insert(takes, 'forced')
        counts[owner] = counts[owner] - 1
        asked = asked - 1
      elseif wanted[1] and not redis.call('ZSCORE', KEYS[2], wanted[1]) then
        redis.call('HDEL', key, 'wanted', 'wanted_at')
      end
    end
  end
  if #mine + asked < floor then
    local victim, most = nil, floor
    for owner, count in pairs(counts) do
      if count > most then victim, most = owner, count end
    end
    if victim then
      for _, shard in ipairs(by_owner[victim]) do
        if redis.call('HEXISTS', prefix .. shard, 'wanted') == 0 then
          redis.call('HSET', prefix .. shard, 'wanted', me, 'wanted_at', now)
          break
        end
      end
    end
  end
end
local owned, handoffs = {}, {}
for _, shard in ipairs(mine) do
  local lease = redis.call('HMGET', prefix .. shard, 'token', 'checkpoint', 'start', 'wanted')
  table.insert(owned, shard)
  table.insert(owned, lease[1])
  table.insert(owned, lease[2] or '')
  table.insert(owned, lease[3] or 'position')
  if lease[4] and lease[4] ~= me then
    table.insert(handoffs, shard)
    table.insert(handoffs, lease[4])
  end
end
return {graced, live, eligible, owned, handoffs, takes}
"""
)

# KEYS[1] shard lease. ARGV: replica id, token, checkpoint, ended ('1': SHARD_END reached).
# Applies only while the caller still holds that very lease (same owner, same token); returns 0
# otherwise and writes nothing. A shard that ended is let go: nobody owns it any more.
CHECKPOINT = (
    PRELUDE
    + """
local lease = redis.call('HMGET', KEYS[1], 'owner', 'token')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'checkpoint', ARGV[3])
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'ended', '1')
  redis.call('HDEL', KEYS[1], 'owner', 'deadline', 'wanted', 'wanted_at', 'age_ms', 'age_at')
end
return 1
"""
)

# KEYS[1] shard lease, KEYS[2] replicas zset. ARGV: replica id, token, successor ('' = nobody), ttl ms.
# Lets a held lease go: to the replica that asked for it when it is alive (a new token), else to
# whoever balances next. Returns 0 when the caller no longer held it.
RELEASE = (
    PRELUDE
    + """
local lease = redis.call('HMGET', KEYS[1], 'owner', 'token')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
local now = now_ms()
local successor = ARGV[3]
local alive = successor ~= '' and tonumber(redis.call('ZSCORE', KEYS[2], successor) or '0') >= now
if alive then
  take(KEYS[1], successor, now, tonumber(ARGV[4]))
else
  redis.call('HDEL', KEYS[1], 'owner', 'deadline', 'wanted', 'wanted_at', 'age_ms', 'age_at')
end
return 1
"""
)
