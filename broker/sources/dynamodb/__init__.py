"""DynamoDB Streams as event sources.

One source, in a few small modules: `kind` (the mapping's rules), `client` (the DynamoDB Streams
calls and their failures), `shape` (Lambda's DynamoDB event and `DDBStreamBatchInfo`) and `source`
(the running mapping, on the shared sharded-stream machinery of `broker.sources.shards`). Importing
the package registers the kind only; `broker.sources.runtime_for` imports `source`, and with it
botocore, when a mapping of this kind runs.
"""

from broker.sources.dynamodb.kind import DynamoDbKind

__all__ = ["DynamoDbKind"]
