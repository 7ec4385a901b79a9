"""DynamoDB Streams as event sources (the model; polling is a later issue)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from broker.sources.base import STREAM_FIELDS, SourceKind, register, stream_rules

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping


@register
class DynamoDbKind(SourceKind):
    name = "dynamodb"
    label = "DynamoDB Streams"
    defaults: ClassVar = {"BatchSize": 100, "MaximumBatchingWindowInSeconds": 0}
    accepts = STREAM_FIELDS | {"parallelization_factor", "tumbling_window_in_seconds"}

    @classmethod
    def matches(cls, event_source_arn: str | None, self_managed: bool) -> bool:
        return bool(event_source_arn and ":dynamodb:" in event_source_arn and "/stream/" in event_source_arn)

    @classmethod
    def rules(cls, mapping: EventSourceMapping) -> list[str]:
        return stream_rules(mapping, ("TRIM_HORIZON", "LATEST"))
