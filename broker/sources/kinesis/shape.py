"""Kinesis records in Lambda's shapes: the invocation event and the `KinesisBatchInfo` of a failure record.

The event is what Lambda hands a Kinesis handler (spec §2.2): every record of a batch from one
shard, `data` in base64, `approximateArrivalTimestamp` in epoch seconds with millisecond
precision, `eventID` as `shardId:sequenceNumber`. FilterCriteria see the `kinesis` fields at the
top level with `data` decoded (as JSON when it is JSON), as Lambda's Kinesis filters do.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from broker.filtering import decode_or_text
from broker.invocation_records import iso_timestamp
from broker.sources.base import Batch, Record
from broker.sources.shards import Position
from broker.sources.shards.batch_info import batch_range

RECORD_OVERHEAD_BYTES = 420  # the JSON of one record beyond its data and partition key


@dataclass(frozen=True, slots=True)
class Stream:
    """What every record of a mapping shares: the stream, the region, the function's role."""

    arn: str
    region: str
    invoke_identity_arn: str
    filtered: bool


def record(raw: dict[str, Any], position: Position, stream: Stream) -> Record:
    """One GetRecords entry as a Record holding its Lambda event entry."""
    arrived = raw["ApproximateArrivalTimestamp"].timestamp()
    data = base64.b64encode(raw["Data"]).decode()
    entry = {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": raw["PartitionKey"],
            "sequenceNumber": position.sequence,
            "data": data,
            "approximateArrivalTimestamp": round(arrived, 3),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{position.shard_id}:{position.sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": stream.invoke_identity_arn,
        "awsRegion": stream.region,
        "eventSourceARN": stream.arn,
    }
    return Record(
        item_id=position.sequence,
        lane=position.shard_id,
        event=entry,
        size_bytes=len(data) + len(raw["PartitionKey"]) + 2 * len(position.sequence) + RECORD_OVERHEAD_BYTES,
        arrived_at=arrived,
        filter_view=_filter_view(entry, raw["Data"]) if stream.filtered else entry,
        handle=position,
    )


def event(batch: Batch) -> dict[str, Any]:
    return {"Records": [item.event for item in batch.records]}


def batch_info(batch: Batch, stream_arn: str) -> dict[str, Any]:
    """Lambda's `KinesisBatchInfo`: metadata only; a consumer re-reads the shard by sequence number."""
    return {"KinesisBatchInfo": batch_range(batch, stream_arn, iso_timestamp)}


def _filter_view(entry: dict[str, Any], data: bytes) -> dict[str, Any]:
    """Bytes that are not UTF-8 are read with replacement characters: no record can stop the poller."""
    fields = dict(entry["kinesis"], data=decode_or_text(data.decode("utf-8", errors="replace")))
    return {**{key: value for key, value in entry.items() if key != "kinesis"}, **fields, "kinesis": fields}
