"""The Kinesis tests' handler: the shared recorder of `tests.handlers.sources`, fed Kinesis events.

Each Kinesis record is handed to the recorder as the SQS-shaped record it understands: its
sequence number as the `messageId` (so `batchItemFailures` name sequence numbers, as Lambda's
Kinesis contract wants), its decoded `data` as the `body`, its partition key as the lane. The
untouched Lambda event rides along under `kinesisEvent`, so `keep_event` stores it for the shape
checks. Everything else (what a body asks, what is recorded) is the shared recorder's.
"""

from __future__ import annotations

import base64
from typing import Any

from tests.handlers import sources


def handle(event: dict[str, Any], context: Any) -> Any:
    records = [
        {
            "messageId": record["kinesis"]["sequenceNumber"],
            "body": base64.b64decode(record["kinesis"]["data"]).decode(),
            "attributes": {"MessageGroupId": record["kinesis"]["partitionKey"]},
        }
        for record in event["Records"]
    ]
    return sources.handle({"Records": records, "kinesisEvent": event}, context)
