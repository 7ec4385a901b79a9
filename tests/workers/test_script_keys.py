"""`broker.keys` is the only place a Redis key is written: the Lua scripts spell none, and the layout
the scripts are handed is the one rq's tools and KEDA's list trigger read.

A prefix typed into a script would still work (that is why it must be caught here): it would only
split the layout in two places, and the next change of `keys.py` would silently leave the scripts on
the old keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
import rq
import rq.job
from redis import Redis

from broker import keys, queue_scripts, shard_lease_scripts
from broker.invocation import Invocation, InvocationType
from broker.queue import InvocationQueue
from tests.rig.redis import reply_text

SCRIPT_MODULES = (queue_scripts, shard_lease_scripts)


def scripts(module: ModuleType) -> dict[str, str]:
    """Every Lua source a module defines (its prelude included), by name."""
    return {name: value for name, value in vars(module).items() if isinstance(value, str) and "redis.call" in value}


def spelled_keys(source: str) -> list[str]:
    """The key prefixes and keys of the layout that a script source spells out."""
    constants = {value for name, value in vars(keys).items() if name.isupper() and isinstance(value, str)}
    forbidden = {"rq:", f"{keys.PREFIX}:"} | {value for value in constants if ":" in value}
    return sorted(literal for literal in forbidden if literal in source)


@pytest.mark.parametrize("module", SCRIPT_MODULES, ids=lambda module: module.__name__)
def test_no_script_spells_a_key(module: ModuleType) -> None:
    sources = scripts(module)
    assert sources, f"{module.__name__} defines no script: the scan would prove nothing"

    spelled = {name: found for name, source in sources.items() if (found := spelled_keys(source))}

    assert spelled == {}, "pass keys in KEYS and prefixes in ARGV, built from broker.keys"


def test_the_scan_finds_a_spelled_prefix() -> None:
    assert spelled_keys("redis.call('RPUSH', 'rq:queue:' .. queue, id)") == ["rq:", "rq:queue:"]
    assert spelled_keys("redis.call('LPUSH', 'headwater:wake:' .. queue, '1')") == ["headwater:", "headwater:wake:"]


def test_the_layout_is_rqs_own() -> None:
    ours = (keys.RQ_QUEUE_KEY_PREFIX, keys.RQ_JOB_KEY_PREFIX, keys.RQ_QUEUES)
    rqs = (rq.Queue.redis_queue_namespace_prefix, rq.job.Job.redis_job_namespace_prefix, rq.Queue.redis_queues_keys)
    assert ours == rqs


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


def test_the_scripts_write_the_keys_rq_and_keda_read(redis: Redis) -> None:
    """Spelled out on purpose: the Helm chart's KEDA trigger and rq's tools name these very keys."""
    queue = InvocationQueue(redis)
    now = queue.enqueue(Invocation("f", "{}", InvocationType.EVENT, trigger="async"))
    later = queue.enqueue(Invocation("f", "{}", InvocationType.EVENT, trigger="async"), delay_seconds=60.0)

    assert [reply_text(job) for job in redis.lrange("rq:queue:headwater.f", 0, -1)] == [now]
    assert {reply_text(name) for name in redis.smembers("rq:queues")} == {"rq:queue:headwater.f"}
    assert redis.hexists(f"rq:job:{now}", "data")
    assert redis.hexists(f"rq:job:{later}", "data")
    assert redis.llen("headwater:wake:headwater.f") == 1
    assert redis.zcard("headwater:scheduled") == 1
    assert redis.zscore("headwater:scheduled", f"headwater.f\t{later}") is not None

    queue.heartbeat("w")
    [claim] = queue.claim("w", ["f"], 1).claims
    assert redis.hget(f"rq:job:{now}", "headwater_starts") == b"1"
    assert queue.complete("w", claim).applied
    assert not redis.exists(f"rq:job:{now}")
