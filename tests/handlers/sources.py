"""The handler the event source tests deploy: it records every batch it sees and does what each
record's JSON body asks, so a test states its scenario in the messages it sends.

It reads SQS-shaped events (`Records[].body`) and Kafka-shaped ones (`records{}` with base64
`value`), so the contract suite runs unchanged on both. Everything goes to the Redis at REDIS_URL
(passed through the function's Environment.Variables):

- `seen:<ns>`: one JSON entry per invocation: the body ids in order, their lanes and attempts, the
  ids it failed, when it started and ended, the event size, when SQS first handed out the batch's
  oldest message, and the whole event on request;
- `attempts:<ns>`: a hash of deliveries per body id (counted even when the record fails).

Body keys (all optional besides `ns` and `id`): `fail` (raise on the first N attempts of this
record), `report` (name it in batchItemFailures on the first N attempts), `respond` (on the first
attempt return `"malformed"` JSON or an `"unknown"` itemIdentifier), `sleep` (seconds, per batch),
`block` (on its first attempt, wait until the test pushes to `release:<ns>`), `keep_event` (store
the whole event).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import time
from typing import Any

from redis import Redis

BLOCK_LIMIT_SECONDS = 20


@functools.cache
def _redis() -> Redis:
    return Redis.from_url(os.environ["REDIS_URL"])


def handle(event: dict[str, Any], context: Any) -> Any:
    started = time.time()
    records = list(_records(event))
    first = records[0][1]
    namespace = first["ns"]
    attempts = [_redis().hincrby(f"attempts:{namespace}", body["id"], 1) for _, body, _ in records]
    if any(body.get("block") and n == 1 for (_, body, _), n in zip(records, attempts, strict=True)):
        _redis().rpush(f"started:{namespace}", "1")
        _redis().blpop([f"release:{namespace}"], timeout=BLOCK_LIMIT_SECONDS)
    time.sleep(max(float(body.get("sleep", 0)) for _, body, _ in records))
    raised = [body["id"] for (_, body, _), n in zip(records, attempts, strict=True) if n <= body.get("fail", 0)]
    reported = [
        (identifier, body["id"])
        for (identifier, body, _), n in zip(records, attempts, strict=True)
        if n <= body.get("report", 0)
    ]
    _note(namespace, records, attempts, raised or [name for _, name in reported], started=started, event=event)
    if raised:
        raise RuntimeError(f"failing as asked: {raised}")
    respond = next((body["respond"] for (_, body, _), n in zip(records, attempts, strict=True)
                    if n == 1 and "respond" in body), None)  # fmt: skip
    if respond == "malformed":
        return {"batchItemFailures": "not a list"}
    if respond == "unknown":
        return {"batchItemFailures": [{"itemIdentifier": "no-such-record"}]}
    return {"batchItemFailures": [{"itemIdentifier": identifier} for identifier, _ in reported]}


def _note(
    namespace: str,
    records: list[tuple[Any, dict[str, Any], str | None]],
    attempts: list[int],
    failed: list[str],
    *,
    started: float,
    event: dict[str, Any],
) -> None:
    keep = any(body.get("keep_event") for _, body, _ in records)
    entry = {
        "ids": [body["id"] for _, body, _ in records],
        "lanes": [lane for _, _, lane in records],
        "attempts": attempts,
        "failed": failed,
        "started": started,
        "ended": time.time(),
        "bytes": len(json.dumps(event)),
        "first_received": _first_received(event),
        "receive_counts": [r.get("attributes", {}).get("ApproximateReceiveCount") for r in event.get("Records", [])],
        "event": event if keep else None,
    }
    _redis().rpush(f"seen:{namespace}", json.dumps(entry))


def _first_received(event: dict[str, Any]) -> float | None:
    """SQS: when the batch's earliest message was first received (epoch seconds), else None."""
    stamps = [int(r["attributes"]["ApproximateFirstReceiveTimestamp"]) for r in event.get("Records", [])
              if "ApproximateFirstReceiveTimestamp" in r.get("attributes", {})]  # fmt: skip
    return min(stamps) / 1000 if stamps else None


def _records(event: dict[str, Any]) -> Any:
    """(itemIdentifier, decoded body, lane) for each record, in the order the event lists them."""
    if "Records" in event:
        for record in event["Records"]:
            lane = record.get("attributes", {}).get("MessageGroupId")
            yield record["messageId"], json.loads(record["body"]), lane
        return
    for partition, items in event["records"].items():
        for record in items:
            identifier = {"partition": partition, "offset": record["offset"]}
            yield identifier, json.loads(base64.b64decode(record["value"])), partition
