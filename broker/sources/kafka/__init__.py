"""Apache Kafka topics (self-managed, or MSK by ARN) as event sources.

One source, in a few small modules: `kind` (the mapping's rules), `source` (the running consumer
and its acknowledgement contract), `lanes` (per-partition batching), `shape` (Lambda's event and
failure-record shapes) and `access` (SourceAccessConfigurations as TLS and SASL settings).
"""

from broker.sources.kafka.kind import KafkaKind
from broker.sources.kafka.source import KafkaSource

__all__ = ["KafkaKind", "KafkaSource"]
