"""Another Headwater function, named by its Lambda ARN: the record becomes its async event."""

from __future__ import annotations

from broker.destinations import function_name_of, register
from broker.destinations.base import Destination, Message
from broker.errors import DestinationError


@register
class Function(Destination):
    kind = "function"
    forms = "a function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)"

    @classmethod
    def matches(cls, target: str) -> bool:
        return function_name_of(target) is not None

    async def send(self, message: Message) -> None:
        name = function_name_of(self.target)
        assert name is not None
        try:
            await self.context.enqueue_event(name, message.body)
        except OSError as error:
            raise DestinationError(f"function {name}: {error}") from error
