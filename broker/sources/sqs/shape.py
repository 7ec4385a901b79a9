"""An SQS message as Lambda hands it to a function: field names, order, and every value a string.

Message attributes come out lower-camel with both list fields always present, as AWS sends them;
binary values are base64 (UNCONFIRMED against AWS). `md5OfMessageAttributes` is null for a
message without attributes (AWS recordings show it both null and absent).
"""

from __future__ import annotations

import base64
from typing import Any

ATTRIBUTE_ORDER = (
    "ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp",
    "SequenceNumber", "MessageGroupId", "MessageDeduplicationId",
)  # fmt: skip


def lambda_record(message: dict[str, Any], arn: str, region: str) -> dict[str, Any]:
    """One ReceiveMessage entry (boto3's shape) as a record of Lambda's SQS event."""
    attributes = message.get("Attributes", {})
    ordered = {name: attributes[name] for name in ATTRIBUTE_ORDER if name in attributes}
    ordered.update((name, value) for name, value in attributes.items() if name not in ordered)
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": ordered,
        "messageAttributes": {
            name: _message_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfMessageAttributes": message.get("MD5OfMessageAttributes"),
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": region,
    }


def _message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    shaped: dict[str, Any] = {}
    if "StringValue" in value:
        shaped["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        shaped["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
    shaped["stringListValues"] = list(value.get("StringListValues", []))
    binary_list = value.get("BinaryListValues", [])
    shaped["binaryListValues"] = [base64.b64encode(item).decode() for item in binary_list]
    shaped["dataType"] = value["DataType"]
    return shaped
