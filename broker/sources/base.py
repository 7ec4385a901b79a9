"""What every event source declares about its mappings: how it is recognised, its defaults, its rules.

A source module subclasses `SourceKind` and decorates it with `register`; nothing else in the code
names a specific source. The runtime side of a source (its poller) lives in the same module.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from broker.invocation import Result
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


# -- the runtime side ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Record:
    """One record a poller holds, already in Lambda's shape for its source.

    `item_id` is what a handler names in `batchItemFailures` (an SQS messageId, a Kinesis sequence
    number, a Kafka `{"partition": "topic-p", "offset": n}` rendered as `topic-p@n`). `lane` is the
    ordering lane (FIFO message group, Kafka topic-partition, shard); None means no order to keep.
    `filter_view` is what FilterCriteria patterns are matched against (Lambda decodes JSON bodies).
    `handle` is private to the source (receipt handle, offset...).
    """

    item_id: str
    lane: str | None
    event: dict[str, Any]
    size_bytes: int
    arrived_at: float
    filter_view: dict[str, Any]
    handle: Any = None


@dataclass(frozen=True, slots=True)
class Batch:
    """Records of one mapping sent to one invocation; all from one lane when the source has lanes.

    A `final` batch carries no records of its own: it is a closing invocation (a tumbling window's
    final invoke, `Records: []`). The poller invokes it as it is, never filters it, counts no record
    for it, and retries it in place like any batch of a log source. Its `concludes` holds the first
    and last records of what it closes (already invoked, never sent again): they say which lane and
    lease the batch belongs to, and which range its on-failure record names (with `batchSize` 0).
    """

    records: tuple[Record, ...]
    lane: str | None = None
    final: bool = False
    concludes: tuple[Record, ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def size_bytes(self) -> int:
        return sum(record.size_bytes for record in self.records)

    @property
    def span(self) -> tuple[Record, ...]:
        """The records that place the batch (its lane's lease, its range): its own, or for a final
        batch the ones it concludes. Read `span[0].handle`, never `records[0]`, to find where it belongs."""
        return self.records or self.concludes

    def with_records(self, records: tuple[Record, ...]) -> Batch:
        """A part of this batch (filtered, bisected, a retry's tail): same lane, same kind of invocation."""
        return Batch(records, self.lane, self.final, self.concludes)


@dataclass(frozen=True, slots=True)
class FailurePart:
    """A source's part of one on-failure message in the per-record form (see
    `Source.failure_record_parts`): the keys that follow the opening Headwater writes, and the
    message's key where the target has keys (a Kafka record's own key: bytes, not always UTF-8)."""

    fields: dict[str, Any]
    key: bytes | None = None


class Source(ABC):
    """A running event source for one mapping: read batches, shape events, settle outcomes.

    The acknowledgement contract (at-least-once):
    - `settle(batch, failed)` is called exactly once per batch, only when its outcome is final:
      the invocation succeeded, or its failures were handed to where they go next (for a queue,
      back to the queue; for a log, the on-failure destination after the retries). `failed` holds
      the `item_id`s that did not succeed; every other record of the batch is done.
    - A queue source (`retries_in_place = False`, SQS) deletes the done records and leaves the
      failed ones to reappear after their visibility timeout; the queue's redrive policy decides.
    - A log source (`retries_in_place = True`, Kafka, Kinesis, DynamoDB) is only settled once the
      poller has retried and routed failures; it then commits past the whole batch.
    - A source never acknowledges a record it was not told to settle; a crash between read and
      settle means the records come back (duplicates are possible, loss is not). Handlers must
      therefore be idempotent, as on Lambda.
    - `read_batch` never returns a lane that has a batch in flight (order per lane, retries
      included), and returns None when nothing arrived within its wait.
    - A queue source may be told to `release(batch)` instead of settling it, when the batch's
      invocation will never answer (its job vanished, or `hold_deadline` passed): every record goes
      back to the source at once, unacknowledged. A log source is never released: its poller
      retries the batch in place, in order.
    - A record the source cannot read (bytes its client library refuses) never stops the source:
      it is skipped, its reason appended to `unreadable`, and the poller counts and reports it.
    - A record read but whose event cannot be built (`event` raises) or encoded as JSON is unreadable
      too: the poller sets it aside and invokes the rest. A queue source is then told it failed (it
      comes back, and the queue's redrive policy decides); a log source's goes to the on-failure
      destination (condition `RecordUnreadable`), or is dropped without one, and is settled.
      `event` must therefore have no effect a failed call could leave half done.
    """

    retries_in_place: ClassVar[bool] = False
    # Lambda turns "retry forever" (-1) into this many retries when an on-failure destination is
    # set; only Kafka does so (10). None: -1 stays infinite, bounded by the record age.
    retry_cap_with_on_failure: ClassVar[int | None] = None
    # How Lambda's API describes this source's mappings: the StateTransitionReason of a state the
    # user asked for ("USER_INITIATED" for SQS, "User action" for streams), and whether
    # LastProcessingResult is part of the shape (streams and Kafka; SQS has none).
    user_action_reason: ClassVar[str] = "User action"
    reports_processing_result: ClassVar[bool] = True

    def __init__(self, mapping: EventSourceMapping, context: SourceContext) -> None:
        self.mapping = mapping
        self.context = context
        self.unreadable: list[str] = []  # reasons of records skipped unread; the poller drains it

    async def start(self) -> None:
        """Connect and check the source; raise ConfigError for what Lambda would refuse."""

    @abstractmethod
    async def read_batch(self) -> Batch | None: ...

    @abstractmethod
    def event(self, batch: Batch) -> dict[str, Any]:
        """The invocation event for a batch, exactly as Lambda builds it for this source."""

    @abstractmethod
    async def settle(self, batch: Batch, failed: frozenset[str]) -> None: ...

    def accept_answer(self, batch: Batch, result: Result, failed: frozenset[str]) -> bool:
        """A log source's look at each invocation's result before it counts (`broker.stream_retry`
        calls it; `failed` is what the result fails already). A source that keeps something from
        the response between invocations (a tumbling window's `state`) takes it here; False fails
        the whole batch, retried as any failure. By default every answer stands as it is."""
        return True

    def desired_concurrency(self, backlog_hint: int) -> int:
        """How many batches may be in flight at once now (lanes, scaling limits)."""
        return 1

    async def keep_alive(self, batches: list[Batch]) -> None:
        """Called often (every half second) for the batches in flight: extend SQS visibility, heartbeat."""

    def hold_deadline(self, batch: Batch) -> float | None:
        """When (monotonic seconds) the source can hold the batch no longer, so its invocation is
        given up and the batch released; None: as long as the invocation's job exists."""
        return None

    async def release(self, batch: Batch) -> None:
        """Hand the whole batch back now, acknowledging nothing (a queue source only)."""
        if self.retries_in_place:
            raise NotImplementedError(f"{type(self).__name__} retries batches in place; it never releases them")
        await self.settle(batch, frozenset(record.item_id for record in batch.records))

    def owns(self, batch: Batch) -> bool:
        """Whether this poller still holds the batch's lane; a lost lane (Kafka rebalance, lost
        Kinesis lease) means another poller re-reads the records, so retrying here is wasted."""
        return True

    def item_id_of(self, identifier: Any) -> str | None:
        """The `item_id` a `batchItemFailures` identifier names; None when it is malformed."""
        return identifier if isinstance(identifier, str) and identifier else None

    def failure_record_info(self, batch: Batch) -> dict[str, Any]:
        """The source's part of an on-failure record (`KafkaBatchInfo`, `KinesisBatchInfo`...)."""
        return {}

    def failure_record_parts(self, batch: Batch, target: str) -> list[FailurePart] | None:
        """The source's part of each message when Lambda writes one message per failed record to
        `target` (a Kafka mapping's `kafka://` topic), in the batch's order, each with its message
        key; None (every other source and target): one batch-level record, from `failure_record_info`."""
        return None

    async def stop(self) -> None:
        """Release the source; batches not settled are left to come back (never acknowledged)."""


class Lingering:
    """Clean-up a stopped source still owes, run after its mapping stopped (an SQS receive cut off by
    the stop must come back before what it brought can be handed back, up to a long poll's 20 s).

    A mapping turned off is `Disabled`, and may be turned on again, without waiting for it; the
    process waits for it (within what is left of its grace period) before it exits."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finish(self, within: float) -> None:
        """Wait for what is left, at most `within` seconds, then cancel the rest."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=max(within, 0.0))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


@dataclass(frozen=True)
class SourceContext:
    """What a running source may use, handed in by the poller supervisor."""

    aws_session: Any
    region: str
    function_timeout_seconds: int
    account_id: str = "000000000000"  # for the function ARN in on-failure records
    extras: dict[str, Any] = field(default_factory=dict)
    lingering: Lingering = field(default_factory=Lingering)


_RUNTIMES: dict[str, type[Source]] = {}


def runtime(kind: type[SourceKind]) -> Callable[[type[Source]], type[Source]]:
    """Register the poller-side class of a source kind (same module as the kind)."""

    def decorate(source: type[Source]) -> type[Source]:
        _RUNTIMES[kind.name] = source
        return source

    return decorate


def runtime_for(mapping: EventSourceMapping) -> type[Source] | None:
    return _RUNTIMES.get(mapping.source_kind)


def take_batch(buffer: deque[tuple[Record, float]], batch_size: int, limit_bytes: int) -> tuple[list[Record], int]:
    """Cut the next batch off the front of a lane's buffer of (record, arrival time): at most
    `batch_size` records and `limit_bytes` (Lambda's 6 MB), though never fewer than one record, so
    an oversized record still travels alone. Returns the records and their size in bytes."""
    taken: list[Record] = []
    size = 0
    while buffer and len(taken) < batch_size:
        record = buffer[0][0]
        if taken and size + record.size_bytes > limit_bytes:
            break
        buffer.popleft()
        taken.append(record)
        size += record.size_bytes
    return taken, size
