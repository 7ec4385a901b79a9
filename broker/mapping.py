"""The event source mapping model: one shape for SQS, Kinesis, DynamoDB Streams and Kafka.

Ranges are Lambda's API ranges; defaults and the rules that differ per source (SQS's FIFO batch
limit, Kafka's 500 ms window, which fields a source accepts at all) belong to the source packages,
which this model asks through `broker.sources.base.kind_of`: the kinds' interface, which imports no
source (importing it imports the `broker.sources` package, where every source registers its kind).
Sources import this model; this model never imports a source. The UUID defaults to a value derived from
the function and the source, so that a restart keeps the same identity (and the same Kafka consumer
group) instead of starting from scratch.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from broker import filtering
from broker.schema import DestinationTarget, Model
from broker.sources.base import kind_of

UUID_NAMESPACE = uuid.UUID("5d0c6a3e-9f0b-4c52-8d0e-6b1f2f5f8a11")
StartingPosition = Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"]


class OnFailure(Model):
    destination: Annotated[DestinationTarget, Field(max_length=350)] = None


class MappingDestinationConfig(Model):
    on_failure: OnFailure = OnFailure()


class Filter(Model):
    pattern: Annotated[str, Field(max_length=4096)]

    @field_validator("pattern")
    @classmethod
    def _supported(cls, value: str) -> str:
        filtering.compile_pattern(value)  # a ValueError names what is wrong, as Lambda refuses it at create
        return value


class FilterCriteria(Model):
    filters: Annotated[list[Filter], Field(max_length=10)] = Field(default_factory=list)


class ScalingConfig(Model):
    maximum_concurrency: Annotated[int, Field(ge=2, le=1000)] | None = None


class SelfManagedEventSource(Model):
    endpoints: dict[Literal["KAFKA_BOOTSTRAP_SERVERS"], Annotated[list[str], Field(min_length=1)]]


class KafkaEventSourceConfig(Model):
    consumer_group_id: (
        Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[ a-zA-Z0-9\-/*:_+=.@]*$")] | None
    ) = None


class SourceAccessConfiguration(Model):
    type: Literal[
        "BASIC_AUTH",
        "SASL_SCRAM_512_AUTH",
        "SASL_SCRAM_256_AUTH",
        "CLIENT_CERTIFICATE_TLS_AUTH",
        "SERVER_ROOT_CA_CERTIFICATE",
        "VIRTUAL_HOST",
        "VPC_SUBNET",
        "VPC_SECURITY_GROUP",
    ]
    uri: str = Field(alias="URI")


class EventSourceMapping(Model):
    uuid: str = Field("", alias="UUID")
    function_name: str
    event_source_arn: str | None = None
    enabled: bool = True
    batch_size: Annotated[int, Field(ge=1, le=10000)]
    maximum_batching_window_in_seconds: Annotated[float, Field(ge=0, le=300)]
    starting_position: StartingPosition | None = None
    starting_position_timestamp: float | None = None
    parallelization_factor: Annotated[int, Field(ge=1, le=10)] = 1
    maximum_retry_attempts: Annotated[int, Field(ge=-1, le=10000)] = -1
    maximum_record_age_in_seconds: Annotated[int, Field(ge=-1, le=604800)] = -1
    bisect_batch_on_function_error: bool = False
    destination_config: MappingDestinationConfig = MappingDestinationConfig()
    function_response_types: Annotated[list[Literal["ReportBatchItemFailures"]], Field(max_length=1)] = Field(
        default_factory=list
    )
    filter_criteria: FilterCriteria = FilterCriteria()
    scaling_config: ScalingConfig = ScalingConfig()
    tumbling_window_in_seconds: Annotated[int, Field(ge=0, le=900)] = 0
    topics: Annotated[list[str], Field(min_length=1, max_length=1)] | None = None
    self_managed_event_source: SelfManagedEventSource | None = None
    self_managed_kafka_event_source_config: KafkaEventSourceConfig = KafkaEventSourceConfig()
    source_access_configurations: Annotated[list[SourceAccessConfiguration], Field(max_length=23)] = Field(
        default_factory=list
    )

    @model_validator(mode="before")
    @classmethod
    def _source_defaults(cls, raw: Any) -> Any:
        """Fill the defaults that differ per source before the fields are validated."""
        if not isinstance(raw, dict):
            return raw
        kind = kind_of(raw)
        filled = dict(raw)
        for key, value in kind.defaults.items():
            if _lookup(filled, key) is None:
                filled[key] = value
        if not _lookup(filled, "UUID"):
            identity = f"{_lookup(filled, 'FunctionName')}|{kind.identity(filled)}"
            filled["UUID"] = str(uuid.uuid5(UUID_NAMESPACE, identity))
        return filled

    @field_validator("maximum_record_age_in_seconds")
    @classmethod
    def _record_age(cls, value: int) -> int:
        if 0 <= value < 60:
            raise ValueError("must be -1 (infinite) or between 60 and 604800")
        return value

    @model_validator(mode="after")
    def _source_rules(self) -> EventSourceMapping:
        problems = kind_of(self).check(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def source_kind(self) -> str:
        return kind_of(self).name

    @property
    def reports_batch_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.function_response_types

    @property
    def on_failure_destination(self) -> str | None:
        return self.destination_config.on_failure.destination


def _lookup(raw: dict[str, Any], alias: str) -> Any:
    """Read a key given either as Lambda writes it or in snake_case (Python callers)."""
    if alias in raw:
        return raw[alias]
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in alias).lstrip("_")
    return raw.get(snake)
