"""The fenced queue protocol on a real Redis: what a late, repeated or orphaned step may and may not do.

The fault suite (tests/faults) proves the same guarantees end to end by killing real processes;
these tests pin each rule of the protocol down one at a time, in milliseconds.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator

import pytest
from redis import Redis

from broker import keys
from broker.invocation import Invocation, InvocationType, Result, Status
from broker.queue import InvocationQueue
from tests.rig.redis import reply_text

# Leases are made to lapse by hand (`lapse`); a long lease keeps a stall of a loaded machine between two
# steps (over half a lease) from reading as a Redis outage, which would grant every lease a grace period.
TTL_SECONDS = 60.0


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def queue(redis: Redis) -> InvocationQueue:
    return InvocationQueue(redis, heartbeat_ttl_seconds=TTL_SECONDS)


def event(function: str = "f", payload: str = "{}") -> Invocation:
    return Invocation(function, payload, InvocationType.EVENT, trigger="async")


def lapse(redis: Redis, worker: str) -> None:
    """The worker's lease ran out (as if it stopped renewing), while others kept Redis's clock fresh."""
    redis.zadd(keys.WORKERS, {worker: 1})


def queued(redis: Redis, function: str = "f") -> list[str]:
    return [reply_text(item) for item in redis.lrange(keys.RQ_QUEUE_KEY_PREFIX + keys.queue_name(function), 0, -1)]


def test_a_late_completion_after_the_lease_lapsed_changes_nothing(queue: InvocationQueue, redis: Redis) -> None:
    job_id = queue.enqueue(event())
    queue.heartbeat("a")
    [claim] = queue.claim("a", ["f"], 1).claims
    lapse(redis, "a")
    queue.heartbeat("b")
    assert queue.recover_dead_workers() == 1

    late = queue.complete("a", claim, enqueue=[(event(), 60.0)])

    assert not late.applied
    assert queued(redis) == [job_id]
    assert redis.hexists(keys.RQ_JOB_KEY_PREFIX + job_id, "data")  # the job survives its old owner
    assert redis.zcard(keys.SCHEDULED) == 0  # and the late followups were not written
    [again] = queue.claim("b", ["f"], 1).claims
    assert again.starts == 2  # the cut-off run counts as an attempt
    assert queue.complete("b", again).applied


def test_a_worker_that_reclaims_its_own_job_cannot_complete_it_with_the_old_claim(
    queue: InvocationQueue, redis: Redis
) -> None:
    queue.enqueue(event())
    queue.heartbeat("a")
    [old] = queue.claim("a", ["f"], 1).claims
    lapse(redis, "a")
    queue.heartbeat("b")
    queue.recover_dead_workers()
    assert not queue.heartbeat("a").renewed  # the worker learns its lease had lapsed
    [new] = queue.claim("a", ["f"], 1).claims

    assert not queue.complete("a", old).applied
    assert queue.held("a") == {new.entry}
    assert queue.complete("a", new).applied


def test_a_retried_commit_writes_its_followups_once(queue: InvocationQueue, redis: Redis) -> None:
    queue.enqueue(event())
    queue.heartbeat("a")
    [claim] = queue.claim("a", ["f"], 1).claims
    retry = (event(payload='{"retry": 1}'), 60.0)
    reply = ("headwater:reply:x", Result("x", Status.SUCCESS, "1"))

    first = queue.complete("a", claim, enqueue=[retry], reply=reply)
    second = queue.complete("a", claim, enqueue=[retry], reply=reply)  # the connection dropped after EXEC

    assert (first.applied, second.applied) == (True, False)
    assert redis.zcard(keys.SCHEDULED) == 1
    assert redis.llen("headwater:reply:x") == 1


def test_a_prefetched_job_is_counted_as_started_once_when_it_begins(queue: InvocationQueue) -> None:
    for _ in range(2):
        queue.enqueue(event())
    queue.heartbeat("a")
    first, second = queue.claim("a", ["f"], 2).claims
    assert (first.starts, second.starts) == (1, 0)

    completion = queue.complete("a", first, next_claim=second)
    retried = queue.complete("a", first, next_claim=second)

    assert completion.next_starts == 1
    assert retried.next_starts == 1  # idempotent: the same claim is not counted twice


def test_leases_that_lapsed_while_redis_was_away_get_a_grace_period(queue: InvocationQueue, redis: Redis) -> None:
    queue.enqueue(event())
    queue.heartbeat("a")
    queue.claim("a", ["f"], 1)
    lapse(redis, "a")
    seconds, _ = redis.time()
    redis.set(keys.CLOCK, (seconds - 60) * 1000)  # nobody renewed anything for a minute: Redis was down

    assert queue.recover_dead_workers() == 0
    lease = redis.zscore(keys.WORKERS, "a")
    assert lease is not None
    assert lease > seconds * 1000  # a fresh lease, not a recovery
    assert queue.held("a")
    assert queue.heartbeat("a").renewed


def test_a_worker_without_a_live_lease_cannot_claim(queue: InvocationQueue, redis: Redis) -> None:
    job_id = queue.enqueue(event())
    claimed = queue.claim("nobody", ["f"], 1)
    assert claimed.lease_lost
    assert queued(redis) == [job_id]


def test_undecodable_jobs_are_quarantined_with_their_reason_and_newer_fields_are_tolerated(
    queue: InvocationQueue, redis: Redis
) -> None:
    good = queue.enqueue(event())
    queue_key = keys.RQ_QUEUE_KEY_PREFIX + keys.queue_name("f")
    redis.rpush(queue_key, "no-hash")
    redis.hset(keys.RQ_JOB_KEY_PREFIX + "garbage", "data", b"not zlib")
    redis.rpush(queue_key, "garbage")
    newer = event().to_wire() | {"field_from_a_newer_release": [1, 2]}
    data = zlib.compress(json.dumps(["workers.invoke.run", None, [newer], {}]).encode())
    redis.hset(keys.RQ_JOB_KEY_PREFIX + "newer", "data", data)
    redis.rpush(queue_key, "newer")
    queue.heartbeat("a")

    claimed = queue.claim("a", ["f"], 8)

    assert [claim.job_id for claim in claimed.claims] == [good, "newer"]
    assert claimed.quarantined == ["f", "f"]
    reasons = {job.job_id: job for job in queue.quarantined()}
    assert set(reasons) == {"no-hash", "garbage"}
    assert "missing" in reasons["no-hash"].reason
    assert not reasons["no-hash"].has_data
    assert "compressed" in reasons["garbage"].reason
    assert reasons["garbage"].has_data
    assert reasons["garbage"].function_name == "f"
    assert queue.held("a") == {claim.entry for claim in claimed.claims}

    assert queue.requeue_quarantined("garbage")
    assert queued(redis) == ["garbage"]
    assert queue.drop_quarantined("no-hash")
    assert queue.quarantined() == []
    assert not queue.drop_quarantined("no-hash")


def test_every_worker_counts_a_recovered_job_as_begun_again(redis: Redis) -> None:
    """Two worker processes make their first claims at once: their claims must still differ."""
    first_worker, second_worker = (InvocationQueue(redis, heartbeat_ttl_seconds=TTL_SECONDS) for _ in range(2))
    first_worker.enqueue(event())
    first_worker.heartbeat("a")
    [first] = first_worker.claim("a", ["f"], 1).claims
    lapse(redis, "a")
    second_worker.heartbeat("b")
    second_worker.recover_dead_workers()

    [second] = second_worker.claim("b", ["f"], 1).claims

    assert (first.starts, second.starts) == (1, 2)
