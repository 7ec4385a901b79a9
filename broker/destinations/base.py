"""The one interface every destination kind implements, and the message it carries.

A kind is one module: it says which target strings it owns (`matches`), and sends a message
(`send`), raising `DestinationError` when the target cannot take it. Callers keep the event and
retry on that error; a kind never swallows a failure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from broker.mapping import EventSourceMapping
    from broker.queue import InvocationQueue


@dataclass(frozen=True, slots=True)
class Message:
    """A record or event to deliver: JSON `body`, optional typed attributes, and the key of a target
    that has keys (a Kafka record's key is bytes, not always UTF-8; None lets the target choose)."""

    body: str
    attributes: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (DataType, value)
    key: bytes | None = None


@dataclass(frozen=True)
class DeliveryContext:
    """What kinds may use: Headwater's Redis, an AWS session, and the invocation queue.

    `queue` is where a function destination enqueues its async event; the event is counted as
    received when a worker first claims it, so no kind counts it here. `mapping` is the event
    source mapping whose failed batches this context delivers (None for a function's async
    destinations): a kind may write where that mapping's source lives, as Lambda
    writes a Kafka mapping's failures to the mapping's own cluster.
    """

    redis: Redis
    aws_session: Any
    queue: InvocationQueue
    mapping: EventSourceMapping | None = None


class DestinationKind(ABC):
    """One kind of target (a Kafka topic, an SQS queue, ...); an instance writes to one target string."""

    name: ClassVar[str]  # the `target_type` label in metrics
    forms: ClassVar[str]  # the accepted target forms, for error messages

    def __init__(self, target: str, context: DeliveryContext) -> None:
        self.target = target
        self.context = context

    @classmethod
    @abstractmethod
    def matches(cls, target: str) -> bool: ...

    @abstractmethod
    async def send(self, message: Message) -> None: ...

    async def close(self) -> None:
        return None
