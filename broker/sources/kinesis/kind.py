"""What a Kinesis mapping is: how it is recognised, its defaults (BatchSize 100, no window), its rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from broker.sources.base import STREAM_FIELDS, SourceKind, register, stream_rules

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping

STREAM_ARN_MARKER = ":stream/"


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
        problems = stream_rules(mapping, ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"))
        if STREAM_ARN_MARKER not in (mapping.event_source_arn or ""):
            problems.append("EventSourceArn must be a stream ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME)")
        return problems


def stream_name(arn: str) -> str:
    """The stream's name, from its ARN (the Kinesis calls take StreamName everywhere)."""
    return arn.split(STREAM_ARN_MARKER, 1)[1]
