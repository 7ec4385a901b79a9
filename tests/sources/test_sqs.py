"""SQS event source mappings over HTTP, with a real worker pool, each test on two servers: moto
and ElasticMQ (`sqs_service` in conftest). Where they differ from each other, the harness says which
one matches SQS.

The shared contract runs first; then what only SQS has: message attributes and FIFO fields in the
event, the queue's own redrive policy, Lambda's batching limits, message groups, visibility kept
alive under a backlog, filtering that deletes, and mapping states.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import Awaitable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from broker import keys
from broker.mapping import EventSourceMapping
from broker.payload import REQUEST_RESPONSE_LIMIT_BYTES
from tests.rig.redis import reply_text
from tests.sources.conftest import SqsHarness, SqsService
from tests.sources.contract import REPO_ROOT, SourceContract, Stack, bodies


@pytest.fixture
def source_env(sqs_service: SqsService) -> dict[str, str]:
    """The stack's pollers (in-process and spawned) talk to the test's SQS server."""
    return sqs_service.env


class TestSqsContract(SourceContract):
    """The shared contract, on standard queues (and a FIFO queue for the ordered-lane test)."""


def uuid_of(mapping: dict[str, Any]) -> str:
    return EventSourceMapping.model_validate(mapping).uuid


def counted(mapping: dict[str, Any], stage: str) -> float:
    labels = {"mapping": uuid_of(mapping), "source_type": "sqs", "stage": stage}
    return REGISTRY.get_sample_value("headwater_mapping_events_total", labels) or 0.0


def state(stack: Stack, mapping: dict[str, Any]) -> dict[str, str]:
    stored = stack.redis.hgetall(keys.mapping_state(uuid_of(mapping)))
    return {reply_text(key): reply_text(value) for key, value in stored.items()}


async def test_attributes_and_fifo_fields_reach_the_handler(stack: Stack, harness: SqsHarness) -> None:
    await harness.create(ordered=True)
    ns = stack.namespace()
    body = json.dumps({"ns": ns, "id": "m1", "keep_event": True})
    attributes = {
        "Author": {"DataType": "String", "StringValue": "Ann"},
        "Weeks": {"DataType": "Number", "StringValue": "6"},
        "Blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
    }
    sent = await harness.client.send_message(
        QueueUrl=harness.url, MessageBody=body, MessageAttributes=attributes,
        MessageGroupId="g", MessageDeduplicationId="d1",
    )  # fmt: skip
    await stack.start_poller([harness.mapping()])
    record = (await stack.wait_for(lambda: stack.seen(ns)))[0]["event"]["Records"][0]
    assert record["messageAttributes"] == {
        "Author": {"stringValue": "Ann", "stringListValues": [], "binaryListValues": [], "dataType": "String"},
        "Weeks": {"stringValue": "6", "stringListValues": [], "binaryListValues": [], "dataType": "Number"},
        "Blob": {"binaryValue": base64.b64encode(b"\x00\xff").decode(), "stringListValues": [],
                 "binaryListValues": [], "dataType": "Binary"},
    }  # fmt: skip
    assert record["md5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert record["messageId"] == sent["MessageId"]
    assert list(record["attributes"]) == [
        "ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp",
        "SequenceNumber", "MessageGroupId", "MessageDeduplicationId",
    ]  # fmt: skip
    assert record["attributes"]["MessageGroupId"] == "g"
    assert all(isinstance(value, str) for value in record["attributes"].values())


async def test_a_failing_message_returns_after_the_visibility_timeout_then_reaches_the_dlq(
    stack: Stack, harness: SqsHarness
) -> None:
    dlq_url, dlq_arn = await harness.new_queue(f"dlq-{stack.namespace()}", {})
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
    await harness.create(attributes={"RedrivePolicy": redrive})
    ns = stack.namespace()
    await harness.send(bodies(ns, 1, m1={"fail": 99}))
    mapping = harness.mapping()
    await stack.start_poller([mapping])
    await stack.wait_for(lambda: _is(harness.unacknowledged(dlq_url), 1), within=15, what="the message in the DLQ")
    assert await harness.unacknowledged() == 0
    first, second = stack.seen(ns)
    assert second["started"] - first["started"] >= 1.8, "it came back after the 2 s visibility timeout"
    assert stack.attempts(ns) == {"m1": 2}, "maxReceiveCount receives, then the queue's redrive"
    assert counted(mapping, "deleted") == 0
    assert counted(mapping, "failed_invoke") == 2


async def test_batches_are_cut_at_batch_size(stack: Stack, harness: SqsHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    await harness.send(bodies(ns, 25))
    await stack.start_poller([harness.mapping("recorder-alone", BatchSize=20, MaximumBatchingWindowInSeconds=1)])
    await stack.wait_for(lambda: sum(len(e["ids"]) for e in stack.seen(ns)) == 25, what="every message delivered")
    assert [len(entry["ids"]) for entry in stack.seen(ns)] == [20, 5]


async def test_a_batch_waits_for_its_window(stack: Stack, harness: SqsHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    await stack.start_poller([harness.mapping("recorder-alone", BatchSize=100, MaximumBatchingWindowInSeconds=2)])
    sent = bodies(ns, 3)
    await harness.send(sent[:1])
    await asyncio.sleep(0.7)  # the next messages arrive while the first one's window is open
    await harness.send(sent[1:])
    entries = await stack.wait_for(lambda: stack.seen(ns), what="the batch")
    await asyncio.sleep(0.5)
    assert [entry["ids"] for entry in stack.seen(ns)] == [["m1", "m2", "m3"]]
    assert entries[0]["started"] - entries[0]["first_received"] >= 1.5, "held until the window closed"


@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")  # the test's own 900 KB sends
async def test_a_batch_stays_within_six_megabytes(stack: Stack, harness: SqsHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    padding = "x" * 900_000
    padded = {f"m{i}": {"pad": padding} for i in range(1, 9)}
    for body in bodies(ns, 8, prefix="m", **padded):  # a send carries at most 1 MiB
        await harness.client.send_message(QueueUrl=harness.url, MessageBody=json.dumps(body))
    mapping = harness.mapping("recorder-alone")
    await stack.start_poller([mapping])
    await stack.wait_for(lambda: _is(harness.unacknowledged(), 0), what="every message deleted")
    entries = stack.seen(ns)
    assert [len(entry["ids"]) for entry in entries] == [6, 2], "the 7th would break 6 MB: it starts the next"
    assert all(entry["bytes"] <= REQUEST_RESPONSE_LIMIT_BYTES for entry in entries)
    assert stack.attempts(ns) == {f"m{i}": 1 for i in range(1, 9)}


async def test_message_groups_run_side_by_side_in_order(stack: Stack, harness: SqsHarness) -> None:
    await harness.create(ordered=True)
    ns = stack.namespace()
    for group in "abcd":
        await harness.send(bodies(ns, 2, prefix=group, **{f"{group}1": {"sleep": 0.4}}), group)
    await stack.start_poller([harness.mapping()])
    await stack.wait_for(lambda: _is(harness.unacknowledged(), 0), what="every group processed")
    entries = stack.seen(ns)
    for group in "abcd":
        delivered = [i for entry in entries for i in entry["ids"] if i.startswith(group)]
        assert delivered == [f"{group}1", f"{group}2"], f"group {group} out of order: {entries}"
    overlapping = [
        (one["lanes"][0], other["lanes"][0])
        for one in entries
        for other in entries
        if one["lanes"][0] < other["lanes"][0] and one["started"] < other["ended"] and other["started"] < one["ended"]
    ]
    assert overlapping, f"no two groups ran at the same time: {entries}"


# A load test: it needs a queue that feeds a backlog fast enough, and moto (which scans its whole
# queue per message) cannot build one in reasonable time; ElasticMQ does, as SQS does.
@pytest.mark.parametrize("sqs_service", ["elasticmq"], indirect=True)
async def test_a_backlog_with_a_short_visibility_timeout_runs_each_message_once(
    stack: Stack, harness: SqsHarness
) -> None:
    """1000 messages on a queue with a 1 s visibility timeout, two workers at 0.4 s a batch (about
    half what the poller reads): read batches wait for a worker several times the visibility
    timeout, and none may run twice. The backlog that matters is Headwater's: batches read and
    waiting; the messages come in two waves, the second sent once the first is gone."""
    await harness.create(visibility_timeout=1)
    ns = stack.namespace()
    await stack.start_poller([harness.mapping("recorder-quick")])
    await warm_workers(stack, harness)
    for wave in range(0, 1000, 500):
        await harness.send([{"ns": ns, "id": f"m{i}", "sleep": 0.4} for i in range(wave, wave + 500)])
        await stack.wait_for(lambda: _is(harness.unacknowledged(), 0), what=f"wave {wave // 500} drained")
    attempts = stack.attempts(ns)
    assert len(attempts) == 1000
    assert set(attempts.values()) == {1}, "zero duplicates"
    waits = [entry["started"] - entry["first_received"] for entry in stack.seen(ns)]
    assert max(waits) > 1.0, f"batches never outlived the visibility timeout (max wait {max(waits):.2f} s)"


# A load test: it needs a queue that feeds a backlog fast enough, and moto (which scans its whole
# queue per message) cannot build one in reasonable time; ElasticMQ does, as SQS does.
@pytest.mark.parametrize("sqs_service", ["elasticmq"], indirect=True)
async def test_batches_waiting_longer_than_their_hold_are_kept_invisible(stack: Stack, harness: SqsHarness) -> None:
    """16 batches of 1.3 s on two workers: the last wait about 7 s, longer than the 5 s a receive
    holds a message. Only keep-alive extensions stop them from being received again, which would
    count toward maxReceiveCount: here 1, so a single lapse would move a message to the DLQ."""
    dlq_url, dlq_arn = await harness.new_queue(f"dlq-{stack.namespace()}", {})
    await harness.create(
        attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})}
    )
    ns = stack.namespace()
    await harness.send(bodies(ns, 160, prefix="m", **{f"m{i}": {"sleep": 1.3} for i in range(1, 161, 10)}))
    await stack.start_poller([harness.mapping()])
    await stack.wait_for(lambda: _is(harness.unacknowledged(), 0), within=60, what="every batch settled")
    assert len(stack.attempts(ns)) == 160
    assert set(stack.attempts(ns).values()) == {1}, "zero duplicates"
    assert await harness.unacknowledged(dlq_url) == 0, "no message was ever received twice"
    waits = [entry["started"] - entry["first_received"] for entry in stack.seen(ns)]
    assert max(waits) > 5.5, f"no batch outlived the receive hold (max wait {max(waits):.2f} s)"


async def test_filters_decide_what_is_invoked_and_the_rest_is_deleted(stack: Stack, harness: SqsHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    pattern = json.dumps({"body": {"kind": ["order"], "total": [{"numeric": [">", 10]}]}})
    mapping = harness.mapping(FilterCriteria={"Filters": [{"Pattern": pattern}]})
    kinds = {"m1": ("order", 20), "m2": ("refund", 20), "m3": ("order", 5), "m4": ("order", 11)}
    fields = {k: {"kind": kind, "total": total} for k, (kind, total) in kinds.items()}
    await harness.send(bodies(ns, 4, prefix="m", **fields))
    await stack.start_poller([mapping])
    await stack.wait_for(lambda: _is(harness.unacknowledged(), 0), what="every message deleted")
    assert sorted(stack.attempts(ns)) == ["m1", "m4"]
    invocations = len(stack.seen(ns))
    await harness.send(bodies(ns, 2, prefix="r", r1={"kind": "refund"}, r2={"kind": "refund"}))
    await stack.wait_for(lambda: _is(harness.unacknowledged(), 0), what="the unmatched batch deleted")
    assert len(stack.seen(ns)) == invocations, "a batch with no match is not invoked"
    # SQS has forgotten the messages once DeleteMessageBatch answered; the count follows that answer
    await stack.wait_for(lambda: counted(mapping, "deleted") == 6, what="every deletion counted")
    assert (counted(mapping, "polled"), counted(mapping, "filtered_out")) == (6, 4)
    assert counted(mapping, "invoked") == 2


async def test_disabled_and_refused_mappings_say_why(stack: Stack, harness: SqsHarness) -> None:
    ns = stack.namespace()
    await harness.create()
    turned_off, off_url = harness.mapping(Enabled=False), harness.url
    await harness.send(bodies(ns, 2))
    await harness.create(visibility_timeout=10)
    too_slow = harness.mapping("recorder-patient")
    missing = {"FunctionName": "recorder", "EventSourceArn": "arn:aws:sqs:us-east-1:123456789012:no-such-queue"}
    stream_arn = "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2024-01-01T00:00:00.000"
    missing_stream = {"FunctionName": "recorder", "EventSourceArn": stream_arn, "StartingPosition": "LATEST"}
    mappings = [turned_off, too_slow, missing, missing_stream]
    await stack.start_poller(mappings)
    await stack.wait_for(lambda: all(state(stack, m).get("State") == "Disabled" for m in mappings), what="Disabled")
    assert state(stack, turned_off)["StateTransitionReason"] == "USER_INITIATED"
    refused = state(stack, too_slow)["StateTransitionReason"]
    assert "Queue visibility timeout: 10 seconds is less than Function timeout: 30 seconds" in refused
    assert "NonExistentQueue" in state(stack, missing)["StateTransitionReason"]
    assert f"Stream not found: {stream_arn}" in state(stack, missing_stream)["StateTransitionReason"]
    listed = await _mappings_cli(stack)
    assert listed[uuid_of(turned_off)]["State"] == "Disabled"
    assert "LastProcessingResult" not in listed[uuid_of(turned_off)], "SQS mappings have none, as on Lambda"
    assert "LastProcessingResult" in listed[uuid_of(missing_stream)]
    assert await harness.unacknowledged(off_url) == 2, "a disabled mapping reads nothing"
    assert stack.attempts(ns) == {}


async def test_a_mapping_turned_off_by_reload_stops_once_in_flight_batches_settle(
    stack: Stack, harness: SqsHarness
) -> None:
    await harness.create()
    ns = stack.namespace()
    running = harness.mapping()
    # A second mapping the same poller keeps reading: its messages, run one after another, show the
    # poller polled on while the turned-off mapping's message stayed where it was.
    witness_url, witness_arn = await harness.new_queue(f"witness-{ns}", {})
    witness = {"FunctionName": "recorder", "EventSourceArn": witness_arn}
    supervisor = await stack.start_poller([running, witness])
    await harness.send(bodies(ns, 1, m1={"block": True}))
    await stack.wait_for(lambda: stack.started(ns), what="a batch in flight")
    stack.write_config([{**running, "Enabled": False}, witness])
    supervisor.reload()
    await stack.wait_for(lambda: state(stack, running).get("State") == "Disabling", what="Disabling")
    stack.release(ns)
    await stack.wait_for(lambda: state(stack, running).get("State") == "Disabled", what="Disabled once settled")
    assert await harness.unacknowledged() == 0, "the in-flight batch settled before the poller stopped"
    await harness.send(bodies(ns, 1, prefix="after"))
    for n in range(2):
        await harness.client.send_message(QueueUrl=witness_url, MessageBody=json.dumps({"ns": ns, "id": f"w{n}"}))
        await stack.wait_for(lambda: _is(harness.unacknowledged(witness_url), 0), what=f"witness {n} run")
    assert await harness.unacknowledged() == 1, "no longer polled"
    shown = (await _mappings_cli(stack))[uuid_of(running)]
    assert (shown["State"], shown["StateTransitionReason"], shown["EventSourceArn"]) == (
        "Disabled", "USER_INITIATED", running["EventSourceArn"],
    )  # fmt: skip
    assert set(shown) == {
        "UUID", "EventSourceMappingArn", "FunctionArn", "EventSourceArn", "BatchSize",
        "MaximumBatchingWindowInSeconds", "FunctionResponseTypes", "LastModified", "State",
        "StateTransitionReason",
    }  # fmt: skip


async def _mappings_cli(stack: Stack) -> dict[str, dict[str, Any]]:
    """`headwater mappings --json`, run as a user would, keyed by UUID."""
    config = str(stack.directory / "headwater.yaml")
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", "mappings", "--config", config, "--json",
        env=stack.env, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await cli.communicate()
    assert cli.returncode == 0
    return {mapping["UUID"]: mapping for mapping in json.loads(output)["EventSourceMappings"]}


async def warm_workers(stack: Stack, harness: SqsHarness) -> None:
    """Start the function's sandbox in both workers: a cold start counts toward its Timeout, and a
    test about waiting must not fail for that."""
    warm = stack.namespace()
    await harness.send(bodies(warm, 40, prefix="m", **{f"m{i}": {"sleep": 0.3} for i in range(1, 41)}))
    await stack.wait_for(lambda: len(stack.seen(warm)) == 4, what="both workers warm")
    await stack.wait_for(lambda: _is(harness.unacknowledged(), 0), what="the warm-up deleted")


async def _is(count: Awaitable[int], expected: int) -> bool:
    return await count == expected
