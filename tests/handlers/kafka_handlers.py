"""Handlers for the Kafka mapping tests: they note each event in Redis (TEST_REDIS_URL), because
they run in sandboxes of worker subprocesses, far from the test."""

from __future__ import annotations

import base64
import functools
import json
import os
import time
from typing import Any

from redis import Redis

EVENTS = "kafka:events"  # every event received, in arrival order
STARTED = "kafka:started"  # gated: the batch has reached the handler
GATE = "kafka:gate"  # gated: a token here lets one waiting batch finish
FAILED_ONCE = "kafka:failed-once"  # flaky: record ids that already failed once
RUNNING = "kafka:running:"  # slow_marked, + partition: how many batches of it run right now
OVERLAPS = "kafka:overlaps"  # slow_marked: partitions seen with two batches running at once
OFFSETS = "kafka:offsets:"  # slow_marked, + partition: offsets in the order their batches began
SLOW_SECONDS = 1.5


@functools.cache
def _client() -> Redis:
    return Redis.from_url(os.environ["TEST_REDIS_URL"])


def _note(event: Any, context: Any) -> None:
    _client().rpush(EVENTS, json.dumps({"request_id": context.aws_request_id, "event": event}))


def values(event: dict[str, Any]) -> list[str]:
    return [base64.b64decode(r["value"]).decode() for rs in event["records"].values() for r in rs]


def record(event: dict[str, Any], context: Any) -> None:
    """Succeeds, noting the event."""
    _note(event, context)


def noop(event: dict[str, Any], context: Any) -> None:
    """Does nothing at all: the benchmark's handler."""


def fail_on_poison(event: dict[str, Any], context: Any) -> None:
    """Fails every batch holding a record whose value is `poison`."""
    _note(event, context)
    if "poison" in values(event):
        raise ValueError("poison record")


def flaky(event: dict[str, Any], context: Any) -> None:
    """Fails the first batch that holds each record valued `flaky`; succeeds on the retry."""
    _note(event, context)
    for records in event["records"].values():
        for item in records:
            value = base64.b64decode(item["value"]).decode()
            key = f"{item['topic']}-{item['partition']}@{item['offset']}"
            if value == "flaky" and _client().sadd(FAILED_ONCE, key):
                raise RuntimeError(f"flaky record {key} fails once")


def report_bad(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Names every record valued `bad` in batchItemFailures, the first time it is seen."""
    _note(event, context)
    failures = []
    for partition, records in event["records"].items():
        for item in records:
            key = f"{partition}@{item['offset']}"
            if base64.b64decode(item["value"]).decode() == "bad" and _client().sadd(FAILED_ONCE, key):
                failures.append({"itemIdentifier": {"partition": partition, "offset": item["offset"]}})
    return {"batchItemFailures": failures}


def gated(event: dict[str, Any], context: Any) -> None:
    """Notes the event, then waits for a token on GATE (so a test decides when the batch ends)."""
    _note(event, context)
    _client().rpush(STARTED, json.dumps(event))
    if _client().blpop([GATE], timeout=60) is None:
        raise TimeoutError("no gate token within 60 s")


def slow_marked(event: dict[str, Any], context: Any) -> None:
    """Takes SLOW_SECONDS per batch, noting per partition the offsets it began and whether another
    batch of the same partition was running at that moment."""
    client = _client()
    client.rpush(STARTED, json.dumps(event))
    partitions = [records[0]["partition"] for records in event["records"].values()]
    for partition, records in zip(partitions, event["records"].values(), strict=True):
        if client.incr(f"{RUNNING}{partition}") > 1:
            client.rpush(OVERLAPS, partition)
        client.rpush(f"{OFFSETS}{partition}", *[record["offset"] for record in records])
    time.sleep(SLOW_SECONDS)
    for partition in partitions:
        client.decr(f"{RUNNING}{partition}")
