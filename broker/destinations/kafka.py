"""A Kafka topic (`kafka://TOPIC`) as a destination: async on-success/on-failure, or a mapping's on-failure.

Lambda writes to a topic on the mapping's own cluster. Headwater's topics live on the cluster named
by the delivery context (the poller passes its mapping's bootstrap servers) or, for workers, by
`HEADWATER_KAFKA_BOOTSTRAP_SERVERS`. The producer waits for every in-sync replica (acks=all) and
is idempotent, so a retried send never leaves a gap; a failed send raises `DestinationError` and
the caller keeps the record. Failures come as `KafkaError` (cluster unreachable, timeouts, a refused
record), `OSError` (the network under it) or `ValueError` (a malformed bootstrap server list, which
aiokafka reports only when the producer starts): each one is a `DestinationError`, so a mistyped
cluster address is counted and retried like an outage rather than crashing its worker.
"""

from __future__ import annotations

import os
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from broker.destinations import register
from broker.destinations.base import Destination, Message
from broker.errors import DestinationError

SCHEME = "kafka://"
BOOTSTRAP_ENVIRONMENT = "HEADWATER_KAFKA_BOOTSTRAP_SERVERS"
REQUEST_TIMEOUT_MS = 10_000  # below the worker's 30 s delivery timeout, so a failure is ours to report
FAILURES = (KafkaError, OSError, ValueError)


@register
class KafkaTopic(Destination):
    kind = "kafka"
    forms = f"a Kafka topic (kafka://TOPIC, on the cluster of {BOOTSTRAP_ENVIRONMENT})"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.topic = self.target.removeprefix(SCHEME)
        self._producer: Any = None

    @classmethod
    def matches(cls, target: str) -> bool:
        return target.startswith(SCHEME) and len(target) > len(SCHEME) and "/" not in target[len(SCHEME) :]

    async def send(self, message: Message) -> None:
        try:
            producer = await self._connect()
            await producer.send_and_wait(
                self.topic,
                value=message.body.encode(),
                key=message.key.encode() if message.key is not None else None,
                headers=[(name, value.encode()) for name, (_, value) in message.attributes.items()],
            )
        except FAILURES as error:
            raise DestinationError(f"Kafka topic {self.topic}: {error}") from error

    async def _connect(self) -> Any:
        if self._producer is None:
            servers = self.context.kafka_bootstrap_servers or os.environ.get(BOOTSTRAP_ENVIRONMENT)
            if not servers:
                raise DestinationError(f"{self.target}: no Kafka cluster ({BOOTSTRAP_ENVIRONMENT} is not set)")
            producer = AIOKafkaProducer(
                bootstrap_servers=servers,
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=REQUEST_TIMEOUT_MS,
            )
            try:
                await producer.start()
            except FAILURES:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
