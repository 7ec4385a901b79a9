"""The one interface every destination kind implements, and the message it carries.

A kind is one module: it says which target strings it owns (`matches`), and sends a message
(`send`), raising `DestinationError` when the target cannot take it. Callers keep the event and
retry on that error; a kind never swallows a failure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Message:
    """A record or event to deliver: JSON `body`, optional typed attributes and partition key."""

    body: str
    attributes: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (DataType, value)
    key: str | None = None


@dataclass(frozen=True)
class DeliveryContext:
    """What kinds may use: Headwater's Redis, an AWS session, and a way to queue an async event."""

    redis: Redis
    aws_session: Any
    enqueue_event: Callable[[str, str], Awaitable[None]]
    kafka_bootstrap_servers: str | None = None


class Destination(ABC):
    kind: ClassVar[str]  # the `target_type` label in metrics
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
