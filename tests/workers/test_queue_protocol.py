"""The fenced queue protocol on a real Redis: what a late, repeated or orphaned step may and may not do.

The fault suite (tests/faults) proves the same guarantees end to end by killing real processes;
these tests pin each rule of the protocol down one at a time, in milliseconds, on one Redis and on a
3-primary Redis Cluster (where every script must stay in its function's slot).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator

import pytest
from redis import Redis

from broker import connection, keys
from broker.invocation import Invocation, InvocationType, Result, Status
from broker.queue import CrossFunctionFollowupError, InvocationQueue
from tests.rig.redis import reply_text

# Leases are made to lapse by hand (`lapse`); a long lease keeps a stall of a loaded machine between two
# steps (over half a lease) from reading as a Redis outage, which would grant every lease a grace period.
TTL_SECONDS = 60.0


@pytest.fixture(params=["redis", "cluster"])
def redis(request: pytest.FixtureRequest) -> Iterator[Redis]:
    """A client of the session's single Redis, or of its 3-primary cluster."""
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    client = connection.connect(url)
    yield client
    client.close()


@pytest.fixture
def queue(redis: Redis) -> InvocationQueue:
    return InvocationQueue(redis, heartbeat_ttl_seconds=TTL_SECONDS)


def event(function: str = "f", payload: str = "{}") -> Invocation:
    return Invocation(function, payload, InvocationType.EVENT, trigger="async")


def lapse(redis: Redis, worker: str, function: str = "f") -> None:
    """The worker's lease ran out (as if it stopped renewing), while others kept Redis's clock fresh."""
    redis.zadd(keys.workers(function), {worker: 1})


def queued(redis: Redis, function: str = "f") -> list[str]:
    return [reply_text(item) for item in redis.lrange(keys.queue_key(function), 0, -1)]


def test_a_late_completion_after_the_lease_lapsed_changes_nothing(queue: InvocationQueue, redis: Redis) -> None:
    job_id = queue.enqueue(event())
    queue.heartbeat("a", ["f"])
    [claim] = queue.claim("a", ["f"], 1).claims
    lapse(redis, "a")
    queue.heartbeat("b", ["f"])
    assert queue.recover_dead_workers(["f"]) == 1

    late = queue.complete("a", claim, enqueue=[(event(), 60.0)])

    assert not late.applied
    assert queued(redis) == [job_id]
    assert redis.hexists(keys.job(job_id), "data")  # the job survives its old owner
    assert redis.zcard(keys.scheduled("f")) == 0  # and the late followups were not written
    [again] = queue.claim("b", ["f"], 1).claims
    assert again.starts == 2  # the cut-off run counts as an attempt
    assert queue.complete("b", again).applied


def test_a_worker_that_reclaims_its_own_job_cannot_complete_it_with_the_old_claim(
    queue: InvocationQueue, redis: Redis
) -> None:
    queue.enqueue(event())
    queue.heartbeat("a", ["f"])
    [old] = queue.claim("a", ["f"], 1).claims
    lapse(redis, "a")
    queue.heartbeat("b", ["f"])
    queue.recover_dead_workers(["f"])
    assert not queue.heartbeat("a", ["f"]).renewed  # the worker learns its lease had lapsed
    [new] = queue.claim("a", ["f"], 1).claims

    assert not queue.complete("a", old).applied
    assert queue.held("a", ["f"]) == {new.entry}
    assert queue.complete("a", new).applied


def test_a_retried_commit_writes_its_followups_once(queue: InvocationQueue, redis: Redis) -> None:
    queue.enqueue(event())
    queue.heartbeat("a", ["f"])
    [claim] = queue.claim("a", ["f"], 1).claims
    retry = (event(payload='{"retry": 1}'), 60.0)
    reply = (keys.reply("f", "x"), Result("x", Status.SUCCESS, "1"))

    first = queue.complete("a", claim, enqueue=[retry], reply=reply)
    second = queue.complete("a", claim, enqueue=[retry], reply=reply)  # the connection dropped after EXEC

    assert (first.applied, second.applied) == (True, False)
    assert redis.zcard(keys.scheduled("f")) == 1
    assert redis.llen(keys.reply("f", "x")) == 1


def test_a_prefetched_job_is_counted_as_started_once_when_it_begins(queue: InvocationQueue) -> None:
    for _ in range(2):
        queue.enqueue(event())
    queue.heartbeat("a", ["f"])
    first, second = queue.claim("a", ["f"], 2).claims
    assert (first.starts, second.starts) == (1, 0)

    completion = queue.complete("a", first, next_claim=second)
    retried = queue.complete("a", first, next_claim=second)

    assert completion.next_starts == 1
    assert retried.next_starts == 1  # idempotent: the same claim is not counted twice


def test_leases_that_lapsed_while_redis_was_away_get_a_grace_period(queue: InvocationQueue, redis: Redis) -> None:
    queue.enqueue(event())
    queue.heartbeat("a", ["f"])
    queue.claim("a", ["f"], 1)
    lapse(redis, "a")
    seconds, _ = redis.time()
    redis.set(keys.clock("f"), (seconds - 60) * 1000)  # nobody renewed anything for a minute: Redis was down

    assert queue.recover_dead_workers(["f"]) == 0
    lease = redis.zscore(keys.workers("f"), "a")
    assert lease is not None
    assert lease > seconds * 1000  # a fresh lease, not a recovery
    assert queue.held("a", ["f"])
    assert queue.heartbeat("a", ["f"]).renewed


def test_a_worker_without_a_live_lease_cannot_claim(queue: InvocationQueue, redis: Redis) -> None:
    job_id = queue.enqueue(event())
    claimed = queue.claim("nobody", ["f"], 1)
    assert claimed.lease_lost
    assert queued(redis) == [job_id]


def test_undecodable_jobs_are_quarantined_with_their_reason_and_newer_fields_are_tolerated(
    queue: InvocationQueue, redis: Redis
) -> None:
    good = queue.enqueue(event())
    no_hash, garbage, newer_id = (keys.job_id("f") for _ in range(3))
    redis.rpush(keys.queue_key("f"), no_hash)
    redis.hset(keys.job(garbage), "data", b"not zlib")
    redis.rpush(keys.queue_key("f"), garbage)
    newer = event().to_wire() | {"field_from_a_newer_release": [1, 2]}
    data = zlib.compress(json.dumps(["workers.invoke.run", None, [newer], {}]).encode())
    redis.hset(keys.job(newer_id), "data", data)
    redis.rpush(keys.queue_key("f"), newer_id)
    queue.heartbeat("a", ["f"])

    claimed = queue.claim("a", ["f"], 8)

    assert [claim.job_id for claim in claimed.claims] == [good, newer_id]
    assert claimed.quarantined == ["f", "f"]
    reasons = {job.job_id: job for job in queue.quarantined()}
    assert set(reasons) == {no_hash, garbage}
    assert "missing" in reasons[no_hash].reason
    assert not reasons[no_hash].has_data
    assert "compressed" in reasons[garbage].reason
    assert reasons[garbage].has_data
    assert reasons[garbage].function_name == "f"
    assert queue.held("a", ["f"]) == {claim.entry for claim in claimed.claims}

    assert queue.requeue_quarantined("f", garbage)
    assert queued(redis) == [garbage]
    assert queue.drop_quarantined("f", no_hash)
    assert queue.quarantined() == []
    assert not queue.drop_quarantined("f", no_hash)


def test_every_worker_counts_a_recovered_job_as_begun_again(redis: Redis) -> None:
    """Two worker processes make their first claims at once: their claims must still differ."""
    first_worker, second_worker = (InvocationQueue(redis, heartbeat_ttl_seconds=TTL_SECONDS) for _ in range(2))
    first_worker.enqueue(event())
    first_worker.heartbeat("a", ["f"])
    [first] = first_worker.claim("a", ["f"], 1).claims
    lapse(redis, "a")
    second_worker.heartbeat("b", ["f"])
    second_worker.recover_dead_workers(["f"])

    [second] = second_worker.claim("b", ["f"], 1).claims

    assert (first.starts, second.starts) == (1, 2)


def test_a_worker_serving_two_functions_is_fenced_in_each_of_them(queue: InvocationQueue, redis: Redis) -> None:
    """On a cluster "f" and "g" are different slots (see tests/cluster): claims, leases and recovery
    go function by function, and a lease lapsed in one leaves the other's jobs alone."""
    f_job, g_job = queue.enqueue(event("f")), queue.enqueue(event("g"))
    queue.heartbeat("a", ["f", "g"])
    claims = queue.claim("a", ["f", "g"], 8).claims
    assert sorted(claim.job_id for claim in claims) == sorted([f_job, g_job])
    assert sorted(claim.starts for claim in claims) == [0, 1]  # only the first is begun; the other is prefetched
    first, second = claims

    assert queue.complete("a", first, next_claim=second).next_starts == 1  # marked in its own slot
    lapse(redis, "a", second.invocation.function_name)
    queue.heartbeat("b", ["f", "g"])
    assert queue.recover_dead_workers(["f", "g"]) == 1
    assert queued(redis, second.invocation.function_name) == [second.job_id]
    assert not queue.complete("a", second).applied


def test_a_completion_writes_nothing_of_another_function(queue: InvocationQueue, redis: Redis) -> None:
    queue.enqueue(event("f"))
    queue.heartbeat("a", ["f"])
    [claim] = queue.claim("a", ["f"], 1).claims

    with pytest.raises(CrossFunctionFollowupError):
        queue.complete("a", claim, enqueue=[(event("g"), 0.0)])

    assert queue.held("a", ["f"]) == {claim.entry}  # refused before anything was sent
    assert queue.complete("a", claim).applied


def test_an_id_another_tool_pushed_is_quarantined_wherever_its_hash_lies(queue: InvocationQueue, redis: Redis) -> None:
    """A plain id (not made by `keys.job_id`) hashes anywhere: on a cluster its hash is out of the
    script's reach. It is set aside, and the jobs claimed with it are not lost."""
    good = queue.enqueue(event())
    foreign = "a-plain-id-from-another-tool"
    redis.rpush(keys.queue_key("f"), foreign)
    later = queue.enqueue(event())
    queue.heartbeat("a", ["f"])

    claimed = queue.claim("a", ["f"], 8)

    assert [claim.job_id for claim in claimed.claims] == [good, later]
    assert claimed.quarantined == ["f"]
    assert [job.job_id for job in queue.quarantined()] == [foreign]
    assert queue.drop_quarantined("f", foreign)
