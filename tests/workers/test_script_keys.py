"""`broker.keys` is the only place a Redis key is written: the Lua scripts spell none, and the layout
the scripts are handed is the one rq's tools and KEDA's list trigger read.

A prefix typed into a script would still work (that is why it must be caught here): it would only
split the layout in two places, and the next change of `keys.py` would silently leave the scripts on
the old keys.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import rq
import rq.job
from redis import Redis
from redis.crc import key_slot

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


def test_the_scripts_write_the_keys_rq_and_keda_read(redis: Redis) -> None:
    """Spelled out on purpose: the Helm chart's KEDA trigger and rq's tools name these very keys, and
    every key of one function carries its hash tag `{f}` (one Redis Cluster slot)."""
    queue = InvocationQueue(redis)
    now = queue.enqueue(Invocation("f", "{}", InvocationType.EVENT, trigger="async"))
    later = queue.enqueue(Invocation("f", "{}", InvocationType.EVENT, trigger="async"), delay_seconds=60.0)

    assert keys.slot(f"rq:job:{now}") == keys.slot("rq:queue:headwater.{f}")  # the job hashes with its queue
    assert [reply_text(job) for job in redis.lrange("rq:queue:headwater.{f}", 0, -1)] == [now]
    assert {reply_text(name) for name in redis.smembers("rq:queues")} == {"rq:queue:headwater.{f}"}
    assert redis.hexists(f"rq:job:{now}", "data")
    assert redis.hexists(f"rq:job:{later}", "data")
    assert redis.llen("headwater:wake:headwater.{f}") == 1
    assert redis.zscore("headwater:scheduled:{f}", f"headwater.{{f}}\t{later}") is not None

    queue.heartbeat("w", ["f"])
    assert redis.zscore("headwater:workers:{f}", "w") is not None
    assert redis.exists("headwater:clock:{f}")
    [claim] = queue.claim("w", ["f"], 1).claims
    assert redis.lrange("headwater:processing:{f}:w", 0, -1) == [claim.entry.encode()]
    assert redis.hget(f"rq:job:{now}", "headwater_starts") == b"1"
    assert queue.complete("w", claim).applied
    assert not redis.exists(f"rq:job:{now}")


def test_job_ids_are_rqs_and_hash_to_their_functions_slot() -> None:
    """rq's tools fetch jobs by id and accept only letters, digits, `_` and `-`; the cluster needs
    `rq:job:<id>` in the slot of the function's queue. Every slot can be reached."""
    for function in ("f", "resize", "orders-eu_1"):
        job_id = keys.job_id(function)
        assert rq.job.JOB_ID_PATTERN.fullmatch(job_id), job_id
        assert (
            keys.slot(keys.job(job_id))
            == keys.slot(keys.queue_key(function))
            == key_slot(keys.queue_key(function).encode())
        )
    assert len(keys._slot_suffixes()) == 16384  # the table covers every slot


def test_every_key_of_a_function_or_a_mapping_shares_its_hash_tag() -> None:
    """The layout's promise to a Redis Cluster, checked on every builder that takes a function name."""
    of_function = [
        keys.queue_key("f"),
        keys.wake(keys.queue_name("f")),
        keys.processing("f", "w"),
        keys.scheduled("f"),
        keys.workers("f"),
        keys.clock("f"),
        keys.quarantine("f"),
        keys.concurrency("f"),
        keys.reply("f", "r"),
    ]
    of_mapping = [keys.shard_lease("m", "s"), keys.shard_set("m"), keys.shard_replicas("m"), keys.shard_clock("m")]
    assert [hash_tag(key) for key in of_function] == ["f"] * len(of_function)
    assert [hash_tag(key) for key in [*of_mapping, keys.mapping_state("m")]] == ["m"] * (len(of_mapping) + 1)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first `{` and the next `}`."""
    return key[key.index("{") + 1 : key.index("}", key.index("{"))]
