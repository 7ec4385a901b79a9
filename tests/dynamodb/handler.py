"""The DynamoDB tests' handler: the shared recorder of `tests.handlers.sources`, fed DynamoDB Streams events.

Each stream record is handed to the recorder as the SQS-shaped record it understands: its
`dynamodb.SequenceNumber` as the `messageId` (so `batchItemFailures` name sequence numbers, as
Lambda's DynamoDB contract wants), the item's `body` attribute (a JSON text telling the recorder
what to do) as the `body`. Items are keyed by (`ns`, `id`), so a record whose stream view carries
no image (KEYS_ONLY, or a REMOVE without an old image) still names its namespace and id.

Every untouched Lambda event is also pushed to `events:<ns>` in the test's Redis, so the shape
tests see each record exactly as the function did, whatever its view type; the contract's
`keep_event` finds it under `dynamodbEvent`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from redis import Redis

from tests.handlers import sources


@functools.cache
def _redis() -> Redis:
    return Redis.from_url(os.environ["REDIS_URL"])


def handle(event: dict[str, Any], context: Any) -> Any:
    records = [_as_queue_record(record) for record in event["Records"]]
    namespace = json.loads(records[0]["body"])["ns"]
    _redis().rpush(f"events:{namespace}", json.dumps(event))
    return sources.handle({"Records": records, "dynamodbEvent": event}, context)


def _as_queue_record(record: dict[str, Any]) -> dict[str, Any]:
    change = record["dynamodb"]
    image = change.get("NewImage") or change.get("OldImage") or {}
    keys = change["Keys"]
    body = image["body"]["S"] if "body" in image else json.dumps({"ns": keys["ns"]["S"], "id": keys["id"]["S"]})
    return {"messageId": change["SequenceNumber"], "body": body, "attributes": {"MessageGroupId": keys["id"]["S"]}}
