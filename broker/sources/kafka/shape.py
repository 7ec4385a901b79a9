"""Kafka records in Lambda's shapes: the invocation event and the two forms of an on-failure record.

The event is what Lambda hands a self-managed Kafka (or MSK) handler: records grouped under
`"<topic>-<partition>"`, key and value in base64, timestamps in epoch milliseconds, and headers
as a list of one-key objects whose values are Java's signed bytes (-128..127), which is how a
handler written for Lambda decodes them.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from broker.filtering import decode_or_text
from broker.invocation_records import iso_timestamp
from broker.sources.base import Batch, FailurePart, Record
from broker.sources.kafka.lanes import Position

TIMESTAMP_TYPES = {0: "CREATE_TIME", 1: "LOG_APPEND_TIME"}


def lane_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def item_id(topic: str, partition: int, offset: int) -> str:
    """A record's `item_id`: Lambda's `{"partition": "topic-p", "offset": n}` identifier as `topic-p@n`."""
    return f"{lane_name(topic, partition)}@{offset}"


def item_id_of(identifier: Any) -> str | None:
    """Read a `batchItemFailures` identifier; None when it is not `{"partition": str, "offset": int}`."""
    if not isinstance(identifier, dict):
        return None
    partition, offset = identifier.get("partition"), identifier.get("offset")
    if isinstance(offset, str) and offset.isdigit():
        offset = int(offset)
    if not isinstance(partition, str) or not partition or isinstance(offset, bool) or not isinstance(offset, int):
        return None
    return f"{partition}@{offset}"


# JSON text around one record beyond its key, value and headers: field names, topic, numbers.
RECORD_OVERHEAD_BYTES = 160


def size_of(message: Any) -> int:
    """What one consumed record adds to the event's JSON text, at most: its base64 key and value,
    its headers as Java bytes (up to 5 characters each), and the entry's own field names and
    numbers. Counted from the record's parts, before it is shaped, for the 6 MB cap."""
    headers = message.headers
    header_bytes = sum(len(name) + 5 * len(value or b"") + 8 for name, value in headers) if headers else 0
    return (
        RECORD_OVERHEAD_BYTES
        + len(message.topic)
        + _base64_length(message.key)
        + _base64_length(message.value)
        + (header_bytes)
    )


def record(message: Any, epoch: int, filtered: bool) -> Record:
    """One consumed aiokafka `ConsumerRecord` as a Record holding its Lambda event entry.

    This runs for every record, so it does only what every record needs: the value is decoded for
    FilterCriteria only when the mapping has filters, and the size is counted from the parts
    (`size_of`) instead of by encoding."""
    key, value, lane = message.key, message.value, f"{message.topic}-{message.partition}"
    entry: dict[str, Any] = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "timestamp": message.timestamp,
        "timestampType": TIMESTAMP_TYPES.get(message.timestamp_type, "CREATE_TIME"),
    }
    if key is not None:  # Lambda's form for a null key is unconfirmed; it is left out
        entry["key"] = _base64(key)
    entry["value"] = None if value is None else _base64(value)
    entry["headers"] = [{name: _java_bytes(data)} for name, data in message.headers] if message.headers else []
    return Record(
        item_id=f"{lane}@{message.offset}",
        lane=lane,
        event=entry,
        size_bytes=size_of(message),
        arrived_at=message.timestamp / 1000,
        filter_view=_filter_view(entry, value) if filtered else entry,
        handle=Position(message.offset, epoch),
    )


def event(batch: Batch, bootstrap_servers: str, cluster_arn: str | None) -> dict[str, Any]:
    """Lambda's event: `SelfManagedKafka`, or `aws:kafka` with the cluster ARN for MSK."""
    records: dict[str, list[dict[str, Any]]] = {}
    for item in batch.records:
        records.setdefault(item.lane or "", []).append(item.event)
    if cluster_arn:
        return {
            "eventSource": "aws:kafka",
            "eventSourceArn": cluster_arn,
            "bootstrapServers": bootstrap_servers,
            "records": records,
        }
    return {"eventSource": "SelfManagedKafka", "bootstrapServers": bootstrap_servers, "records": records}


def batch_info(batch: Batch, bootstrap_servers: str, cluster_arn: str | None) -> dict[str, Any]:
    """The `KafkaBatchInfo` of an on-failure record: metadata only, never the records' data."""
    ranges: dict[str, dict[str, str]] = {}
    for item in batch.records:
        offset, moment = str(item.event["offset"]), _moment(item)
        span = ranges.setdefault(item.lane or "", {"firstRecordOffset": offset, "firstRecordTimestamp": moment})
        span["lastRecordOffset"], span["lastRecordTimestamp"] = offset, moment
    info = _info_head(batch, bootstrap_servers, cluster_arn)
    info["recordsInfo"] = {
        lane: {
            key: span[key]
            for key in (
                "firstRecordOffset",
                "lastRecordOffset",
                "firstRecordTimestamp",
                "lastRecordTimestamp",
            )
        }
        for lane, span in ranges.items()
    }
    return {"KafkaBatchInfo": info}


def record_failures(batch: Batch, bootstrap_servers: str, cluster_arn: str | None) -> list[FailurePart]:
    """Lambda's form for a Kafka-topic on-failure destination: one message per failed record, keyed with
    the record's own key, each with the failed batch's `KafkaBatchInfo` (its size and payload size, as in
    Lambda's example) narrowed to this record's `recordInfo`, and `payload`, the record alone as a Kafka
    event. Unlike the batch-level record, it carries the record's data: the failure topic is where the
    record lives on."""
    head = _info_head(batch, bootstrap_servers, cluster_arn)
    return [
        FailurePart(
            {
                "KafkaBatchInfo": {
                    **head,
                    "recordInfo": {"offset": str(item.event["offset"]), "timestamp": _moment(item)},
                },
                "payload": event(Batch((item,), item.lane), bootstrap_servers, cluster_arn),
            },
            key=record_key(item),
        )
        for item in batch.records
    ]


def record_key(item: Record) -> bytes | None:
    """A record's Kafka key, exactly as it was read (the event holds it in base64); None without one."""
    key = item.event.get("key")
    return base64.b64decode(key) if isinstance(key, str) else None


def _info_head(batch: Batch, bootstrap_servers: str, cluster_arn: str | None) -> dict[str, Any]:
    """What both forms of `KafkaBatchInfo` open with, in AWS's key order; self-managed Kafka has no ARN."""
    info: dict[str, Any] = {"batchSize": len(batch)}
    if cluster_arn:
        info["eventSourceArn"] = cluster_arn
    info["bootstrapServers"] = bootstrap_servers
    info["payloadSize"] = len(json.dumps(event(batch, bootstrap_servers, cluster_arn)).encode())
    return info


def _moment(item: Record) -> str:
    return iso_timestamp(item.event["timestamp"] / 1000)


def _base64_length(data: bytes | None) -> int:
    return 0 if data is None else (len(data) + 2) // 3 * 4


def _base64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _java_bytes(data: bytes | None) -> list[int]:
    """Bytes as Java's signed `byte[]`: 0xC3 becomes -61."""
    return [value - 256 if value > 127 else value for value in (data or b"")]


def _filter_view(entry: dict[str, Any], value: bytes | None) -> dict[str, Any]:
    """What FilterCriteria see: the record's metadata, and its value decoded (as JSON when it is JSON).

    Bytes that are not UTF-8 are read with replacement characters, and JSON too deep to decode
    stays text, so no value can stop the poller; the handler still gets the exact bytes (base64)."""
    view = dict(entry)
    if value is not None:
        view["value"] = decode_or_text(value.decode("utf-8", errors="replace"))
    return view
