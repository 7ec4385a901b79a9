"""Reserved concurrency, held in Redis so the limit binds every worker on every host.

Each running invocation holds a lease: a member of a per-function sorted set scored by the moment
the lease lapses (the function's timeout plus a margin). A worker that dies never releases its
leases, but they lapse on their own, so a crash cannot leak capacity for longer than one timeout.
"""

from __future__ import annotations

import time
import uuid
from typing import cast

from redis import Redis

from broker import keys

LEASE_MARGIN_SECONDS = 10.0

ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[4]) - tonumber(ARGV[3])) * 1000))
  return 1
end
return 0
"""


class ConcurrencyLimiter:
    """Acquire and release per-function leases; functions without a limit never touch Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._acquire = redis.register_script(ACQUIRE)

    def acquire(self, function_name: str, limit: int | None, timeout_seconds: float) -> str | None:
        """Return a lease id, or None when the function is at its limit (a throttle)."""
        lease = uuid.uuid4().hex
        if limit is None:
            return lease
        if limit == 0:
            return None
        now = time.time()
        expires = now + timeout_seconds + LEASE_MARGIN_SECONDS
        granted = self._acquire(keys=[keys.concurrency(function_name)], args=[limit, lease, now, expires])
        return lease if cast(int, granted) else None

    def release(self, function_name: str, limit: int | None, lease: str) -> None:
        if limit:
            self.redis.zrem(keys.concurrency(function_name), lease)

    def in_use(self, function_name: str) -> int:
        key = keys.concurrency(function_name)
        self.redis.zremrangebyscore(key, "-inf", time.time())
        return int(self.redis.zcard(key))
