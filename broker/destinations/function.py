"""Another Headwater function, named by its Lambda ARN: the record becomes its async event.

Writing to it is an enqueue on Headwater's own Redis, so it fails the ways the store fails:
unreachable, or refusing writes (`OOM`, `READONLY`, `LOADING`), seen as a `StoreError` or as
Headwater's own `StoreUnavailable`. Every one of them becomes `DestinationError`, so the caller keeps
the record and retries it instead of crashing on an error class it did not expect.
"""

from __future__ import annotations

import asyncio

from broker.connection import StoreError
from broker.destinations import function_name_of, register
from broker.destinations.base import DestinationKind, Message
from broker.errors import DestinationError, HeadwaterError
from broker.invocation import Invocation, InvocationType


@register
class FunctionTarget(DestinationKind):
    name = "function"
    forms = "a function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)"

    @classmethod
    def matches(cls, target: str) -> bool:
        return function_name_of(target) is not None

    async def send(self, message: Message) -> None:
        name = function_name_of(self.target)
        assert name is not None
        try:
            invocation = Invocation(name, message.body, InvocationType.EVENT, trigger="async")
            await asyncio.to_thread(self.context.queue.enqueue, invocation)
        except (StoreError, HeadwaterError, OSError) as error:
            detail = error.message if isinstance(error, HeadwaterError) else str(error)
            raise DestinationError(f"function {name}: {detail}") from error
