"""The invocation queue: the only place that knows how invocations are stored in Redis.

Producers enqueue real rq jobs (rq's JSON serializer, never pickle) on one rq queue per function,
so a backlog on one function never sits in front of another. Workers claim jobs with one Lua call
that moves them, atomically, from the function queues into the worker's own processing list: a job
is always in exactly one place (a queue, the schedule, or one worker's processing list), so a
worker that dies loses nothing: `recover_dead_workers` puts its jobs back at the front.

rq's own worker is not used to consume: it forks per job (losing warm handlers and metrics) and
pops with BLPOP, which drops a job if the worker dies between the pop and its bookkeeping.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from broker import keys
from broker.model import Invocation, Result

JOB_FUNCTION = "workers.invoke.run"  # recorded in the rq job; Headwater's worker dispatches on it
WAKE_TOKENS_KEPT = 64
BLOCK_SLICE_SECONDS = 2.0

# KEYS[1] processing list. ARGV: max jobs, rotation start, queue names...
# Takes one job from each queue in turn (fair across functions), returns [entry, data, starts]...
CLAIM = """
local max, start, n = tonumber(ARGV[1]), tonumber(ARGV[2]), #ARGV - 2
local out, empty, i = {}, 0, 0
while #out < 3 * max and empty < n do
  local queue = ARGV[3 + ((start + i) % n)]
  local id = redis.call('LPOP', 'rq:queue:' .. queue)
  if id then
    local entry = queue .. '\\t' .. id
    redis.call('RPUSH', KEYS[1], entry)
    local starts = 0
    if #out == 0 then starts = redis.call('HINCRBY', 'rq:job:' .. id, 'headwater_starts', 1) end
    table.insert(out, entry)
    table.insert(out, redis.call('HGET', 'rq:job:' .. id, 'data') or '')
    table.insert(out, starts)
    empty = 0
  else
    empty = empty + 1
  end
  i = i + 1
end
return out
"""

# KEYS[1] processing list. ARGV[1] finished entry, ARGV[2] next entry to mark started (or '').
ACK = """
redis.call('LREM', KEYS[1], 1, ARGV[1])
local _, id = string.match(ARGV[1], '^(.-)\\t(.*)$')
redis.call('DEL', 'rq:job:' .. id)
if ARGV[2] ~= '' then
  local _, next_id = string.match(ARGV[2], '^(.-)\\t(.*)$')
  return redis.call('HINCRBY', 'rq:job:' .. next_id, 'headwater_starts', 1)
end
return 0
"""

# Wakes the workers that serve a queue (one token list per function queue, capped).
WAKE_LUA = """
local function wake(queue)
  redis.call('LPUSH', 'headwater:wake:' .. queue, '1')
  redis.call('LTRIM', 'headwater:wake:' .. queue, 0, 63)
end
"""

# KEYS[1] processing list. Puts every entry back at the front of its queue, oldest first.
HAND_BACK = WAKE_LUA + """
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #entries, 1, -1 do
  local queue, id = string.match(entries[i], '^(.-)\\t(.*)$')
  redis.call('LPUSH', 'rq:queue:' .. queue, id)
  wake(queue)
end
redis.call('DEL', KEYS[1])
return #entries
"""

# KEYS[1] schedule. ARGV[1] now. Moves due jobs to the back of their queue.
PROMOTE = WAKE_LUA + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)
for _, entry in ipairs(due) do
  local queue, id = string.match(entry, '^(.-)\\t(.*)$')
  redis.call('RPUSH', 'rq:queue:' .. queue, id)
  redis.call('ZREM', KEYS[1], entry)
  wake(queue)
end
return #due
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """A job a worker holds: where it came from, what it asks, how many runs began before."""

    entry: str
    invocation: Invocation
    starts: int  # 0 until the worker begins it; >1 means earlier runs were cut off by a crash

    @property
    def job_id(self) -> str:
        return keys.split_entry(self.entry)[1]


class InvocationQueue:
    """Enqueue, claim, acknowledge, schedule and hand back invocations on one Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._rq_queues: dict[str, Queue] = {}
        self._claim = redis.register_script(CLAIM)
        self._hand_back = redis.register_script(HAND_BACK)
        self._promote = redis.register_script(PROMOTE)
        self._rotation = 0

    # -- producers ---------------------------------------------------------------------------
    def enqueue(self, invocation: Invocation, delay_seconds: float = 0.0, pipeline: Pipeline | None = None) -> str:
        """Store the invocation as an rq job; with a delay it waits in the schedule instead."""
        queue = self._rq_queue(keys.queue_name(invocation.function_name))
        job = queue.create_job(JOB_FUNCTION, args=[invocation.to_wire()], result_ttl=0, timeout=-1)
        pipe = pipeline if pipeline is not None else self.redis.pipeline()
        if delay_seconds > 0:
            job.origin = queue.name
            job.save(pipeline=pipe)
            pipe.zadd(keys.SCHEDULED, {keys.entry(queue.name, job.id): time.time() + delay_seconds})
        else:
            queue.enqueue_job(job, pipeline=pipe)
            pipe.lpush(keys.wake(queue.name), "1")
            pipe.ltrim(keys.wake(queue.name), 0, WAKE_TOKENS_KEPT - 1)
        if pipeline is None:
            pipe.execute()
        return str(job.id)

    def depth(self, function_name: str) -> int:
        return int(self.redis.llen(keys.RQ_QUEUE_KEY_PREFIX + keys.queue_name(function_name)))

    # -- results for waiting callers ------------------------------------------------------------
    def reply(self, reply_to: str, result: Result, pipeline: Pipeline | None = None) -> None:
        pipe = pipeline if pipeline is not None else self.redis.pipeline()
        pipe.rpush(reply_to, result.to_wire())
        pipe.expire(reply_to, 3600)
        if pipeline is None:
            pipe.execute()

    def wait_for_reply(self, reply_to: str, timeout_seconds: float) -> Result | None:
        """Block for the result in short slices: redis-py gives every socket read a 5 s timeout."""
        deadline = time.monotonic() + timeout_seconds
        while (remaining := deadline - time.monotonic()) > 0:
            popped = self.redis.blpop([reply_to], timeout=min(remaining, BLOCK_SLICE_SECONDS))
            if popped is not None:
                return Result.from_wire(popped[1])
        return None

    # -- workers --------------------------------------------------------------------------------
    def claim(self, worker_id: str, function_names: list[str], max_jobs: int) -> list[Claim]:
        """Move up to `max_jobs` jobs into the worker's processing list; the first is marked started."""
        if not function_names:
            return []
        self._rotation = (self._rotation + 1) % len(function_names)
        names = [keys.queue_name(name) for name in function_names]
        raw = cast(list[Any], self._claim(keys=[keys.processing(worker_id)], args=[max_jobs, self._rotation, *names]))
        return [
            Claim(entry=_text(raw[i]), invocation=self._decode(raw[i + 1]), starts=int(raw[i + 2]))
            for i in range(0, len(raw), 3)
        ]

    def complete(
        self,
        worker_id: str,
        finished: Claim,
        next_claim: Claim | None = None,
        enqueue: list[tuple[Invocation, float]] | None = None,
        reply: tuple[str, Result] | None = None,
    ) -> None:
        """In one transaction: forget the finished job, write its successors and reply, and mark
        the next prefetched job started, so a crash leaves the old job or its followups, never both."""
        pipe = self.redis.pipeline(transaction=True)
        for invocation, delay in enqueue or ():
            self.enqueue(invocation, delay, pipeline=pipe)
        if reply is not None:
            self.reply(*reply, pipeline=pipe)
        # Plain EVAL, not a registered Script: in a pipeline redis-py asks SCRIPT EXISTS before every
        # execute (a second round trip per job), and EVALSHA could meet NOSCRIPT inside the transaction
        # after a Redis restart. Redis caches the compiled script by its hash either way.
        pipe.eval(ACK, 1, keys.processing(worker_id), finished.entry, next_claim.entry if next_claim else "")
        pipe.execute()

    def wait_for_work(self, function_names: list[str], timeout_seconds: float) -> None:
        """Block until work arrives for one of these functions (only their workers are woken)."""
        self.redis.blpop([keys.wake(keys.queue_name(name)) for name in function_names], timeout=timeout_seconds)

    def hand_back(self, worker_id: str) -> int:
        """Return every job the worker holds to the front of its queue (shutdown, or a dead worker)."""
        return int(self._hand_back(keys=[keys.processing(worker_id)]))

    def promote_due(self) -> int:
        return int(self._promote(keys=[keys.SCHEDULED], args=[time.time()]))

    def heartbeat(self, worker_id: str, ttl_seconds: float) -> None:
        self.redis.zadd(keys.WORKERS, {worker_id: time.time() + ttl_seconds})

    def retire(self, worker_id: str) -> None:
        self.redis.zrem(keys.WORKERS, worker_id)

    def recover_dead_workers(self) -> int:
        """Hand back the jobs of every worker whose heartbeat lapsed; safe to run from many places."""
        recovered = 0
        for member in cast(list[bytes], self.redis.zrangebyscore(keys.WORKERS, "-inf", time.time())):
            worker_id = _text(member)
            if self.redis.zrem(keys.WORKERS, worker_id):  # only one recoverer wins each dead worker
                recovered += self.hand_back(worker_id)
        return recovered

    def _decode(self, data: bytes) -> Invocation:
        """Read an rq job's `data` field: rq zlib-compresses its serializer's (func, instance, args, kwargs)."""
        job = Job(connection=self.redis, serializer=JSONSerializer)
        job.data = zlib.decompress(data)
        return Invocation.from_wire(job.args[0])

    def _rq_queue(self, name: str) -> Queue:
        queue = self._rq_queues.get(name)
        if queue is None:
            queue = Queue(name, connection=self.redis, serializer=JSONSerializer)
            self._rq_queues[name] = queue
        return queue


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
