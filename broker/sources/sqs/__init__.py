"""Amazon SQS queues (standard and FIFO) as event sources.

One source, in a few small modules: `kind` (the mapping's rules), `source` (batching, message
groups and the acknowledgement contract), `holding` (what is held invisible, kept alive, and given
back when), `client` (the SQS calls, ten entries at a time, and
their failures as `SourceError`) and `shape` (the record Lambda hands a function).
"""

from broker.sources.sqs.kind import SqsKind

__all__ = ["SqsKind"]
