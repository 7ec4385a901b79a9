"""What a DynamoDB Streams mapping is: how it is recognised, its defaults (BatchSize 100, no window), its rules.

Any DynamoDB ARN is recognised as this kind, so that a table's ARN given by mistake is told what
to give instead rather than being called an unsupported source.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from broker.sources.base import STREAM_FIELDS, SourceKind, register, stream_rules

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping

STREAM_ARN = re.compile(r"^arn:aws[\w-]*:dynamodb:(?P<region>[\w-]+):\d{12}:table/(?P<table>[^/]+)/stream/[^/]+$")
STREAM_ARN_FORM = "arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL"


@register
class DynamoDbKind(SourceKind):
    name = "dynamodb"
    label = "DynamoDB Streams"
    defaults: ClassVar = {"BatchSize": 100, "MaximumBatchingWindowInSeconds": 0}
    accepts = STREAM_FIELDS | {"parallelization_factor", "tumbling_window_in_seconds"}

    @classmethod
    def matches(cls, event_source_arn: str | None, self_managed: bool) -> bool:
        return bool(event_source_arn and ":dynamodb:" in event_source_arn)

    @classmethod
    def rules(cls, mapping: EventSourceMapping) -> list[str]:
        if mapping.starting_position == "AT_TIMESTAMP":  # one clear line instead of two about the timestamp
            problems = [
                "StartingPosition must be one of TRIM_HORIZON | LATEST: DynamoDB Streams have no AT_TIMESTAMP "
                "(Lambda offers it for Kinesis and Kafka only)"
            ]
        else:
            problems = stream_rules(mapping, ("TRIM_HORIZON", "LATEST"))
        arn = mapping.event_source_arn or ""
        if STREAM_ARN.match(arn) is None:
            hint = (
                "; a table's ARN is not one: enable its stream and give its LatestStreamArn"
                if "/stream/" not in arn
                else ""
            )
            problems.append(f"EventSourceArn must be a DynamoDB stream ARN ({STREAM_ARN_FORM}){hint}")
        return problems


def table_name(arn: str) -> str:
    """The table a stream ARN belongs to, for log lines and error messages."""
    found = STREAM_ARN.match(arn)
    return found["table"] if found else arn
