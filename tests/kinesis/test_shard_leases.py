"""The shard lease store on a real Redis: fair shares through handoffs, fencing, the outage grace,
lineage; and the shard bookkeeping that decides how far a checkpoint may go."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis import Redis
from redis import asyncio as redis_async

from broker.shard_leases import OwnedShard, ShardInfo, ShardLeases, ShardView, read_shards
from broker.sources.base import Batch, Record
from broker.sources.shards import ShardTrack

pytestmark = pytest.mark.timeout(30)
MAPPING = "0b0e6a5e-5a2c-4f55-9d53-3f8a3c1c2d10"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[redis_async.Redis]:
    client = redis_async.from_url(redis_url)
    yield client
    await client.aclose()


def replica(redis: redis_async.Redis, name: str, lease_seconds: float = 10.0) -> ShardLeases:
    return ShardLeases(redis, MAPPING, name, lease_seconds=lease_seconds, handoff_seconds=30.0)


async def test_a_joining_replica_gets_its_share_through_handoffs(redis: redis_async.Redis) -> None:
    first, second = replica(redis, "a"), replica(redis, "b")
    await first.register([ShardInfo(f"shard-{i}") for i in range(4)])
    assert len((await first.balance({})).owned) == 4
    for _ in range(2):
        assert (await second.balance({})).owned.keys() <= {"shard-0", "shard-1", "shard-2", "shard-3"}
        asked = await first.balance({})
        [(shard_id, asker)] = asked.handoffs.items()
        assert asker == "b"
        assert await first.release(asked.owned[shard_id], asker)
    mine, theirs = await first.balance({}), await second.balance({})
    assert (len(mine.owned), len(theirs.owned), mine.handoffs) == (2, 2, {})
    assert not set(mine.owned) & set(theirs.owned)


async def test_an_owner_whose_lease_was_taken_is_fenced(redis: redis_async.Redis) -> None:
    stalled, live = replica(redis, "stalled", lease_seconds=0.3), replica(redis, "live", lease_seconds=0.3)
    await stalled.register([ShardInfo("shard-0")])
    [held] = (await stalled.balance({})).owned.values()
    assert await stalled.checkpoint(held, "100")
    for _ in range(40):  # the live replica keeps balancing; the stalled one does not
        taken = await live.balance({})
        if taken.owned:
            break
        await asyncio.sleep(0.05)
    assert taken.takes == {"shard-0": "expired"}
    assert taken.owned["shard-0"] == OwnedShard("shard-0", held.token + 1, "100", False)
    assert not await stalled.checkpoint(held, "200"), "a fenced owner cannot move the checkpoint"
    assert not await stalled.release(held)
    assert "shard-0" not in (await stalled.balance({})).owned
    [view] = read_shards_sync(redis)
    assert (view.owner, view.checkpoint) == ("live", "100")


async def test_leases_survive_a_redis_outage(redis: redis_async.Redis) -> None:
    owner, other = replica(redis, "owner", lease_seconds=0.3), replica(redis, "other", lease_seconds=0.3)
    await owner.register([ShardInfo("shard-0")])
    [held] = (await owner.balance({})).owned.values()
    await asyncio.sleep(0.5)  # nobody could balance (Redis away): every lease lapsed meanwhile
    back = await other.balance({})
    assert back.graced == 1
    assert back.owned == {}, "a lease that lapsed while Redis was away is not taken"
    assert (await owner.balance({})).owned == {"shard-0": held}


async def test_a_child_shard_starts_only_after_its_parent_ended(redis: redis_async.Redis) -> None:
    leases = replica(redis, "a")
    await leases.register([ShardInfo("parent"), ShardInfo("child-1", ("parent",)), ShardInfo("child-2", ("parent",))])
    [parent] = (await leases.balance({})).owned.values()
    assert await leases.checkpoint(parent, "42", ended=True)
    children = (await leases.balance({})).owned
    assert set(children) == {"child-1", "child-2"}
    await leases.register([ShardInfo("grandchild", ("child-1",))])
    assert set((await leases.balance({})).owned) == {"child-1", "child-2"}
    assert children["child-1"].from_first_record is False, "known at the first discovery: StartingPosition"
    assert (await leases.balance({})).eligible == 2


def test_the_checkpoint_moves_only_over_records_that_are_done() -> None:
    track = ShardTrack(OwnedShard("shard-0", 1, None, False), lanes=2, batch_size=10, window_seconds=0)
    keys = ["a", "d", "a", "d"]  # crc32 puts "a" in lane 1 and "d" in lane 0
    for number, key in enumerate(keys):
        position = track.position(str(100 + number))
        record = Record(str(100 + number), "shard-0", {}, 10, 0.0, {}, handle=position)
        track.add(record, key, 0.0)
    first, second = track.take_ready(1.0), track.take_ready(1.0)
    assert first is not None
    assert second is not None
    by_first = {batch.records[0].item_id: batch for batch in (first, second)}
    asyncio.run(_settle(track, by_first["101"]))
    assert track.progress is None, "101 and 103 are done, but 100 (read first) is not"
    lane_a = by_first["100"]
    retry, bisect = track.invoking(lane_a)
    assert (retry, bisect) == (False, False)
    assert track.invoking(Batch(lane_a.records[1:], lane_a.lane)) == (True, False)
    assert track.progress == "101", "a retry from 102 means 100 is done; 101 was settled"
    asyncio.run(_settle(track, lane_a))
    assert track.progress == "103"


async def _settle(track: ShardTrack, batch: Batch) -> None:
    track.settle(batch)


def read_shards_sync(redis: redis_async.Redis) -> list[ShardView]:
    kwargs = redis.connection_pool.connection_kwargs
    client = Redis(host=kwargs.get("host", "localhost"), port=kwargs.get("port", 6379))
    try:
        return read_shards(client, MAPPING)
    finally:
        client.close()
