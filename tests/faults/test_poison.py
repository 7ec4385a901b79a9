"""Poison jobs beside good ones on two functions: a job id whose rq hash is gone, a job whose
`data` is not what rq writes, and a job from a newer release (an invocation field this release
does not know). The first two go to quarantine with their reason and stop nothing else; the
third runs; every good job on both functions runs; no worker process restarts.

Jobs are written the way rq stores them (broker/queue.py): the hash `rq:job:{<function>}:<id>` whose field
`data` is zlib(JSON [func, None, [invocation dict], {}]), its id on the list
`rq:queue:headwater.{<function>}`.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Callable

from redis import Redis

from broker.invocation import Invocation, InvocationType
from broker.queue import InvocationQueue
from tests.faults.conftest import FaultStack, report

GOOD_PER_FUNCTION = 15


def _queue_key(function_name: str) -> str:
    return f"rq:queue:headwater.{{{function_name}}}"


def push_missing_hash(redis: Redis, function_name: str) -> str:
    """A queue entry whose job hash does not exist (deleted by hand, expired, lost in a failover)."""
    job_id = str(uuid.uuid4())
    redis.rpush(_queue_key(function_name), job_id)
    return job_id


def push_garbage_data(redis: Redis, function_name: str) -> str:
    """A job hash whose `data` is not zlib at all (written by another tool, or corrupted)."""
    job_id = str(uuid.uuid4())
    origin = f"headwater.{{{function_name}}}"
    redis.hset(f"rq:job:{job_id}", mapping={"data": b"\x00not zlib at all\xff", "origin": origin})
    redis.rpush(_queue_key(function_name), job_id)
    return job_id


def push_from_a_newer_release(redis: Redis, function_name: str, event_id: str) -> str:
    """A valid job whose invocation carries a field this release does not know (a rolling upgrade)."""
    invocation = Invocation(function_name, json.dumps({"id": event_id}), InvocationType.EVENT, trigger="async")
    job_id = InvocationQueue(redis).enqueue(invocation)
    key = f"rq:job:{job_id}"
    data = redis.hget(key, "data")
    assert isinstance(data, bytes), f"{key} has no data"
    func, instance, args, kwargs = json.loads(zlib.decompress(data))
    args[0]["priority_hint"] = "added-in-a-newer-release"
    redis.hset(key, "data", zlib.compress(json.dumps([func, instance, args, kwargs]).encode()))
    return job_id


async def test_poison_jobs_are_quarantined_and_every_good_job_runs(fault_stack: Callable[..., FaultStack]) -> None:
    stack = fault_stack([{"FunctionName": "alpha", "Timeout": 10}, {"FunctionName": "beta", "Timeout": 10}])
    redis = stack.redis()
    # The poison sits at the front of both queues, where every worker meets it first.
    missing = push_missing_hash(redis, "alpha")
    garbage = push_garbage_data(redis, "beta")
    push_from_a_newer_release(redis, "alpha", "newer-release")
    accepted = [
        *stack.invoke_events("alpha", GOOD_PER_FUNCTION, seconds=0.05, prefix="alpha-"),
        *stack.invoke_events("beta", GOOD_PER_FUNCTION, seconds=0.05, prefix="beta-"),
        "newer-release",
    ]
    pool = stack.spawn_pool(processes=2, prefetch=2)  # not awaited: a pool that crash-loops never registers

    tally = await stack.settled(accepted, within=30)
    deaths = stack.pool_deaths()
    line = report(tally.describe("poison jobs", worker_deaths=deaths))
    message = f"{line}\n{stack.logs()}"
    assert not tally.lost, message
    assert deaths == 0, message
    assert pool.running, message

    quarantined = {job.job_id: job for job in InvocationQueue(redis).quarantined()}
    assert set(quarantined) == {missing, garbage}, f"{quarantined}\n{message}"
    assert (quarantined[missing].function_name, quarantined[missing].has_data) == ("alpha", False)
    assert (quarantined[garbage].function_name, quarantined[garbage].has_data) == ("beta", True)
    assert all(job.reason.strip() for job in quarantined.values()), quarantined

    listing = stack.cli("quarantine", "list", "--output", "json")
    assert listing.returncode == 0, listing.stderr
    listed = {job["JobId"]: job for job in json.loads(listing.stdout)["QuarantinedJobs"]}
    assert set(listed) == {missing, garbage}, listing.stdout
    assert listed[garbage]["Reason"] == quarantined[garbage].reason
    redis.close()
