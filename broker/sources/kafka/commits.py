"""Offset commits of one Kafka mapping: every partition's in one request, off its batches' path.

aiokafka sends one commit at a time (a lock in its group coordinator), so partitions committing
each on its own queue behind each other: with three partitions a batch's commit took ~17 ms, half
of the batch's whole round trip, and the partition waited for it before its next batch. Here a
settled batch's offset is noted, its partition goes on with its next batch at once, and one task
commits every noted offset in one request; what is noted meanwhile goes in the next request.

The contract on `Source` holds as before: an offset is noted only once its batch's outcome is
final; a partition's noted offset only grows (a later batch replaces an earlier one, and both are
final); the caller of `settle` still returns only once the request covering its batch was made
(committed, or its failure logged); and a revoke `flush`es the revoked partitions before it lets
them go. A poller that dies between the note and the request leaves the offset where it was: the
records come again, as after any crash (at-least-once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Note:
    """What to commit for one partition."""

    offset: int  # the next offset to read: the last settled batch's last offset + 1
    since: int  # the first offset this note covers, to count the records committed
    epoch: int  # the assignment the batches were read under: never committed under another


CommitNotes = Callable[[dict[str, Note]], Awaitable[None]]


class Committer:
    """Collects notes and commits them in rounds, one request per round (`run` is the task)."""

    def __init__(self, commit: CommitNotes) -> None:
        self._commit = commit
        self._notes: dict[str, Note] = {}
        self._next: asyncio.Future[None] | None = None  # done once the round taking `_notes` ends
        self._round: tuple[frozenset[str], asyncio.Future[None]] | None = None  # the request being made
        self._wanted = asyncio.Event()
        self._stopped = False

    def note(self, name: str, offset: int, since: int, epoch: int) -> asyncio.Future[None]:
        """Commit `name` up to `offset`; the future is done once the request covering it was made."""
        if self._stopped:  # nothing commits any more: the records come again (at-least-once)
            return _done()
        earlier = self._notes.get(name)
        if earlier is not None and earlier.epoch == epoch:
            since = earlier.since
        self._notes[name] = Note(offset, since, epoch)
        self._wanted.set()
        return self._next_round()

    async def flush(self, names: Collection[str]) -> None:
        """Return once every note of `names` made so far was committed (or its failure logged)."""
        wanted = frozenset(names)
        while not self._stopped:
            if wanted & self._notes.keys():
                waiter = self._next_round()
                self._wanted.set()
            elif self._round is not None and wanted & self._round[0]:
                waiter = self._round[1]
            else:
                return
            await asyncio.shield(waiter)

    async def run(self) -> None:
        """Commit whatever is noted, one request at a time, until cancelled."""
        try:
            while True:
                await self._wanted.wait()
                self._wanted.clear()
                notes, self._notes = self._notes, {}
                done, self._next = self._next_round(), None
                self._round = (frozenset(notes), done)
                try:
                    if notes:
                        await self._commit(notes)
                finally:
                    self._round = None
                    _finish(done)
        finally:
            self._stopped = True  # nobody waits forever on a round that will not come
            _finish(self._next)

    def _next_round(self) -> asyncio.Future[None]:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        return self._next


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _finish(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
