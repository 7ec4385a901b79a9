"""DynamoDB Streams records in Lambda's shapes: the invocation event and the `DDBStreamBatchInfo` of a failure record.

The event is what Lambda hands a DynamoDB handler (spec §2.3): the stream record as GetRecords
gives it (`eventID`, `eventName` INSERT | MODIFY | REMOVE, `awsRegion`, the `dynamodb` part with
its Keys and images in DynamoDB's typed JSON, `userIdentity` when the stream has one, as for TTL
deletions), with `eventVersion` "1.1", `eventSource` "aws:dynamodb" and the stream's ARN added.
botocore decodes what the wire carries, so two values are put back as they travelled: binary
attributes (`B`, `BS`, also inside `M` and `L`) become base64 text again, and
`ApproximateCreationDateTime` becomes epoch seconds (whole seconds: the stream rounds it down).

FilterCriteria see the record as the handler does, so patterns name the `dynamodb` key with typed
values (`{"dynamodb": {"NewImage": {"status": {"S": ["done"]}}}}`) and metadata such as `eventName`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker.sources.base import Batch, Record
from broker.sources.shards import Position
from broker.sources.shards.batch_info import batch_range

EVENT_VERSION = "1.1"
RECORD_SEPARATOR_BYTES = 2  # ", " between records in the event's JSON
# The order of the `dynamodb` part's keys in Lambda's events (keys the stream adds come after them).
STREAM_RECORD_KEYS = (
    "ApproximateCreationDateTime", "Keys", "NewImage", "OldImage", "SequenceNumber", "SizeBytes", "StreamViewType",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Stream:
    """What every record of a mapping shares: the stream's ARN and the region it is in."""

    arn: str
    region: str


def record(raw: dict[str, Any], position: Position, stream: Stream) -> Record:
    """One GetRecords entry as a Record holding its Lambda event entry."""
    change = raw["dynamodb"]
    created = _epoch_seconds(change.get("ApproximateCreationDateTime"))
    entry: dict[str, Any] = {
        "eventID": raw["eventID"],
        "eventName": raw["eventName"],
        "eventVersion": EVENT_VERSION,
        "eventSource": "aws:dynamodb",
        "awsRegion": raw.get("awsRegion") or stream.region,
        "dynamodb": _stream_record(change, created),
    }
    if raw.get("userIdentity"):
        entry["userIdentity"] = raw["userIdentity"]
    entry["eventSourceARN"] = stream.arn
    return Record(
        item_id=position.sequence,
        lane=position.shard_id,
        event=entry,
        # Exactly the bytes this entry adds to the event's JSON: images run up to 400 KB each, so an
        # estimate from SizeBytes (which counts neither the type tags nor base64) could pass 6 MB.
        size_bytes=len(json.dumps(entry)) + RECORD_SEPARATOR_BYTES,
        arrived_at=float(created),
        filter_view=entry,
        handle=position,
    )


def item_key(raw: dict[str, Any]) -> str:
    """The item a record changes (its whole primary key): ParallelizationFactor keeps each item's order."""
    return json.dumps(_typed(raw["dynamodb"].get("Keys", {})), sort_keys=True)


def event(batch: Batch) -> dict[str, Any]:
    return {"Records": [item.event for item in batch.records]}


def batch_info(batch: Batch, stream_arn: str) -> dict[str, Any]:
    """Lambda's `DDBStreamBatchInfo`: metadata only (a consumer re-reads the shard by sequence
    number); unlike Kinesis's, its arrival times have no milliseconds."""
    return {"DDBStreamBatchInfo": batch_range(batch, stream_arn, _iso_seconds)}


def _stream_record(change: dict[str, Any], created: int) -> dict[str, Any]:
    shaped: dict[str, Any] = {"ApproximateCreationDateTime": created}
    for key in STREAM_RECORD_KEYS[1:]:
        if key in change:
            shaped[key] = _typed(change[key]) if key.endswith(("Keys", "Image")) else change[key]
    for key, value in change.items():
        if key not in shaped:
            shaped[key] = value
    return shaped


def _typed(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attribute values as the stream's JSON carries them (binary as base64 text)."""
    return {name: _attribute(value) for name, value in attributes.items()}


def _attribute(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) != 1:  # not a typed value: leave it as the stream gave it
        return value
    [(kind, inner)] = value.items()
    if kind == "B":
        return {"B": _base64(inner)}
    if kind == "BS":
        return {"BS": [_base64(item) for item in inner]}
    if kind == "M":
        return {"M": _typed(inner)}
    if kind == "L":
        return {"L": [_attribute(item) for item in inner]}
    return {kind: inner}


def _base64(value: bytes | str) -> str:
    return base64.b64encode(value).decode() if isinstance(value, bytes | bytearray) else value


def _epoch_seconds(moment: datetime | float | None) -> int:
    """Whole epoch seconds, as the stream rounds ApproximateCreationDateTime (now, if it has none)."""
    if isinstance(moment, datetime):
        return int(moment.timestamp())
    return int(moment) if moment is not None else int(datetime.now(tz=UTC).timestamp())


def _iso_seconds(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
