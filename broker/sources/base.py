"""What every event source declares about its mappings: how it is recognised, its defaults, its rules.

A source module subclasses `SourceKind` and decorates it with `register`; nothing else in the code
names a specific source. The runtime side of a source (its poller) lives in the same module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping

# Fields that only some sources accept; every other mapping field applies to all sources.
SOURCE_SPECIFIC_FIELDS = frozenset(
    {
        "starting_position",
        "starting_position_timestamp",
        "parallelization_factor",
        "maximum_retry_attempts",
        "maximum_record_age_in_seconds",
        "bisect_batch_on_function_error",
        "destination_config",
        "scaling_config",
        "tumbling_window_in_seconds",
        "topics",
        "self_managed_event_source",
        "self_managed_kafka_event_source_config",
        "source_access_configurations",
    }
)
STREAM_FIELDS = frozenset(
    {
        "starting_position",
        "maximum_retry_attempts",
        "maximum_record_age_in_seconds",
        "bisect_batch_on_function_error",
        "destination_config",
    }
)


class SourceKind:
    """A kind of event source, as the mapping model sees it."""

    name: ClassVar[str]
    label: ClassVar[str]
    defaults: ClassVar[Mapping[str, Any]]
    accepts: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def matches(cls, event_source_arn: str | None, self_managed: bool) -> bool:
        raise NotImplementedError

    @classmethod
    def identity(cls, raw: Mapping[str, Any]) -> str:
        """What makes two mappings of this kind the same source (feeds the stable UUID)."""
        return str(raw.get("EventSourceArn") or raw.get("event_source_arn"))

    @classmethod
    def check(cls, mapping: EventSourceMapping) -> list[str]:
        """Every rule this kind adds to the shared ranges, as user-facing problems."""
        return [
            f"{_pascal(field)} does not apply to {cls.label} event sources"
            for field in sorted((mapping.model_fields_set & SOURCE_SPECIFIC_FIELDS) - cls.accepts)
        ] + cls.rules(mapping)

    @classmethod
    def rules(cls, mapping: EventSourceMapping) -> list[str]:
        return []


_KINDS: list[type[SourceKind]] = []


def register(kind: type[SourceKind]) -> type[SourceKind]:
    _KINDS.append(kind)
    return kind


def kind_of(mapping: Mapping[str, Any] | EventSourceMapping) -> type[SourceKind]:
    if isinstance(mapping, Mapping):
        arn = mapping.get("EventSourceArn", mapping.get("event_source_arn"))
        self_managed = bool(mapping.get("SelfManagedEventSource", mapping.get("self_managed_event_source")))
    else:
        arn, self_managed = mapping.event_source_arn, mapping.self_managed_event_source is not None
    for kind in _KINDS:
        if kind.matches(arn if isinstance(arn, str) else None, self_managed):
            return kind
    forms = ", ".join(kind.label for kind in _KINDS)
    raise ValueError(
        f"EventSourceArn {arn!r} is not a supported event source ({forms}); "
        "for self-managed Kafka give SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS and Topics"
    )


def stream_rules(mapping: EventSourceMapping, positions: tuple[str, ...]) -> list[str]:
    """The rules Kinesis, DynamoDB Streams and Kafka share: a starting position is required."""
    problems = []
    if mapping.starting_position is None:
        problems.append(f"StartingPosition is required ({' | '.join(positions)})")
    elif mapping.starting_position not in positions:
        problems.append(f"StartingPosition must be one of {' | '.join(positions)}")
    if (mapping.starting_position == "AT_TIMESTAMP") != (mapping.starting_position_timestamp is not None):
        problems.append("StartingPositionTimestamp goes with StartingPosition AT_TIMESTAMP, and only with it")
    return problems


def _pascal(field: str) -> str:
    return "".join(part.capitalize() for part in field.split("_"))
