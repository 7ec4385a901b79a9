"""Kinesis beyond the shared contract: order per partition key, Lambda's failure handling, filters,
shard leases shared by real `headwater poll` replicas, resharding, and `headwater mappings`.

These run on kinesalite (the Kinesis implementation that closes a split parent as Kinesis does);
the contract suite runs on moto and kinesalite both.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from broker import keys
from tests.harness import FailureQueue, given_up_batch, none_left, open_failure_queue
from tests.kinesis.conftest import LEASE_SECONDS, KinesisHarness
from tests.rig.redis import reply_text
from tests.sources.contract import REPO_ROOT, Stack, bodies
from tests.waiting import eventually

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.parametrize("kinesis_endpoint", ["kinesalite"], indirect=True),
]


@pytest.fixture
async def failure_queue(kinesis_endpoint: dict[str, str]) -> AsyncIterator[FailureQueue]:
    async with open_failure_queue() as queue:
        yield queue


def _deliveries_by_key(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Every delivery of each partition key, in the order the batches started."""
    by_key: dict[str, list[str]] = {}
    for entry in entries:
        for identifier, key in zip(entry["ids"], entry["lanes"], strict=True):
            by_key.setdefault(key, []).append(identifier)
    return by_key


async def test_order_per_partition_key_with_parallelization(stack: Stack, harness: KinesisHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    sent = []
    for key in ("k0", "k1", "k2", "k3"):
        extra = {f"{key}-3": {"fail": 1}} if key in ("k1", "k2") else {}
        made = bodies(ns, 6, prefix=f"{key}-", **extra)
        sent += [dict(body, key=key, sleep=0.05) for body in made]
    await harness.send(sent)
    await stack.start_poller([harness.mapping(ParallelizationFactor=4, BatchSize=3)])
    await stack.wait_for(lambda: len(stack.attempts(ns)) == 24, what="every record delivered")
    await stack.wait_for(none_left(harness.unacknowledged), what="checkpointed to the end")
    entries = stack.seen(ns)
    for key, delivered in _deliveries_by_key(entries).items():
        first = list(dict.fromkeys(delivered))
        assert first == [f"{key}-{i}" for i in range(1, 7)], (key, delivered)
        # a retried batch runs again before anything later of its key
        assert all(delivered.index(a) <= delivered.index(b) for a, b in itertools.pairwise(first))
    assert stack.attempts(ns)["k1-3"] == 2
    assert stack.attempts(ns)["k0-3"] == 1
    overlapping = [(a, b) for a in entries for b in entries if a is not b and a["started"] < b["started"] < a["ended"]]
    assert overlapping, "ParallelizationFactor 4 ran batches of one shard side by side"


async def test_retries_then_on_failure_record_then_moves_on(
    stack: Stack, harness: KinesisHarness, failure_queue: FailureQueue
) -> None:
    await harness.create()
    ns = stack.namespace()
    written = await harness.send(bodies(ns, 4, m2={"fail": 99}))
    on_failure = {"OnFailure": {"Destination": failure_queue.arn}}
    mapping = harness.mapping(BatchSize=2, MaximumRetryAttempts=1, DestinationConfig=on_failure)
    await stack.start_poller([mapping])
    await stack.wait_for(lambda: set(stack.attempts(ns)) == {"m1", "m2", "m3", "m4"}, what="the shard moved on")
    [record] = await failure_queue.records(1)
    await stack.wait_for(none_left(harness.unacknowledged), what="checkpointed past the given-up batch")
    assert stack.attempts(ns) == {"m1": 2, "m2": 2, "m3": 1, "m4": 1}
    info = given_up_batch(record, "KinesisBatchInfo", invocations=2)
    assert (info["shardId"], info["batchSize"], info["streamArn"]) == ("shardId-000000000000", 2, harness.arn)
    assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (
        written[0]["SequenceNumber"],
        written[1]["SequenceNumber"],
    )
    assert info["approximateArrivalOfFirstRecord"].endswith("Z")


async def test_bisection_isolates_a_poison_record(
    stack: Stack, harness: KinesisHarness, failure_queue: FailureQueue
) -> None:
    await harness.create()
    ns = stack.namespace()
    written = await harness.send(bodies(ns, 4, m3={"fail": 99}))
    mapping = harness.mapping(
        BisectBatchOnFunctionError=True,
        MaximumRetryAttempts=0,
        DestinationConfig={"OnFailure": {"Destination": failure_queue.arn}},
    )
    await stack.start_poller([mapping])
    [record] = await failure_queue.records(1)
    await stack.wait_for(none_left(harness.unacknowledged), what="checkpointed to the end")
    info = record["KinesisBatchInfo"]
    assert info["batchSize"] == 1
    assert info["startSequenceNumber"] == info["endSequenceNumber"] == written[2]["SequenceNumber"]
    runs = [entry["ids"] for entry in stack.seen(ns)]
    assert runs == [["m1", "m2", "m3", "m4"], ["m1", "m2"], ["m3", "m4"], ["m3"], ["m4"]], runs
    sample = REGISTRY.get_sample_value(
        "headwater_poller_stream_redeliveries_total",
        {"mapping": mapping_uuid(harness), "source_type": "kinesis", "kind": "bisect"},
    )
    assert sample == 2


async def test_filter_criteria_match_the_decoded_data(stack: Stack, harness: KinesisHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    sent = bodies(ns, 6)
    for body in sent[::2]:
        body["keep"] = True
    await harness.send(sent)
    pattern = json.dumps({"data": {"keep": [True]}})
    await stack.start_poller([harness.mapping(FilterCriteria={"Filters": [{"Pattern": pattern}]})])
    await stack.wait_for(none_left(harness.unacknowledged), what="checkpointed past every record")
    assert stack.attempts(ns) == {"m1": 1, "m3": 1, "m5": 1}
    labels = {"mapping": mapping_uuid(harness), "source_type": "kinesis"}
    assert REGISTRY.get_sample_value("headwater_mapping_events_total", {**labels, "stage": "filtered_out"}) == 3
    assert REGISTRY.get_sample_value("headwater_poller_leases", labels) == 1
    age = {"function": "recorder", "mapping": labels["mapping"]}
    assert REGISTRY.get_sample_value("headwater_iterator_age_seconds", age) is not None


async def test_three_replicas_share_six_shards_and_take_over_a_dead_ones(stack: Stack, harness: KinesisHarness) -> None:
    await harness.create(shards=6)
    ns = stack.namespace()
    mapping = harness.mapping(BatchSize=5)
    replicas = [stack.spawn_poller([mapping]) for _ in range(3)]
    await stack.wait_for(lambda: sorted(_owners(stack, harness).values()) == [2, 2, 2], what="2 shards each")
    await harness.send([dict(body, key=body["id"], sleep=0.02) for body in bodies(ns, 60)])
    await stack.wait_for(lambda: len(stack.attempts(ns)) == 60, what="every record delivered")
    replicas[0].kill()
    killed_at = time.monotonic()
    await stack.wait_for(lambda: sorted(_owners(stack, harness).values()) == [3, 3], what="the dead one's shards")
    taken_over = time.monotonic() - killed_at
    assert taken_over < LEASE_SECONDS + 2.5, f"shards moved after {taken_over:.1f} s"
    await harness.send([dict(body, key=body["id"]) for body in bodies(ns, 30, prefix="late")])
    await stack.wait_for(lambda: len(stack.attempts(ns)) == 90, what="records after the takeover delivered")
    await stack.wait_for(none_left(harness.unacknowledged), what="every shard checkpointed")
    runs: dict[str, list[tuple[float, float]]] = {}
    for entry in stack.seen(ns):
        for identifier in entry["ids"]:
            runs.setdefault(identifier, []).append((entry["started"], entry["ended"]))
    for identifier, spans in runs.items():
        spans.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans)), (
            f"{identifier} ran twice at once: {spans}"
        )
    output = _mappings_table(stack)
    assert sum(f"shardId-00000000000{i}  owner " in output for i in range(6)) == 6, output
    assert "iterator age" in output


async def test_a_split_shards_parent_is_finished_before_its_children(stack: Stack, harness: KinesisHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    await harness.send([dict(body, key="same", sleep=0.3) for body in bodies(ns, 6, prefix="parent")])
    await harness.client.split_shard(
        StreamName=harness.name, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**127)
    )
    await _wait_active(harness)
    await harness.send([dict(body, key="same") for body in bodies(ns, 6, prefix="child")])
    await stack.start_poller([harness.mapping(BatchSize=2)])
    # The handler counts an attempt before it records the invocation: wait on the record, which is what is checked.
    await stack.wait_for(
        lambda: sum(len(entry["ids"]) for entry in stack.seen(ns)) == 12, what="parent and child records recorded"
    )
    entries = stack.seen(ns)
    parent_done = max(entry["ended"] for entry in entries if entry["ids"][0].startswith("parent"))
    child_start = min(entry["started"] for entry in entries if entry["ids"][0].startswith("child"))
    assert parent_done <= child_start, entries
    assert _deliveries_by_key(entries)["same"] == [f"parent{i}" for i in range(1, 7)] + [
        f"child{i}" for i in range(1, 7)
    ]
    uuid = mapping_uuid(harness)
    assert stack.redis.hget(keys.shard_lease(uuid, "shardId-000000000000"), "ended") == b"1"


# -- helpers --------------------------------------------------------------------------------------
def mapping_uuid(harness: KinesisHarness) -> str:
    uuid = harness.mapping_uuid()
    assert uuid is not None, "no shard was registered"
    return uuid


def _owners(stack: Stack, harness: KinesisHarness) -> dict[str, int]:
    uuid = harness.mapping_uuid()
    if uuid is None:
        return {}
    owners: Counter[str] = Counter()
    for shard in stack.redis.smembers(keys.shard_set(uuid)):
        owner = stack.redis.hget(keys.shard_lease(uuid, reply_text(shard)), "owner")
        deadline = stack.redis.hget(keys.shard_lease(uuid, reply_text(shard)), "deadline")
        if owner and deadline and int(deadline) >= int(stack.redis.time()[0]) * 1000:
            owners[reply_text(owner)] += 1
    return dict(owners)


def _mappings_table(stack: Stack) -> str:
    argv = [sys.executable, "-m", "broker.cli", "mappings", "--config", str(stack.directory / "poller-0.yaml")]
    answer = subprocess.run(argv, env=stack.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert answer.returncode == 0, answer.stderr
    return answer.stdout


async def _wait_active(harness: KinesisHarness) -> None:
    async def active() -> bool:
        summary = await harness.client.describe_stream_summary(StreamName=harness.name)
        return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

    await eventually(active, 10, lambda: "the stream did not become ACTIVE after the split")
