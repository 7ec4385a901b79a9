"""Reserved concurrency, held in Redis so the limit binds every worker on every host.

Each running invocation holds a lease: a member of a per-function sorted set scored by the moment
the lease lapses (the function's timeout plus a margin). A worker that dies never releases its
leases, but they lapse on their own, so a crash cannot leak capacity for longer than one timeout.
"""

from __future__ import annotations

import uuid
from typing import cast

from redis import Redis
from redis.exceptions import RedisError

from broker import keys
from broker.logs import get_logger

log = get_logger(__name__)

LEASE_MARGIN_SECONDS = 10.0

# KEYS[1] the function's leases. ARGV: limit, lease id, lease length (ms). Redis's clock, so every
# host agrees on when a lease lapsed.
ACQUIRE = """#!lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
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
        length_ms = int((timeout_seconds + LEASE_MARGIN_SECONDS) * 1000)
        granted = self._acquire(keys=[keys.concurrency(function_name)], args=[limit, lease, length_ms])
        return lease if cast(int, granted) else None

    def release(self, function_name: str, limit: int | None, lease: str) -> None:
        """Give the lease back; if Redis is away it lapses on its own within one timeout."""
        if limit:
            try:
                self.redis.zrem(keys.concurrency(function_name), lease)
            except RedisError as error:
                log.warning("could not release a concurrency lease; it lapses on its own", error=str(error))

    def in_use(self, function_name: str) -> int:
        key = keys.concurrency(function_name)
        seconds, microseconds = self.redis.time()
        self.redis.zremrangebyscore(key, "-inf", seconds * 1000 + microseconds // 1000)
        return int(self.redis.zcard(key))
