"""Poison input stops only itself: records a poller cannot read or invoke, set aside and reported.

Two kinds, reported the same way (counted as "unreadable", logged once with the mapping, and shown as
the mapping's LastProcessingResult, RecordUnreadable):

- Records the source skipped unread (bytes its client refuses, a record its shape failed on while
  reading): the source appends their reasons to `Source.unreadable` and has stepped over them
  already; the poller drains the list after each read (`report_skipped`).
- Records read whose event cannot be built (`source.event` raises) or encoded as JSON
  (`broker.sender.encode_event`): set aside before anything runs (`set_aside`), and the rest of
  their batch is invoked. Which records: those whose own event entry does not encode; when none alone
  fails (the source's shape failed for the batch), the whole batch. A queue source settles them as
  failed, so they come back and its redrive policy (maxReceiveCount, a DLQ) decides: the poller
  never deletes what it could not deliver. A log source cannot leave a record behind in order, so
  they go to its on-failure destination as records never invoked (condition RecordUnreadable;
  dropped and counted without a destination) and the lane moves on, as with any record given up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from broker.errors import InvalidRequestContent
from broker.logs import get_logger
from broker.mapping_state import ProcessingResult
from broker.sender import encode_event
from broker.sources.base import Batch, Record, Source

log = get_logger(__name__)

ReportResult = Callable[[ProcessingResult], Awaitable[None]]


class UnreadableRecords:
    """One mapping's unreadable records: counted on its `unreadable` stage, reported through `report`."""

    def __init__(self, mapping_uuid: str, counter: Counter, report: ReportResult) -> None:
        self.mapping_uuid = mapping_uuid
        self._counter = counter
        self._report = report

    async def report_skipped(self, source: Source) -> None:
        """Records the source skipped unread: counted, logged, and shown as the mapping's last result."""
        if not source.unreadable:
            return
        reasons, source.unreadable[:] = list(source.unreadable), []
        self._counter.inc(len(reasons))
        log.error("records could not be read and were skipped", mapping=self.mapping_uuid, reasons=reasons)
        await self._report(ProcessingResult.UNREADABLE_RECORD)

    async def set_aside(self, work: Batch, error: InvalidRequestContent) -> frozenset[str]:
        """The records of `work` that cannot be invoked (see the module docstring), counted, logged
        once each, and shown as the mapping's LastProcessingResult."""
        records = [record for record in work.records if not _encodes(record)] or list(work.records)
        self._counter.inc(len(records))
        for record in records:
            log.error(
                "record cannot be invoked; set aside as unreadable",
                mapping=self.mapping_uuid,
                record=record.item_id,
                error=error.message,
            )
        if not records:  # a final batch: nothing of its own to name
            log.error(
                "batch cannot be invoked; set aside", mapping=self.mapping_uuid, lane=work.lane, error=error.message
            )
        await self._report(ProcessingResult.UNREADABLE_RECORD)
        return frozenset(record.item_id for record in records)


def _encodes(record: Record) -> bool:
    """Whether the record's own event entry is JSON (the check that finds the one poisoning a batch)."""
    try:
        encode_event(record.event)
    except InvalidRequestContent:
        return False
    return True
