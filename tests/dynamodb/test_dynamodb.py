"""DynamoDB Streams beyond the shared contract, each with a real `headwater poll` process beside the
suite's `headwater worker` pool, on moto's server: a table's INSERT, MODIFY and REMOVE with the images
their stream view gives, retries then the on-failure record (`DDBStreamBatchInfo`) then moving on,
FilterCriteria on the `dynamodb` key, and a checkpoint that survives a poller's death (with
`headwater mappings` showing the shard).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.dynamodb.conftest import DynamoDbHarness
from tests.harness import FailureQueue, given_up_batch, none_left, open_failure_queue
from tests.sources.contract import REPO_ROOT, Stack, bodies

pytestmark = pytest.mark.timeout(60)
BLOB = b"\x00\xffhead"
SECONDS_ONLY = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
async def failure_queue(dynamodb_env: dict[str, str]) -> AsyncIterator[FailureQueue]:
    async with open_failure_queue() as queue:
        yield queue


async def test_inserts_modifies_and_removes_arrive_in_order_with_their_images(
    stack: Stack, harness: DynamoDbHarness, dynamodb: Any, streams: Any
) -> None:
    keys_only = DynamoDbHarness(dynamodb, streams, stack.redis)
    await harness.create(view_type="NEW_AND_OLD_IMAGES")
    await keys_only.create(view_type="KEYS_ONLY")
    spaces = {}
    for table in (harness, keys_only):
        ns = spaces[table.table] = stack.namespace()
        item = {"ns": ns, "id": "order-1"}
        await table.put(item, status={"S": "new"}, blob={"B": BLOB})
        await table.update(item, "SET #s = :s", {":s": {"S": "paid"}}, names={"#s": "status"})
        await table.delete(item)
    stack.spawn_poller([harness.mapping(), keys_only.mapping()])
    for table in (harness, keys_only):
        await stack.wait_for(_changes_seen(stack, spaces[table.table], 3), what=f"{table.table}'s changes")

    full = _records(stack, spaces[harness.table])
    assert [record["eventName"] for record in full] == ["INSERT", "MODIFY", "REMOVE"]
    sequences = [int(record["dynamodb"]["SequenceNumber"]) for record in full]
    assert sequences == sorted(sequences)
    body = {"S": json.dumps({"ns": spaces[harness.table], "id": "order-1"})}
    key = {"ns": {"S": spaces[harness.table]}, "id": {"S": "order-1"}}
    new = {**key, "body": body, "status": {"S": "new"}, "blob": {"B": base64.b64encode(BLOB).decode()}}
    paid = {**new, "status": {"S": "paid"}}
    images = [(r["dynamodb"].get("NewImage"), r["dynamodb"].get("OldImage")) for r in full]
    assert images == [(new, None), (paid, new), (None, paid)]
    order = {"INSERT": ["NewImage"], "MODIFY": ["NewImage", "OldImage"], "REMOVE": ["OldImage"]}
    for record in full:
        _check_record(record, harness.arn, key, order[record["eventName"]], "NEW_AND_OLD_IMAGES")

    bare = _records(stack, spaces[keys_only.table])
    assert [record["eventName"] for record in bare] == ["INSERT", "MODIFY", "REMOVE"]
    key = {"ns": {"S": spaces[keys_only.table]}, "id": {"S": "order-1"}}
    for record in bare:
        _check_record(record, keys_only.arn, key, [], "KEYS_ONLY")


async def test_retries_then_the_on_failure_record_then_the_shard_moves_on(
    stack: Stack, harness: DynamoDbHarness, failure_queue: FailureQueue
) -> None:
    await harness.create()
    ns = stack.namespace()
    await harness.send(bodies(ns, 4, m2={"fail": 99}))
    on_failure = {"OnFailure": {"Destination": failure_queue.arn}}
    stack.spawn_poller([harness.mapping(BatchSize=2, MaximumRetryAttempts=1, DestinationConfig=on_failure)])
    await stack.wait_for(lambda: set(stack.attempts(ns)) == {"m1", "m2", "m3", "m4"}, what="the shard moved on")
    [record] = await failure_queue.records(1)
    await stack.wait_for(none_left(harness.unacknowledged), what="checkpointed past the given-up batch")
    assert stack.attempts(ns) == {"m1": 2, "m2": 2, "m3": 1, "m4": 1}
    info = given_up_batch(record, "DDBStreamBatchInfo", invocations=2)
    [sequences] = (await harness.records_by_shard()).items()
    assert (info["shardId"], info["batchSize"], info["streamArn"]) == (sequences[0], 2, harness.arn)
    assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (sequences[1][0], sequences[1][1])
    assert SECONDS_ONLY.match(info["approximateArrivalOfFirstRecord"]), info
    assert SECONDS_ONLY.match(info["approximateArrivalOfLastRecord"]), info


async def test_filter_criteria_match_the_dynamodb_key(stack: Stack, harness: DynamoDbHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    for body, status in zip(bodies(ns, 4), ("done", "new", "done", "new"), strict=True):
        await harness.put(body, status={"S": status})
    await harness.update({"ns": ns, "id": "m2"}, "SET #s = :s", {":s": {"S": "done"}}, names={"#s": "status"})
    pattern = {"dynamodb": {"NewImage": {"status": {"S": ["done"]}}}, "eventName": ["INSERT"]}
    stack.spawn_poller([harness.mapping(FilterCriteria={"Filters": [{"Pattern": json.dumps(pattern)}]})])
    await stack.wait_for(none_left(harness.unacknowledged), what="checkpointed past every record")
    assert stack.attempts(ns) == {"m1": 1, "m3": 1}, "only INSERTs whose new image is done"


async def test_a_checkpoint_survives_a_poller_restart(stack: Stack, harness: DynamoDbHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    mapping = harness.mapping(BatchSize=2)
    await harness.send(bodies(ns, 2))
    first = stack.spawn_poller([mapping])
    await stack.wait_for(none_left(harness.unacknowledged), what="the first batch checkpointed")
    await harness.send(bodies(ns, 2, prefix="b", b1={"block": True}))
    await stack.wait_for(lambda: stack.started(ns), what="the second batch to start")
    first.kill()
    stack.release(ns)
    await harness.send(bodies(ns, 1, prefix="late"))
    assert await harness.unacknowledged() == 3, "nothing after the first batch was checkpointed"
    stack.spawn_poller([mapping])
    await stack.wait_for(none_left(harness.unacknowledged), what="the restarted poller caught up")
    attempts = stack.attempts(ns)
    assert (attempts["m1"], attempts["m2"]) == (1, 1), "the checkpoint held: the first batch did not run again"
    assert attempts["b1"] >= 2, "the batch out at the kill ran again"
    assert set(attempts) == {"m1", "m2", "b1", "b2", "late1"}, "nothing skipped"
    [(shard_id, sequences)] = (await harness.records_by_shard()).items()
    table = _mappings_table(stack)
    assert f"{shard_id}  owner " in table, table
    assert f"checkpoint {sequences[-1]}  iterator age " in table, table


# -- helpers --------------------------------------------------------------------------------------
def _records(stack: Stack, namespace: str) -> list[dict[str, Any]]:
    """Every record the function was handed for `namespace`, in the order the invocations started."""
    events = [json.loads(item) for item in stack.redis.lrange(f"events:{namespace}", 0, -1)]
    return [record for event in events for record in event["Records"]]


def _check_record(record: dict[str, Any], arn: str, key: dict[str, Any], images: list[str], view: str) -> None:
    assert list(record) == ["eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb",
                            "eventSourceARN"]  # fmt: skip
    assert (record["eventVersion"], record["eventSource"], record["awsRegion"]) == ("1.1", "aws:dynamodb", "us-east-1")
    assert record["eventSourceARN"] == arn
    assert isinstance(record["eventID"], str)
    assert record["eventID"]
    change = record["dynamodb"]
    assert list(change) == [
        "ApproximateCreationDateTime",
        "Keys",
        *images,
        "SequenceNumber",
        "SizeBytes",
        "StreamViewType",
    ]
    assert isinstance(change["ApproximateCreationDateTime"], int)
    assert abs(change["ApproximateCreationDateTime"] - time.time()) < 120
    assert change["Keys"] == key
    assert isinstance(change["SizeBytes"], int)
    assert change["SizeBytes"] > 0
    assert change["StreamViewType"] == view


def _mappings_table(stack: Stack) -> str:
    argv = [sys.executable, "-m", "broker.cli", "mappings", "--config", str(stack.directory / "poller-0.yaml")]
    answer = subprocess.run(argv, env=stack.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert answer.returncode == 0, answer.stderr
    return answer.stdout


def _changes_seen(stack: Stack, namespace: str, count: int) -> Callable[[], bool]:
    return lambda: len(_records(stack, namespace)) == count
