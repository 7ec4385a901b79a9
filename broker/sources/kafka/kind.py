"""What a Kafka mapping is: how it is recognised, its defaults (BatchSize 100, a 500 ms window), its rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from broker.sources.base import STREAM_FIELDS, SourceKind, register, stream_rules

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping

SASL_TYPES = frozenset({"BASIC_AUTH", "SASL_SCRAM_256_AUTH", "SASL_SCRAM_512_AUTH"})


@register
class KafkaKind(SourceKind):
    name = "kafka"
    label = "Kafka"
    # Lambda's Kafka default window is 500 ms, the one sub-second value the API allows.
    defaults: ClassVar = {"BatchSize": 100, "MaximumBatchingWindowInSeconds": 0.5}
    accepts = STREAM_FIELDS | {
        "starting_position_timestamp",
        "topics",
        "self_managed_event_source",
        "self_managed_kafka_event_source_config",
        "source_access_configurations",
    }

    @classmethod
    def matches(cls, event_source_arn: str | None, self_managed: bool) -> bool:
        return self_managed or bool(event_source_arn and ":kafka:" in event_source_arn)

    @classmethod
    def identity(cls, raw: Mapping[str, Any]) -> str:
        source = raw.get("SelfManagedEventSource") or raw.get("EventSourceArn") or ""
        return f"{source}|{raw.get('Topics')}"

    @classmethod
    def rules(cls, mapping: EventSourceMapping) -> list[str]:
        problems = stream_rules(mapping, ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"))
        if not mapping.topics:
            problems.append("Topics is required: exactly one topic name")
        window = mapping.maximum_batching_window_in_seconds
        if window != 0.5 and window != int(window):
            problems.append("MaximumBatchingWindowInSeconds must be whole seconds (or the 0.5 default)")
        if mapping.on_failure_destination in {f"kafka://{topic}" for topic in mapping.topics or []}:
            problems.append("DestinationConfig.OnFailure cannot be the mapping's own topic")
        sasl = [c.type for c in mapping.source_access_configurations if c.type in SASL_TYPES]
        if len(sasl) > 1:
            problems.append(f"SourceAccessConfigurations: one SASL method at most (got {', '.join(sasl)})")
        return problems
