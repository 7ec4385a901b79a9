"""One in-memory event source behind the real `Source` interface, for the fast tests of the poller and
of the stream failure rules: a queue held in a list (`MemorySource`) or a log (`MemoryLog`).

It is our own protocol's implementation, not a mock: reads take up to BatchSize records of one lane,
settles are kept in `settled` for the test to read, `read_count` counts the reads (a test waits for a
number of reads rather than sleeping), and `owned` withdraws the lane as a revoke would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

from broker.mapping import EventSourceMapping
from broker.sources.base import Batch, Record, Source, SourceContext

IDLE_READ_SECONDS = 0.01  # an empty read yields, as a real source's wait would


def context(function_timeout_seconds: int = 1, **fields: Any) -> SourceContext:
    """A context without AWS: the in-memory source reaches no service."""
    values: dict[str, Any] = {"aws_session": None, "region": "us-east-1", **fields}
    return SourceContext(function_timeout_seconds=function_timeout_seconds, **values)


def body_records(bodies: Iterable[dict[str, Any]], lane: str | None = None) -> list[Record]:
    """SQS-like records `id0`, `id1`... whose body is each JSON body, filterable on it."""
    return [
        Record(f"id{index}", lane, {"body": json.dumps(body)}, 10, time.time(), {"body": body})
        for index, body in enumerate(bodies)
    ]


class MemorySource(Source):
    """A queue in a list: reads take up to BatchSize records (one lane at a time), settles are kept."""

    def __init__(
        self, mapping: EventSourceMapping, records: Iterable[Record] = (), source_context: SourceContext | None = None
    ) -> None:
        super().__init__(mapping, source_context or context())
        self.pending = list(records)
        self.settled: list[tuple[list[str], frozenset[str]]] = []
        self.read_count = 0
        self.owned = True

    async def read_batch(self) -> Batch | None:
        self.read_count += 1
        batch = self.take()
        if batch is None:
            await asyncio.sleep(IDLE_READ_SECONDS)
        return batch

    def take(self) -> Batch | None:
        """The next batch, or None when there is nothing to read."""
        if not self.pending:
            return None
        taken, self.pending = self.pending[: self.mapping.batch_size], self.pending[self.mapping.batch_size :]
        return Batch(tuple(taken), taken[0].lane)

    def event(self, batch: Batch) -> dict[str, Any]:
        return {"Records": [record.event for record in batch.records]}

    def desired_concurrency(self, backlog_hint: int) -> int:
        return backlog_hint  # as SQS does, without a ceiling

    async def settle(self, batch: Batch, failed: frozenset[str]) -> None:
        self.settled.append(([record.item_id for record in batch.records], failed))

    def owns(self, batch: Batch) -> bool:
        return self.owned

    def failure_record_info(self, batch: Batch) -> dict[str, Any]:
        return {"MemoryBatchInfo": {"first": batch.span[0].item_id, "last": batch.span[-1].item_id,
                                    "batchSize": len(batch)}}  # fmt: skip


class MemoryLog(MemorySource):
    """The same source as a log: a failed batch is retried in place, and settled once its outcome is final."""

    retries_in_place = True
    retry_cap_with_on_failure = 10
