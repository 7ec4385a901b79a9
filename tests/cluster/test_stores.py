"""The other stores on a 3-primary Redis Cluster, in process: the transactions that store mappings
and function settings stay in their one slot, a mapping's shard leases balance within its slot, and
reserved concurrency holds. Each would be refused whole (CROSSSLOT) if a key strayed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis import Redis
from redis import asyncio as redis_async

from broker import connection, keys
from broker.concurrency import ConcurrencyLimiter
from broker.function_overrides import FunctionOverrides
from broker.mapping import EventSourceMapping
from broker.mapping_store import MappingStore, StoredMapping
from broker.shard_leases import ShardInfo, ShardLeases, read_shards

MAPPING = "5d1f3c2a-8a43-4a52-9d0e-3e6c1f0b7a21"


@pytest.fixture
def redis(redis_cluster_url: str) -> Iterator[Redis]:
    client = connection.connect(redis_cluster_url)
    yield client
    client.close()


@pytest.fixture
async def async_redis(redis_cluster_url: str) -> AsyncIterator[redis_async.Redis]:
    client = connection.connect_async(redis_cluster_url)
    yield client
    await client.aclose()


def test_stored_mappings_and_function_settings_change_in_one_transaction(redis: Redis) -> None:
    store, overrides = MappingStore(redis), FunctionOverrides(redis)
    mapping = EventSourceMapping.model_validate(
        {"FunctionName": "f", "EventSourceArn": "arn:aws:sqs:us-east-1:000000000000:orders"}
    )

    store.create(StoredMapping(mapping, None, 1.0), [])
    overrides.put_concurrency("f", 3)

    assert list(store.load()) == [mapping.uuid]
    assert store.generation() == 1
    assert overrides.read()[0] == 1
    assert overrides.concurrency("f") == 3
    assert store.delete(mapping.uuid) is not None
    assert store.generation() == 2


def test_reserved_concurrency_holds(redis: Redis) -> None:
    limiter = ConcurrencyLimiter(redis)
    leases = [limiter.acquire("f", 2, 5.0) for _ in range(3)]
    assert [lease is not None for lease in leases] == [True, True, False]
    assert limiter.in_use("f") == 2


async def test_a_mappings_shard_leases_balance_in_its_slot(async_redis: redis_async.Redis, redis: Redis) -> None:
    first = ShardLeases(async_redis, MAPPING, "first", function_name="f")
    second = ShardLeases(async_redis, MAPPING, "second", function_name="f")
    await first.register([ShardInfo("shard-0"), ShardInfo("shard-1")])

    owned = (await first.balance({})).owned
    assert set(owned) == {"shard-0", "shard-1"}
    assert (await second.balance({})).live_replicas == 2
    assert await first.checkpoint(owned["shard-0"], "42")
    assert keys.slot(keys.shard_lease(MAPPING, "shard-0")) == keys.slot(keys.shard_set(MAPPING))
    assert {view.shard_id for view in read_shards(redis, MAPPING)} == {"shard-0", "shard-1"}
