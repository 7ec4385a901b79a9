"""What an SQS mapping is: a queue ARN, BatchSize 10 and no window by default, FIFO's limits."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from broker.sources.base import SourceKind, register

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping

QUEUE_ARN = re.compile(r"^arn:aws[\w-]*:sqs:(?P<region>[\w-]+):(?P<account>\d{12}):(?P<name>[\w-]{1,80}(\.fifo)?)$")

BATCH_WINDOW_REQUIRED = (  # Lambda's InvalidParameterValueException message, word for word
    "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater than 10"
)


@register
class SqsKind(SourceKind):
    name = "sqs"
    label = "SQS"
    defaults: ClassVar = {"BatchSize": 10, "MaximumBatchingWindowInSeconds": 0}
    accepts = frozenset({"scaling_config"})

    @classmethod
    def matches(cls, event_source_arn: str | None, self_managed: bool) -> bool:
        arn = event_source_arn or ""
        return arn.startswith("arn:") and ":sqs:" in arn

    @classmethod
    def rules(cls, mapping: EventSourceMapping) -> list[str]:
        arn = mapping.event_source_arn or ""
        problems = []
        if not QUEUE_ARN.match(arn):
            problems.append(f"EventSourceArn {arn!r} is not an SQS queue ARN (arn:aws:sqs:REGION:ACCOUNT:NAME)")
        window = mapping.maximum_batching_window_in_seconds
        if arn.endswith(".fifo"):
            if mapping.batch_size > 10:
                problems.append("BatchSize must be at most 10 for a FIFO queue")
            if window > 0:
                problems.append("MaximumBatchingWindowInSeconds applies to standard queues only, not FIFO")
        elif mapping.batch_size > 10 and window < 1:
            problems.append(BATCH_WINDOW_REQUIRED)
        if window != int(window):
            problems.append("MaximumBatchingWindowInSeconds must be whole seconds for SQS")
        return problems
