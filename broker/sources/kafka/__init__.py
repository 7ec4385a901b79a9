"""Apache Kafka topics (self-managed, or MSK by ARN) as event sources.

One source, in a few small modules: `kind` (the mapping's rules), `source` (reading, committing and
rebalancing, and its acknowledgement contract), `client` (building the aiokafka consumer, its rebalance
listener, stepping over undecodable records), `lanes` (per-partition batching), `offsets` (starting
positions and lag), `shape` (Lambda's event and failure-record shapes) and `access`
(SourceAccessConfigurations as TLS and SASL settings).
"""

from typing import Any

from broker.sources.kafka.kind import KafkaKind

__all__ = ["KafkaKind"]


def __getattr__(name: str) -> Any:
    """`KafkaSource` is imported on first use, so registering the kind loads no SDK (see broker.sources)."""
    if name == "KafkaSource":
        from broker.sources.kafka.source import KafkaSource

        return KafkaSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
