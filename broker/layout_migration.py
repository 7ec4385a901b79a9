"""Carry a single Redis's data from the layout before hash tags (`keys.PreviousLayout`) to today's.

Releases before Redis Cluster support named a function's queue `rq:queue:headwater.<function>` and
kept one schedule, one quarantine and one worker lease set for every function; a mapping's keys had
no braces either. After an upgrade nothing reads those keys, so what they hold (queued and scheduled
jobs, quarantined jobs, the jobs of workers that died before the upgrade, stored mappings and
function settings, shard checkpoints) is moved here, once, by the first new process that looks:
workers on start and on every recovery pass (so jobs an old producer still writes during a rolling
upgrade reach new workers: only the cheap part, their own functions' old queues, the old schedule
and the old workers' leases, never a scan of the keyspace), pollers on start (before reading any
shard lease).

Every move is one atomic step per item (a transaction, `LMOVE`, `RENAMENX`), so processes running
it side by side or dying halfway lose nothing; an item already moved is not moved twice. Old jobs
keep their ids: on a single Redis a job's hash may lie anywhere. A Redis Cluster never held the old
layout, so nothing is done there. Jobs a live old worker holds are left to it (it completes them in
its own layout); once its lease lapses, a later pass hands them to the new queues.
"""

from __future__ import annotations

import json
from typing import cast

from redis import Redis
from redis.exceptions import ResponseError

from broker import keys
from broker.connection import is_cluster
from broker.logs import get_logger

log = get_logger(__name__)
OLD = keys.PreviousLayout

# KEYS[1] where the item is, KEYS[2] where it goes. ARGV: kind, item, new member, score or value.
# Writes the new member only if this very call removed the old one, so two migrators never both do.
MOVE = """#!lua
local kind, item, member, extra = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if kind == 'list' then
  if redis.call('LREM', KEYS[1], 1, item) == 0 then return 0 end
  redis.call('LPUSH', KEYS[2], member)
elseif kind == 'zset' then
  if redis.call('ZREM', KEYS[1], item) == 0 then return 0 end
  redis.call('ZADD', KEYS[2], extra, member)
else
  if redis.call('HDEL', KEYS[1], item) == 0 then return 0 end
  redis.call('HSET', KEYS[2], member, extra)
end
return 1
"""


def migrate_previous_layout(redis: Redis) -> int:
    """Move whatever the previous layout still holds; returns how many items moved (0: nothing left)."""
    if is_cluster(redis):
        return 0
    moved = _config(redis) + _mappings(redis) + _queues(redis) + _schedule(redis) + _quarantine(redis)
    moved += _dead_workers(redis)
    if moved:
        log.warning("moved data of the previous key layout to today's", items=moved)
    return moved


def carry_over_jobs(redis: Redis, function_names: list[str]) -> int:
    """The periodic part for a worker: jobs an old producer or an old worker's lapsed lease left in
    the previous layout for the functions it serves. A few commands on known keys, no scan."""
    if is_cluster(redis):
        return 0
    moved = sum(_queue(redis, name) for name in function_names) + _schedule(redis) + _dead_workers(redis)
    if moved:
        log.warning("moved jobs of the previous key layout to today's", items=moved)
    return moved


def _move(redis: Redis, source: str, target: str, *arguments: str | bytes | float) -> bool:
    return bool(redis.eval(MOVE, 2, source, target, *arguments))


def _rename(redis: Redis, old: str, new: str) -> bool:
    """RENAMENX when `old` exists; False if it is gone (another migrator was first) or `new` exists."""
    try:
        return bool(redis.exists(old)) and bool(redis.renamenx(old, new))
    except ResponseError:  # "no such key": renamed by another process meanwhile
        return False


def _config(redis: Redis) -> int:
    return sum(_rename(redis, old, new) for old, new in OLD.CONFIG)


def _mappings(redis: Redis) -> int:
    moved = 0
    old_states = {
        _text(key).removeprefix(f"{keys.PREFIX}:mapping:") for key in redis.scan_iter(f"{keys.PREFIX}:mapping:*")
    }
    old_sets = {_text(key).removeprefix(OLD.SHARDS_PREFIX) for key in redis.scan_iter(OLD.SHARDS_PREFIX + "*")}
    for uuid in {u for u in old_states | old_sets if "{" not in u}:
        for shard in cast(set[bytes], redis.smembers(f"{OLD.SHARDS_PREFIX}{uuid}")):
            moved += _rename(redis, OLD.shard_lease(uuid, _text(shard)), keys.shard_lease(uuid, _text(shard)))
        for old, new in OLD.mapping_keys(uuid).items():
            moved += _rename(redis, old, new)
    return moved


def _queues(redis: Redis) -> int:
    prefix = keys.RQ_QUEUE_KEY_PREFIX + keys.QUEUE_PREFIX
    names = {_text(key).removeprefix(prefix) for key in redis.scan_iter(prefix + "*")}
    return sum(_queue(redis, name) for name in names if "{" not in name)


def _queue(redis: Redis, name: str) -> int:
    """Move one function's old queue to the back of today's, one atomic LMOVE per job."""
    old = keys.RQ_QUEUE_KEY_PREFIX + OLD.queue_name(name)
    moved = 0
    while redis.lmove(old, keys.queue_key(name), "LEFT", "RIGHT") is not None:
        moved += 1
    if moved:
        redis.srem(keys.RQ_QUEUES, old)
        redis.sadd(keys.RQ_QUEUES, keys.queue_key(name))
        redis.lpush(keys.wake(keys.queue_name(name)), "1")
    return moved


def _schedule(redis: Redis) -> int:
    moved = 0
    for entry, due in cast(list[tuple[bytes, float]], redis.zrange(OLD.SCHEDULED, 0, -1, withscores=True)):
        queue, job_id = keys.split_entry(_text(entry))
        function = queue.removeprefix(keys.QUEUE_PREFIX)
        new_entry = keys.entry(keys.queue_name(function), job_id)
        moved += _move(redis, OLD.SCHEDULED, keys.scheduled(function), "zset", entry, new_entry, due)
    return moved


def _quarantine(redis: Redis) -> int:
    moved = 0
    for job_id, document in cast(dict[bytes, bytes], redis.hgetall(OLD.QUARANTINE)).items():
        details = json.loads(document)
        function = str(details.get("queue", "")).removeprefix(keys.QUEUE_PREFIX)
        details["queue"] = keys.queue_name(function)
        moved += _move(redis, OLD.QUARANTINE, keys.quarantine(function), "hash", job_id, job_id, json.dumps(details))
    return moved


def _dead_workers(redis: Redis) -> int:
    """Hand the jobs of old workers whose lease lapsed to today's queues, front first, as recovery did."""
    seconds, micros = redis.time()
    now_ms = seconds * 1000 + micros // 1000
    moved = 0
    for worker in cast(list[bytes], redis.zrangebyscore(OLD.WORKERS, "-inf", now_ms - 1)):
        held = OLD.PROCESSING_PREFIX + _text(worker)
        for entry in reversed(cast(list[bytes], redis.lrange(held, 0, -1))):
            queue, job_id = keys.split_entry(_text(entry))
            function = queue.removeprefix(keys.QUEUE_PREFIX)
            if _move(redis, held, keys.queue_key(function), "list", entry, job_id, ""):
                redis.lpush(keys.wake(keys.queue_name(function)), "1")
                moved += 1
        pipe = redis.pipeline(transaction=True)
        pipe.zrem(OLD.WORKERS, worker)
        pipe.hdel(OLD.WORKER_FUNCTIONS, worker)
        pipe.execute()
    return moved


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
