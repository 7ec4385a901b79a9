"""Amazon Kinesis data streams as event sources.

One source, in a few small modules: `kind` (the mapping's rules), `client` (the Kinesis calls and
their failures), `shape` (Lambda's Kinesis event and `KinesisBatchInfo`) and `source` (the
running mapping, on the shared sharded-stream machinery of `broker.sources.shards`).
"""

from broker.sources.kinesis.kind import KinesisKind

__all__ = ["KinesisKind"]
