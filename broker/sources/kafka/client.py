"""The aiokafka consumer of one Kafka mapping: how it is built, how the group's rebalances reach the
source, and how a record aiokafka cannot decode is stepped over.

Kept apart from `source` (batches, lanes, commits) because these are the only places that depend on
what aiokafka asks of us: its constructor's arguments (HEADWATER_KAFKA_CONSUMER_OPTIONS' names and
values are checked against them, and a constructor or start that refuses what the variable set is a
`ConfigError`, so a typo or a bad value disables the mapping with a reason instead of crash-looping the
poller), its insistence on an instance of its own listener class, and its habit of raising on an
undecodable record without naming it.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import InvalidSessionTimeoutError, KafkaError

from broker.errors import ConfigError
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.settings import get_settings, usable, variable
from broker.sources.base import SourceContext
from broker.sources.kafka import shape
from broker.sources.kafka.access import client_settings

FETCH_WAIT_MS = 200
STEP_OVER_SECONDS = 10.0  # then the fetch loop reads on, and raises here again if the record is still ahead
REJOIN_MARGIN_SECONDS = 10.0  # beyond the drain: the group's own round trips
# What HEADWATER_KAFKA_CONSUMER_OPTIONS may name: aiokafka's consumer arguments (session_timeout_ms, fetch sizes...).
CONSUMER_ARGUMENTS = frozenset(inspect.signature(AIOKafkaConsumer).parameters) - {"topics", "loop"}
DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(AIOKafkaConsumer).parameters.items()}
# Values aiokafka takes on trust and trips over later (deep in a request it encodes, or when it joins the
# group), checked here so the reason names the option. Durations (`_ms`), sizes (`_bytes`) and
# max_poll_records are whole numbers, above zero unless zero has a meaning.
CHOICES = {
    "auto_offset_reset": ("earliest", "latest", "none"),
    "isolation_level": ("read_uncommitted", "read_committed"),
    "security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "sasl_mechanism": ("PLAIN", "GSSAPI", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"),
}
ZERO_ALLOWED = frozenset({"fetch_max_wait_ms", "fetch_min_bytes", "retry_backoff_ms", "consumer_timeout_ms"})
PYTHON_OBJECTS = frozenset(
    {"key_deserializer", "value_deserializer", "ssl_context", "sasl_oauth_token_provider"}
    | {"partition_assignment_strategy"}
)
# Refusals of a started consumer that a configured value can cause (a type aiokafka cannot encode, a
# session timeout outside the broker's group.min/max.session.timeout.ms).
START_REFUSALS = (TypeError, ValueError, InvalidSessionTimeoutError)
log = get_logger(__name__)


class Rebalanced(Protocol):
    """What the group's rebalances are handed to (the source: see its module docstring)."""

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...


def bootstrap_servers(mapping: EventSourceMapping, cluster_arn: str | None) -> str:
    """The self-managed endpoints, else (MSK by ARN, which is not resolved) HEADWATER_KAFKA_BOOTSTRAP_SERVERS."""
    endpoints = mapping.self_managed_event_source
    if endpoints is not None:
        return ",".join(endpoints.endpoints["KAFKA_BOOTSTRAP_SERVERS"])
    servers = get_settings().kafka_bootstrap_servers
    if not servers:
        needed = variable("kafka_bootstrap_servers")
        raise ConfigError([f"{cluster_arn}: an MSK mapping needs {needed} (ARNs are not resolved)"])
    return servers


async def build_consumer(
    mapping: EventSourceMapping, context: SourceContext, servers: str, group_id: str, drain_seconds: float
) -> Any:
    """The consumer, with the mapping's security settings; not yet started. Its rebalance timeout
    covers the source's drain of revoked partitions, or the group would move on without us."""
    security = await client_settings(mapping.source_access_configurations, context.aws_session)
    options: dict[str, Any] = {
        "bootstrap_servers": servers,
        "group_id": group_id,
        "client_id": f"headwater-{mapping.uuid[:8]}",
        "enable_auto_commit": False,
        # Only reached without a usable committed offset: the starting position is resolved by the
        # source, and an offset lost to retention restarts at the oldest record kept.
        "auto_offset_reset": "earliest",
        "rebalance_timeout_ms": int((drain_seconds + REJOIN_MARGIN_SECONDS) * 1000),
        **security,
        **context.extras.get("kafka_consumer_options", {}),
        **(configured := environment_options()),
    }
    try:
        return Consumer(configured, **options)
    except (TypeError, ValueError) as error:
        if not configured:
            raise
        raise refused(configured, "built", error) from error


def environment_options() -> dict[str, Any]:
    """HEADWATER_KAFKA_CONSUMER_OPTIONS, checked against aiokafka's arguments: each name, and each value
    aiokafka would only trip over later. A problem is a `ConfigError`, which disables the Kafka mappings
    (with the reason) and leaves the others running."""
    options = usable(get_settings().kafka_consumer_options)
    name = variable("kafka_consumer_options")
    unknown = sorted(set(options) - CONSUMER_ARGUMENTS)
    problems = [f"{name}: unknown aiokafka consumer option(s) {', '.join(unknown)}"] if unknown else []
    for option in sorted(set(options) & CONSUMER_ARGUMENTS):
        problem = value_problem(option, options[option])
        if problem is not None:
            problems.append(f"{name}: {option} {problem}")
    if problems:
        raise ConfigError(problems, "environment")
    return options


def value_problem(option: str, value: object) -> str | None:
    """What is wrong with one aiokafka option's value from JSON, None when nothing we can tell. Only
    numbers are repeated: any other value may be a secret (a SASL password)."""
    if option in PYTHON_OBJECTS:
        return "is a Python object; it cannot be given in JSON"
    if option in CHOICES:
        return None if value in CHOICES[option] else f"must be one of {', '.join(CHOICES[option])}"
    if option.endswith(("_ms", "_bytes")) or option == "max_poll_records":
        return _count_problem(option, value)
    for kind, said in ((bool, "true or false"), (str, "a string")):
        if isinstance(DEFAULTS[option], kind) and not isinstance(value, kind):
            return f"must be {said} (got {type(value).__name__})"
    return None


def _count_problem(option: str, value: object) -> str | None:
    """A duration or a size: a whole number, above zero unless zero has a meaning; null where aiokafka's default is."""
    if value is None and DEFAULTS[option] is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be a whole number (got {type(value).__name__})"
    least = 0 if option in ZERO_ALLOWED else 1
    return None if value >= least else f"must be {least} or more (got {value})"


def refused(configured: Mapping[str, Any], when: str, error: Exception) -> ConfigError:
    """aiokafka refused a consumer HEADWATER_KAFKA_CONSUMER_OPTIONS configures: the mapping is disabled,
    naming the variable and the options it sets (not their values, nor aiokafka's message, which may
    repeat one)."""
    options = ", ".join(sorted(configured))
    problem = f"aiokafka refused the consumer when it was {when} ({type(error).__name__}); check {options}"
    return ConfigError([f"{variable('kafka_consumer_options')}: {problem}"], "environment")


class Consumer(AIOKafkaConsumer):  # type: ignore[misc]  # aiokafka ships no types
    """aiokafka's consumer, whose start turns a refusal that HEADWATER_KAFKA_CONSUMER_OPTIONS can cause into
    the `ConfigError` that disables the mapping: the source would otherwise retry it, or crash, forever."""

    def __init__(self, configured: Mapping[str, Any], **options: Any) -> None:
        super().__init__(**options)
        self._configured = configured

    async def start(self) -> None:
        try:
            await super().start()
        except START_REFUSALS as error:
            if not self._configured:
                raise
            with contextlib.suppress(KafkaError, *START_REFUSALS):  # it half started: let go of what it holds
                await self.stop()
            raise refused(self._configured, "started", error) from error


async def step_over_undecodable(
    consumer: Any, take_in: Callable[[dict[TopicPartition, list[Any]]], None]
) -> str | None:
    """Find and step over the record aiokafka cannot decode (a header name that is not UTF-8);
    returns its reason for `Source.unreadable`, or None when no partition raised this time.

    aiokafka raises without naming the record, and would raise on it forever: each partition is read
    one record at a time (the good ones go to `take_in` as usual) up to the high watermark its last
    fetch reported, until one raises; the consumer's position is then that record's offset, and
    reading resumes just past it. The record is not delivered (its bytes never reach us). A partition
    is read until its watermark, not until one read comes back empty: the refetch of the partition
    that raised can wait behind the broker's long poll of the idle ones, longer than one read waits."""
    deadline = time.monotonic() + STEP_OVER_SECONDS
    for partition in consumer.assignment() - consumer.paused():
        while time.monotonic() < deadline:
            end = consumer.highwater(partition)
            if end is None or partition in consumer.paused() or await consumer.position(partition) >= end:
                break
            try:
                fetched = await consumer.getmany(partition, timeout_ms=FETCH_WAIT_MS, max_records=1)
            except UnicodeDecodeError as error:
                offset = await consumer.position(partition)
                name = shape.item_id(partition.topic, partition.partition, offset)
                log.error("Kafka record cannot be decoded; skipping it", record=name, error=str(error))
                consumer.seek(partition, offset + 1)
                return f"{name}: {error}"
            take_in(fetched)
    return None


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    """aiokafka insists on an instance of its listener class; this one hands over to the source."""

    def __init__(self, source: Rebalanced) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._source.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._source.partitions_assigned(assigned)
