"""A Kafka topic (`kafka://TOPIC`) as a destination: async on-success/on-failure, or a mapping's on-failure.

Lambda writes to a topic on the mapping's own cluster. Headwater's topics live on the cluster of the
mapping whose failures are delivered (the delivery context's `mapping`, when it names bootstrap
servers) or else on `HEADWATER_KAFKA_BOOTSTRAP_SERVERS` (workers, MSK mappings). The producer waits
for every in-sync replica (acks=all) and is idempotent, so a retried send never leaves a gap; a
failed send raises `DestinationError` and the caller keeps the record. Failures come as `KafkaError`
(cluster unreachable, timeouts, a refused record), `OSError` (the network under it) or `ValueError`
(a malformed bootstrap server list, which aiokafka reports only when the producer starts): each one
is a `DestinationError`, so a mistyped cluster address is counted and retried like an outage rather
than crashing its worker.

A message's key (bytes) becomes the Kafka record's key. Lambda's Kafka on-failure form (one message per
failed record, `broker.sources.kafka.shape.record_failures`) keys each message with the failed record's
own key, which keeps one key's failed records in one partition, in order; a message without a key lets
the producer pick.
"""

from __future__ import annotations

from typing import Any

from broker.destinations import register
from broker.destinations.base import DestinationKind, Message
from broker.errors import DestinationError
from broker.settings import get_settings, variable

SCHEME = "kafka://"
REQUEST_TIMEOUT_MS = 10_000  # below the worker's 30 s delivery timeout, so a failure is ours to report


@register
class KafkaTopic(DestinationKind):
    name = "kafka"
    forms = f"a Kafka topic (kafka://TOPIC, on the cluster of {variable('kafka_bootstrap_servers')})"

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
                key=message.key,
                headers=[(name, value.encode()) for name, (_, value) in message.attributes.items()],
            )
        except _failures() as error:
            raise DestinationError(f"Kafka topic {self.topic}: {error}") from error

    async def _connect(self) -> Any:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer  # on first use: resolving `kafka://` targets loads no SDK

            servers = self._mapping_cluster()
            servers = servers or get_settings().kafka_bootstrap_servers
            if not servers:
                unset = variable("kafka_bootstrap_servers")
                raise DestinationError(f"{self.target}: no Kafka cluster ({unset} is not set)")
            producer = AIOKafkaProducer(
                bootstrap_servers=servers,
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=REQUEST_TIMEOUT_MS,
            )
            try:
                await producer.start()
            except _failures():
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    def _mapping_cluster(self) -> str | None:
        """The bootstrap servers of the self-managed Kafka mapping whose failures these are, if any."""
        mapping = self.context.mapping
        source = mapping.self_managed_event_source if mapping is not None else None
        if source is None:
            return None
        return ",".join(source.endpoints.get("KAFKA_BOOTSTRAP_SERVERS", [])) or None

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def _failures() -> tuple[type[Exception], ...]:
    """What a send can fail with (see the module's docstring); aiokafka's part is imported on use."""
    from aiokafka.errors import KafkaError

    return (KafkaError, OSError, ValueError)
