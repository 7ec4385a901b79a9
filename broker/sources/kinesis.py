"""Amazon Kinesis data streams as event sources (the model; polling is a later issue)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from broker.sources.base import STREAM_FIELDS, SourceKind, register, stream_rules

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping


@register
class KinesisKind(SourceKind):
    name = "kinesis"
    label = "Kinesis"
    defaults: ClassVar = {"BatchSize": 100, "MaximumBatchingWindowInSeconds": 0}
    accepts = STREAM_FIELDS | {"starting_position_timestamp", "parallelization_factor", "tumbling_window_in_seconds"}

    @classmethod
    def matches(cls, event_source_arn: str | None, self_managed: bool) -> bool:
        return bool(event_source_arn and ":kinesis:" in event_source_arn)

    @classmethod
    def rules(cls, mapping: EventSourceMapping) -> list[str]:
        return stream_rules(mapping, ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"))
