"""An upgrade from the layout before hash tags: what the old keys held reaches today's, once, and runs.

The old data is written as the previous release wrote it (its keys spelled out here on purpose, as
tests/workers/test_script_keys.py spells today's)."""

from __future__ import annotations

import json
import time

from redis import Redis

from broker import keys
from broker.invocation import Invocation, InvocationType
from broker.layout_migration import migrate_previous_layout
from broker.queue import InvocationQueue
from tests.rig.redis import reply_text

UUID = "5d1f3c2a-8a43-4a52-9d0e-3e6c1f0b7a21"


def old_job(redis: Redis, job_id: str, function: str = "f") -> None:
    """A job hash as every release writes it (the id is the previous release's plain uuid)."""
    queue = InvocationQueue(redis)
    new_id = queue.enqueue(Invocation(function, json.dumps({"id": job_id}), InvocationType.EVENT, trigger="async"))
    redis.rename(keys.job(new_id), keys.job(job_id))
    redis.delete(keys.queue_key(function))


def test_queued_scheduled_quarantined_and_dead_workers_jobs_move_and_run(redis: Redis) -> None:
    for job_id in ("queued", "scheduled", "held", "kept-by-a-live-worker", "quarantined"):
        old_job(redis, job_id)
    redis.rpush("rq:queue:headwater.f", "queued")
    redis.sadd("rq:queues", "rq:queue:headwater.f")
    redis.zadd("headwater:scheduled", {"headwater.f\tscheduled": time.time() - 1})
    redis.hset("headwater:quarantine", "quarantined", json.dumps({"queue": "headwater.f", "reason": "r", "at": 1.0}))
    redis.zadd("headwater:workers", {"dead": 1, "alive": time.time() * 1000 + 60_000})
    redis.rpush("headwater:processing:dead", "headwater.f\theld\ttoken")
    redis.rpush("headwater:processing:alive", "headwater.f\tkept-by-a-live-worker\ttoken")

    assert migrate_previous_layout(redis) == 4
    assert migrate_previous_layout(redis) == 0  # once

    queue = InvocationQueue(redis, heartbeat_ttl_seconds=60)
    assert queue.promote_due(["f"]) == 1
    queue.heartbeat("new", ["f"])
    claimed = queue.claim("new", ["f"], 8).claims
    assert sorted(claim.job_id for claim in claimed) == ["held", "queued", "scheduled"]
    assert all(queue.complete("new", claim).applied for claim in claimed)
    assert [job.job_id for job in queue.quarantined(["f"])] == ["quarantined"]
    assert redis.lrange("headwater:processing:alive", 0, -1) == [b"headwater.f\tkept-by-a-live-worker\ttoken"]
    assert {reply_text(key) for key in redis.smembers("rq:queues")} == {keys.queue_key("f")}


def test_stored_settings_mappings_and_shard_checkpoints_move(redis: Redis) -> None:
    redis.hset("headwater:mappings", UUID, "{}")
    redis.set("headwater:mappings:generation", 3)
    redis.hset("headwater:function-concurrency", "f", 2)
    redis.hset(f"headwater:mapping:{UUID}", "State", "Enabled")
    redis.sadd(f"headwater:shards:{UUID}", "shard-0")
    redis.hset(f"headwater:shard:{UUID}:shard-0", mapping={"checkpoint": "42", "owner": "r"})
    redis.set(f"headwater:shard-clock:{UUID}", "1 abc")

    assert migrate_previous_layout(redis) == 7

    assert redis.hget(keys.MAPPINGS, UUID) == b"{}"
    assert redis.get(keys.MAPPINGS_GENERATION) == b"3"
    assert redis.hget(keys.FUNCTION_CONCURRENCY, "f") == b"2"
    assert redis.hget(keys.mapping_state(UUID), "State") == b"Enabled"
    assert redis.smembers(keys.shard_set(UUID)) == {b"shard-0"}
    assert redis.hget(keys.shard_lease(UUID, "shard-0"), "checkpoint") == b"42"
    assert redis.get(keys.shard_clock(UUID)) == b"1 abc"
    assert migrate_previous_layout(redis) == 0
