"""What moto's stream cannot produce, checked on the shaping functions themselves with records as
botocore returns them: binary values nested in maps, lists and sets go back to base64 text,
`userIdentity` (TTL deletions) rides along, and `DDBStreamBatchInfo`'s times have no milliseconds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from broker.sources.base import Batch
from broker.sources.dynamodb import shape
from broker.sources.shards import Position

ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/orders/stream/2026-01-01T00:00:00.000"
STREAM = shape.Stream(ARN, "eu-west-1")
TTL = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}


def _raw(sequence: str, created: datetime, **extra: Any) -> dict[str, Any]:
    """A REMOVE by TTL as botocore parses it: bytes for binary values, a datetime for the creation time."""
    old = {"pk": {"S": "order#42"}, "doc": {"M": {"raw": {"B": b"\x00\xff"}, "parts": {"L": [{"BS": [b"a", b"b"]}]}}}}
    change = {"ApproximateCreationDateTime": created, "Keys": {"pk": {"S": "order#42"}}, "OldImage": old,
              "SequenceNumber": sequence, "SizeBytes": 40, "StreamViewType": "OLD_IMAGE"}  # fmt: skip
    return {"eventID": "e1", "eventName": "REMOVE", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
            "awsRegion": "eu-west-1", "dynamodb": change, **extra}  # fmt: skip


def test_binary_values_return_to_base64_and_user_identity_is_kept() -> None:
    created = datetime(2026, 1, 1, 10, 15, 29, 640000, tzinfo=UTC)
    shaped = shape.record(_raw("100", created, userIdentity=TTL), Position("shard-1", "100", 0, 1), STREAM)
    entry = shaped.event
    assert list(entry) == ["eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb",
                           "userIdentity", "eventSourceARN"]  # fmt: skip
    assert entry["userIdentity"] == TTL
    assert entry["dynamodb"]["ApproximateCreationDateTime"] == int(created.timestamp())
    doc = entry["dynamodb"]["OldImage"]["doc"]["M"]
    assert doc == {"raw": {"B": "AP8="}, "parts": {"L": [{"BS": ["YQ==", "Yg=="]}]}}
    assert shaped.size_bytes == len(json.dumps(entry)) + 2
    assert shaped.filter_view["dynamodb"]["Keys"] == {"pk": {"S": "order#42"}}


def test_batch_info_names_the_shard_and_sequence_range_in_whole_seconds() -> None:
    first = shape.record(_raw("100", datetime(2026, 1, 1, 10, 15, 28, tzinfo=UTC)), Position("s", "100", 0, 1), STREAM)
    last = shape.record(_raw("105", datetime(2026, 1, 1, 10, 15, 29, tzinfo=UTC)), Position("s", "105", 1, 1), STREAM)
    info = shape.batch_info(Batch((first, last), lane="s#0"), ARN)
    assert info == {
        "DDBStreamBatchInfo": {
            "shardId": "s", "startSequenceNumber": "100", "endSequenceNumber": "105",
            "approximateArrivalOfFirstRecord": "2026-01-01T10:15:28Z",
            "approximateArrivalOfLastRecord": "2026-01-01T10:15:29Z", "batchSize": 2, "streamArn": ARN,
        }
    }  # fmt: skip
