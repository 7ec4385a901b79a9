"""The poller's own series, fast: every read of the source counted by outcome and timed
(`headwater_poller_polls_total`, `headwater_poller_poll_duration_seconds`), on an in-memory queue behind
the real `Source` interface and a scripted sender (tests/sources/test_poller.py's)."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from broker.errors import SourceError
from broker.sources.base import Batch
from tests.memory_source import MemorySource, body_records
from tests.sources.test_poller import ScriptedSender, mapping, ok, poller_for, run_until


class ThreeReads(MemorySource):
    """Its first read brings the records, its second none, and every later one fails."""

    async def read_batch(self) -> Batch | None:
        self.read_count += 1
        if self.read_count == 2:
            return None
        if self.read_count > 2:
            raise SourceError("the queue cannot be reached")
        return self.take()


async def test_every_read_is_counted_by_outcome_and_timed() -> None:
    queue = mapping(EventSourceArn=f"arn:aws:sqs:us-east-1:123456789012:polls-{uuid.uuid4().hex[:8]}")
    source = ThreeReads(queue, body_records([{"n": 1}, {"n": 2}]))
    labels = {"mapping": queue.uuid, "source_type": "sqs"}

    def polls(outcome: str) -> float | None:
        return REGISTRY.get_sample_value("headwater_poller_polls_total", {**labels, "outcome": outcome})

    await run_until(poller_for(source, ScriptedSender(lambda event: ok())), lambda: (polls("error") or 0) >= 1)

    assert (polls("records"), polls("empty")) == (1, 1)
    assert source.settled == [(["id0", "id1"], frozenset())]
    errors = polls("error") or 0  # one or more: the poller reads with a few loops at once
    assert errors == source.read_count - 2
    assert REGISTRY.get_sample_value("headwater_poller_poll_duration_seconds_count", labels) == 2 + errors
