"""Sends messages to targets, keeping one open destination (and its client) per target string."""

from __future__ import annotations

from broker.destinations import kind_for
from broker.destinations.base import DeliveryContext, DestinationKind, Message


class Dispatcher:
    def __init__(self, context: DeliveryContext) -> None:
        self.context = context
        self._open: dict[str, DestinationKind] = {}

    async def send(self, target: str, message: Message) -> None:
        """Deliver or raise `DestinationError`; the caller decides how to retry."""
        destination = self._open.get(target)
        if destination is None:
            destination = kind_for(target)(target, self.context)
            self._open[target] = destination
        await destination.send(message)

    @staticmethod
    def kind_of(target: str) -> str:
        return kind_for(target).name

    async def close(self) -> None:
        for destination in self._open.values():
            await destination.close()
        self._open.clear()
