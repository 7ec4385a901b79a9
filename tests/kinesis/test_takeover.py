"""A lone poller replica SIGKILLed and restarted: its shards are read again within one lease period.

After the kill nothing renews the mapping's shard leases, but Redis itself stays up (the worker
pool of the mapping's function keeps renewing its own leases, so `headwater:clock:{<function>}`
advances). The replacement must not take
the gap for a Redis outage: a grace period would give every lease a fresh period first, and the
takeover would cost two lease periods instead of one. A real Redis restart still grants the grace,
even when a worker reached the restarted Redis before any poller replica did.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis import Redis
from redis import asyncio as redis_async

from broker import keys
from broker.queue import InvocationQueue
from broker.shard_leases import ShardInfo, ShardLeases
from tests.kinesis.conftest import LEASE_SECONDS, KinesisHarness
from tests.rig import RedisServer
from tests.sources.contract import Stack, bodies
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)
MAPPING = "5d1f3c2a-8a43-4a52-9d0e-3e6c1f0b7a21"
STORE_FUNCTION = "recorder"  # the store tests' mapping's function, whose workers' clock witnesses Redis
STORE_LEASE_SECONDS = 0.3
SHARDS = 2
# A replica balances every third of a lease, so a lapsed lease waits up to that long to be taken
# (on Redis's clock); reading it, and the batch's trip through the queue to the handler, come after.
TAKE_MARGIN_SECONDS = LEASE_SECONDS / 3 + 0.5
READ_MARGIN_SECONDS = TAKE_MARGIN_SECONDS + 0.5
GRACE_LOGGED = "every shard lease got a grace period"


@pytest.mark.parametrize("kinesis_endpoint", ["moto"], indirect=True)
async def test_a_killed_lone_replicas_shards_are_read_within_a_lease_of_the_kill(
    stack: Stack, harness: KinesisHarness
) -> None:
    await harness.create(shards=SHARDS)
    ns = stack.namespace()
    mapping = harness.mapping(BatchSize=5)
    first = stack.spawn_poller([mapping])
    await harness.send([dict(body, key=body["id"]) for body in bodies(ns, 10)])
    await stack.wait_for(lambda: len(stack.attempts(ns)) == 10, what="the first replica's deliveries")
    dead = _owners(stack, harness)
    assert len(dead) == SHARDS, dead
    [dead_replica] = set(dead.values())

    first.kill()
    killed_at, killed_at_ms = time.time(), _redis_ms(stack)
    await harness.send([dict(body, key=body["id"]) for body in bodies(ns, 10, prefix="late")])
    second = stack.spawn_poller([mapping])
    await stack.wait_for(
        lambda: len(stack.attempts(ns)) == 20 and _readers_of_every_shard(stack, harness) != {dead_replica},
        what="the records sent after the kill, delivered by the new replica",
    )

    taken_at_ms = [int(_lease(stack, harness, shard)["taken_at"]) for shard in dead]
    took_seconds = (max(taken_at_ms) - killed_at_ms) / 1000
    late = [entry for entry in stack.seen(ns) if any(i.startswith("late") for i in entry["ids"])]
    read_after_seconds = min(entry["started"] for entry in late) - killed_at
    assert took_seconds < LEASE_SECONDS + TAKE_MARGIN_SECONDS, f"shards taken {took_seconds:.2f} s after the kill"
    assert read_after_seconds < LEASE_SECONDS + READ_MARGIN_SECONDS, (
        f"the new replica's first batch ran {read_after_seconds:.2f} s after the kill"
    )
    assert read_after_seconds > LEASE_SECONDS / 2, "read before the dead replica's leases could lapse"
    assert GRACE_LOGGED not in second.log_path.read_text(), "a dead replica's silence was taken for a Redis outage"


# -- the lease store alone, on the session's Redis --------------------------------------------------
@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[redis_async.Redis]:
    client = redis_async.from_url(redis_url)
    yield client
    await client.aclose()


def replica(redis: redis_async.Redis, name: str) -> ShardLeases:
    return ShardLeases(
        redis, MAPPING, name, lease_seconds=STORE_LEASE_SECONDS, handoff_seconds=30.0, function_name=STORE_FUNCTION
    )


async def test_while_workers_renew_their_leases_a_silent_mappings_leases_lapse_on_time(
    redis: redis_async.Redis, redis_url: str
) -> None:
    workers = InvocationQueue(Redis.from_url(redis_url))
    dead, successor = replica(redis, "dead"), replica(redis, "successor")
    await dead.register([ShardInfo("shard-0")])
    [held] = (await dead.balance({})).owned.values()

    def lapsed() -> bool:
        workers.heartbeat("worker-1", [STORE_FUNCTION])  # Redis is there all along: a worker renews its own lease
        return _lapsed(workers.redis)

    await eventually(lapsed, 5, lambda: "the dead replica's lease lapsing")
    workers.heartbeat("worker-1", [STORE_FUNCTION])
    taken = await successor.balance({})
    assert taken.graced == 0, "a replica's silence is not a Redis outage"
    assert taken.takes == {"shard-0": "expired"}
    assert taken.owned["shard-0"].token == held.token + 1


async def test_a_redis_restart_grants_the_grace_even_when_a_worker_is_back_first(
    redis: redis_async.Redis, redis_url: str, redis_server: RedisServer
) -> None:
    owner, other = replica(redis, "owner"), replica(redis, "other")
    await owner.register([ShardInfo("shard-0")])
    [held] = (await owner.balance({})).owned.values()
    redis_server.restart()
    await redis.connection_pool.disconnect()  # its connections went with the old process
    workers = InvocationQueue(Redis.from_url(redis_url))
    await eventually(lambda: _lapsed(workers.redis), 5, lambda: "the lease lapsing")  # reads only: Redis stays away
    workers.heartbeat("worker-1", [STORE_FUNCTION])  # the first to reach the restarted Redis: its clock is fresh again
    back = await other.balance({})
    assert back.graced == 1, "Redis restarted: every lease gets a fresh period"
    assert back.owned == {}, "a lease that lapsed while Redis was away is not taken"
    assert (await owner.balance({})).owned == {"shard-0": held}


def _lapsed(client: Redis) -> bool:
    """The lease of the store tests' shard lapsed (on Redis's clock)."""
    deadline = client.hget(keys.shard_lease(MAPPING, "shard-0"), "deadline")
    return _redis_ms_of(client) > int(deadline or 0)


def _redis_ms_of(client: Redis) -> int:
    seconds, microseconds = client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


def _redis_ms(stack: Stack) -> int:
    return _redis_ms_of(stack.redis)


def _lease(stack: Stack, harness: KinesisHarness, shard: str) -> dict[str, str]:
    uuid = harness.mapping_uuid()
    assert uuid is not None, "no shard was registered"
    raw = stack.redis.hgetall(keys.shard_lease(uuid, shard))
    return {_text(name): _text(value) for name, value in raw.items()}


def _owners(stack: Stack, harness: KinesisHarness) -> dict[str, str]:
    """Shard id -> the replica holding its lease."""
    uuid = harness.mapping_uuid()
    if uuid is None:
        return {}
    shards = sorted(_text(shard) for shard in stack.redis.smembers(keys.shard_set(uuid)))
    return {shard: owner for shard in shards if (owner := _lease(stack, harness, shard).get("owner"))}


def _readers_of_every_shard(stack: Stack, harness: KinesisHarness) -> set[str]:
    owners = _owners(stack, harness)
    return set(owners.values()) if len(owners) == SHARDS else set()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
